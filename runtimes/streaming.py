"""Media streams into decoder inputs: each image, video frame or audio window is encoded when it arrives.

`generate` takes lists or iterators (a camera, a microphone through `audio_windows.windows`).
The prompt template is split once into a prefix, one unit of ids per media item (its
placeholder token and any text around it) and a suffix, so items can be spliced in while
their number is still unknown. The split is checked against the tokenizer: the template with
one and two items of every kind must tokenize to exactly prefix + units + suffix. A template
that does not split that way (a BPE merge across the placeholder) falls back to collecting the
items first and tokenizing the whole prompt, as for a list.

    prompt plan:  BOS USER: | <image> \\n | <image> \\n | ... | Describe it. ASSISTANT:
                  prefix      unit(item 1)  unit(item 2)       suffix
    each unit's placeholder  ──► pre-process ──► encoder ──► rows ──► chunked prefill

Example:
    >>> layout = split_template(lambda c: [1, *[9, 5] * c.get("image", 0), 7, 2], ["image"], {"image": 9})
    >>> layout.prefix, layout.units, layout.suffix
    ((1,), {'image': (9, 5)}, (7, 2))
    >>> pieces = decoder_inputs(planned(layout, {"image": camera()}), embed_ids, encode)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Entry = int | tuple[str, Any]  # a token id, or (media kind, one item) whose encoder rows go there


@dataclass(frozen=True)
class PromptLayout:
    prefix: tuple[int, ...]
    units: dict[str, tuple[int, ...]]  # media kind -> the ids one item adds, its placeholder among them
    suffix: tuple[int, ...]
    placeholders: dict[str, int]  # media kind -> placeholder token id

    def ids(self, counts: dict[str, int]) -> list[int]:
        return [
            *self.prefix,
            *(t for kind, n in counts.items() for _ in range(n) for t in self.units[kind]),
            *self.suffix,
        ]


def split_template(
    tokenize: Callable[[dict[str, int]], list[int]], kinds: Sequence[str], placeholder_ids: dict[str, int]
) -> PromptLayout | None:
    """The prefix / per-item units / suffix of a prompt's ids, or None when the tokenizer merges across them.

    `tokenize(counts)` gives the ids of the whole templated prompt with `counts` items per kind.
    """
    bare = tokenize({})
    units: dict[str, tuple[int, ...]] = {}
    prefix_len = None
    for kind in kinds:
        one = tokenize({kind: 1})
        size = len(one) - len(bare)
        starts = [
            p
            for p in range(len(bare) + 1)
            if one[:p] + one[p + size :] == bare and placeholder_ids[kind] in one[p : p + size]
        ]
        if not starts or (prefix_len is not None and starts[0] != prefix_len):
            return None
        prefix_len = starts[0]
        units[kind] = tuple(one[prefix_len : prefix_len + size])
    prefix_len = prefix_len or 0
    layout = PromptLayout(tuple(bare[:prefix_len]), units, tuple(bare[prefix_len:]), dict(placeholder_ids))
    two = {kind: 2 for kind in kinds}
    return layout if tokenize(two) == layout.ids(two) else None


def planned(layout: PromptLayout, media: dict[str, Iterable[Any]]) -> Iterator[Entry]:
    """The prompt's entries in order, pulling each media item from its iterator only when reached."""
    yield from layout.prefix
    for kind, items in media.items():
        for item in items:
            for t in layout.units[kind]:
                yield (kind, item) if t == layout.placeholders[kind] else t
    yield from layout.suffix


def from_ids(ids: Sequence[int], placeholder_ids: dict[str, int], media: dict[str, Iterable[Any]]) -> Iterator[Entry]:
    """The entries of a fully tokenized prompt: each placeholder takes the next item of its kind."""
    kinds = {token: kind for kind, token in placeholder_ids.items()}
    items = {kind: iter(media.get(kind, ())) for kind in placeholder_ids}
    for t in ids:
        yield (kinds[t], next(items[kinds[t]])) if t in kinds else t


def decoder_inputs(
    entries: Iterable[Entry], embed_ids: Callable[[Sequence[int]], np.ndarray], encode: Callable[[str, Any], np.ndarray]
) -> Iterator[np.ndarray]:
    """Decoder-input pieces [1, n, hidden] in prompt order: runs of token embeddings and encoder rows.

    Each item is pre-processed and encoded only when the plan reaches it, and nothing here keeps
    a reference to it afterwards: one encoder activation is live at a time.
    """
    run: list[int] = []
    for entry in entries:
        if isinstance(entry, int):
            run.append(entry)
            continue
        if run:
            yield embed_ids(run)
            run = []
        yield encode(*entry)
    if run:
        yield embed_ids(run)
