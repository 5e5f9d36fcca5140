"""The KV cache of a program that keeps it in its own fixed buffers (a pte decoder's static cache).

The manifest says `kv_cache.kind = "static"`: the program holds `max_seq_len` positions per
layer and writes each call's keys and values at the positions fed as `kv_cache.position`; its
mask hides every position after the current one. So only positions cross the boundary, and
this class keeps the same interface as `runtimes/kvcache.py`'s `KVCache` for the decode loop:
`feeds`, `advance`, `make_room`, `rollback`. Rolling back only moves the position back: the
rejected entries are overwritten by the next call and never read before that. The window
cannot slide (a slot is an absolute position, baked into the rotary embedding), so input that
outgrows the buffers is refused in one line naming both numbers.

Example:
    >>> cache = StaticKVCache(manifest.components["text_decoder"].kv_cache)  # doctest: +SKIP
    >>> cache.make_room(5); cache.feeds(5)                                     # doctest: +SKIP
    {'input_pos': array([0, 1, 2, 3, 4])}
"""

from __future__ import annotations

import numpy as np

from edgemfm.errors import InputError
from edgemfm.manifest import KVCache as KVLayout
from edgemfm.runtimes.positions import decoder_positions


class StaticKVCache:
    """Positions only: `length` entries written, the next `position`, the program's `max_len`."""

    def __init__(self, layout: KVLayout, max_len: int = 0, sinks: int = 0, dtype: str = "float32"):
        # The program's buffers bound the cache, whatever the streaming settings ask for.
        self.name, self.max_len = layout.position, layout.max_seq_len
        self.length = self.position = self.evicted = 0
        self.fixed: dict[str, np.ndarray] = {}
        # M-RoPE (generation.positions "mrope"): the rotary positions differ from the cache slots
        # after an image, so the program takes them as `position_ids` beside the slots.
        self.mrope: tuple[np.ndarray, int] | None = None

    def feeds(self, seq: int) -> dict[str, np.ndarray]:
        # `fixed`: an encoder-decoder's cross-attention K/V, the same every call
        slots = {self.name: np.arange(self.position, self.position + seq, dtype=np.int64), **self.fixed}
        if self.mrope is None:
            return slots
        return {**slots, "position_ids": decoder_positions(self.position, seq, self.mrope)}

    def advance(self, presents: dict[str, np.ndarray], seq: int) -> None:
        self.length += seq
        self.position += seq

    def make_room(self, incoming: int) -> None:
        if self.length + incoming > self.max_len:
            raise InputError(
                f"the prompt, its media rows and the answer need {self.length + incoming} positions; this bundle's "
                f"static KV cache holds {self.max_len} (export with a larger --max-seq-len, up to the profile's)"
            )

    def rollback(self, n: int) -> None:
        self.length -= n
        self.position -= n
