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

from dataclasses import dataclass, field

import numpy as np

from edgemfm.manifest import Manifest
from edgemfm.runtimes.patches import patchify
from edgemfm.runtimes.positions import patch_positions
from edgemfm.runtimes.preprocess import PREPROCESSORS
from edgemfm.runtimes.tiling import split_image, tiles_text


@dataclass
class Prepared:
    """One media item ready for its encoder."""

    text: str  # what stands for the item in the prompt: one placeholder per call
    calls: list[dict[str, np.ndarray]]  # encoder feeds, in the order of the placeholders
    grids: list[tuple[int, int, int] | None] = field(default_factory=list)  # per call: (t, h, w) of its rows, for 3-D positions


def prepare(kind: str, item, manifest: Manifest) -> Prepared:
    """Pre-process one item of `kind` as the manifest describes."""
    spec, pre = manifest.prompt.media[kind], manifest.preprocess
    if kind == "image" and pre.image_splitting is not None:
        tiles, rows, cols = split_image(item, pre.image, pre.image_splitting)
        calls = [{spec.input: tile[None]} for tile in tiles]
        return Prepared(tiles_text(rows, cols, spec.placeholder, pre.image_splitting), calls, [None] * len(calls))
    if kind == "image" and pre.image_patches is not None:
        p = pre.image_patches
        patches, (t, gh, gw) = patchify(item, pre.image, p)
        feeds = {spec.input: patches}
        if spec.patch_positions:
            feeds[spec.patch_positions] = patch_positions(gh, gw, p.merge)
        return Prepared(f"{p.vision_start}{spec.placeholder}{p.vision_end}", [feeds], [(t, gh // p.merge, gw // p.merge)])
    return Prepared(spec.placeholder, [{spec.input: PREPROCESSORS[kind](item, pre)[None]}], [None])
