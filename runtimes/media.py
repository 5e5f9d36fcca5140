"""Turn each media item into encoder calls and the text that stands for it in the prompt.

The manifest says how: a plain image is one call behind one placeholder; with `image_splitting`
an image is several tiles, each a call behind its own placeholder, inside the tile markers; with
`image_patches` it is one call on dynamic-resolution patches whose grid also sets the decoder's
3-D positions. No family is named here: everything comes from the manifest.

Example:
    >>> item = prepare("image", "cat.png", manifest)          # doctest: +SKIP
    >>> len(item.calls), item.text.count("<image>")          # doctest: +SKIP
    (10, 10)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgemfm.errors import InputError
from edgemfm.manifest import Manifest
from edgemfm.runtimes.patches import patchify
from edgemfm.runtimes.positions import patch_positions
from edgemfm.runtimes.preprocess import PREPROCESSORS
from edgemfm.runtimes.tiling import split_image, tiles_text


@dataclass(frozen=True)
class Call:
    """One encoder call of a prepared item: its feeds, and the (t, h, w) grid of the rows it returns
    (None when the decoder needs no 3-D positions for them)."""

    feeds: dict[str, np.ndarray]
    grid: tuple[int, int, int] | None = None


@dataclass
class Prepared:
    """One media item ready for its encoder."""

    text: str  # what stands for the item in the prompt: one placeholder per call
    calls: list[Call] = field(default_factory=list)  # in the order of the placeholders


def prepare(kind: str, item, manifest: Manifest) -> Prepared:
    """Pre-process one item of `kind` as the manifest describes."""
    spec, pre = manifest.prompt.media[kind], manifest.preprocess
    if kind == "image" and pre.image_splitting is not None:
        tiles, rows, cols = split_image(item, pre.image, pre.image_splitting)
        return Prepared(
            tiles_text(rows, cols, spec.placeholder, pre.image_splitting), [Call({spec.input: t[None]}) for t in tiles]
        )
    if kind == "image" and pre.image_patches is not None:
        p = pre.image_patches
        patches, (t, gh, gw) = patchify(item, pre.image, p)
        feeds = {spec.input: patches}
        if spec.patch_positions:
            feeds[spec.patch_positions] = patch_positions(gh, gw, p.merge)
        return Prepared(
            f"{p.vision_start}{spec.placeholder}{p.vision_end}", [Call(feeds, (t, gh // p.merge, gw // p.merge))]
        )
    return Prepared(spec.placeholder, [Call(item_feeds(kind, item, manifest))])


def item_feeds(kind: str, item, manifest: Manifest) -> dict[str, np.ndarray]:
    """The encoder feeds of one single-call item: its pre-processed array (and its unpadded length
    where the manifest names an input for it)."""
    spec = manifest.prompt.media[kind]
    x, length = PREPROCESSORS[kind](item, manifest.preprocess)
    return {spec.input: x[None], **({spec.length: np.asarray([length], np.int64)} if spec.length else {})}


def needs_preparing(manifest: Manifest) -> bool:
    """Whether an image's prompt text depends on the image (tiles, a patch grid): then every item is
    pre-processed before the prompt is tokenized, and its calls are encoded one by one."""
    return manifest.preprocess.image_splitting is not None or manifest.preprocess.image_patches is not None


def grid_segments(entries: Sequence[int | tuple[str, Any]]) -> list[int | tuple[int, int, int]]:
    """Text-run lengths and image grids of a planned prompt, for 3-D positions."""
    segments: list[int | tuple[int, int, int]] = []
    for entry in entries:
        if not isinstance(entry, int):
            call = entry[1]
            if not isinstance(call, Call) or call.grid is None:
                raise InputError(
                    f"this bundle's 3-D positions need a grid for every {entry[0]} item; this one has none"
                )
            segments.append(call.grid)
        elif segments and isinstance(segments[-1], int):
            segments[-1] += 1
        else:
            segments.append(1)
    return segments
