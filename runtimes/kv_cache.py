"""The decoder's KV cache as the generation loop sees it: what to feed, and what to keep.

The manifest's `KVCache.kind` picks the class, so the loop in runtimes/pipeline.py is the same
for every bundle format:

- "dynamic" (onnx): the cache enters as `past.*` tensors and leaves as `present.*` tensors one
  call longer; the loop keeps them and feeds the attention mask and positions of the whole run.
- "static" (pte): the program owns fixed buffers of `max_seq_len` positions and writes each
  call's keys and values at the positions fed; the loop feeds only those positions.

Example:
    >>> cache = KV_CACHES[kv.kind](kv)              # doctest: +SKIP
    >>> out = decoder.run({"inputs_embeds": x, **cache.feeds(x.shape[1])})  # doctest: +SKIP
    >>> cache.advance(out, x.shape[1])              # doctest: +SKIP
"""

from __future__ import annotations

import sys

import numpy as np

from edgemfm.errors import InputError
from edgemfm.manifest import KVCache


class DynamicKV:
    """Past tensors fed in, present tensors kept for the next call."""

    free = sys.maxsize  # grows with the run; bounded by the memory budget, not by the graph

    def __init__(self, kv: KVCache):
        self.kv, self.total = kv, 0
        self.past = {
            kv.past.format(layer=i, kind=k): np.zeros((1, kv.kv_heads, 0, kv.head_dim), np.float32)
            for i in range(kv.layers)
            for k in ("key", "value")
        }

    def check(self, seq: int) -> None:
        """Nothing to check: the cache grows with the run."""

    def feeds(self, seq: int) -> dict[str, np.ndarray]:
        return {
            "attention_mask": np.ones((1, self.total + seq), np.int64),
            "position_ids": np.arange(self.total, self.total + seq, dtype=np.int64)[None],
            **self.past,
        }

    def advance(self, out: dict[str, np.ndarray], seq: int) -> None:
        self.total += seq
        for i in range(self.kv.layers):
            for k in ("key", "value"):
                self.past[self.kv.past.format(layer=i, kind=k)] = out[self.kv.present.format(layer=i, kind=k)]


class StaticKV:
    """Positions fed in; the program keeps the keys and values in its own buffers."""

    def __init__(self, kv: KVCache):
        self.kv, self.total = kv, 0

    @property
    def free(self) -> int:
        return self.kv.max_seq_len - self.total

    def check(self, seq: int) -> None:
        """Refuse `seq` more positions than the buffers have left, naming both numbers."""
        if seq > self.free:
            raise InputError(
                f"the input needs {self.total + seq} positions (text and media rows); this bundle's KV cache "
                f"holds {self.kv.max_seq_len} (export with a larger --max-seq-len, up to the profile's)"
            )

    def feeds(self, seq: int) -> dict[str, np.ndarray]:
        self.check(seq)
        return {self.kv.position: np.arange(self.total, self.total + seq, dtype=np.int64)}

    def advance(self, out: dict[str, np.ndarray], seq: int) -> None:
        self.total += seq


KV_CACHES = {"dynamic": DynamicKV, "static": StaticKV}  # KVCache.kind -> what the loop drives
