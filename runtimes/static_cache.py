"""The KV cache of a program that keeps it in its own fixed buffers (a pte decoder's static cache).

The manifest says `kv_cache.kind = "static"`: the program holds `max_seq_len` positions per
layer and writes each call's keys and values at the positions fed as `kv_cache.position`; its
mask hides every position after the current one. So only positions cross the boundary, and
this class keeps the same interface as `runtimes/kvcache.py`'s `KVCache` for the decode loop:
`feeds`, `advance`, `make_room`, `rollback`. Rolling back only moves the position back: the
rejected entries are overwritten by the next call and never read before that.

A stream that outgrows the window keeps going as the ONNX cache does, keeping the first `sinks`
entries (StreamingLLM's attention sinks, arXiv 2309.17453) and the most recent ones. A slot is an
absolute position baked into the program's rotary embedding and its buffers cannot be edited from
Python, so the slide RECOMPUTES: the cache remembers the decoder-input rows it was fed (one row of
`hidden` floats per position, a fraction of the position's keys and values) and hands the kept rows
back from `make_room`; the decode loop feeds them again at positions 0.. (one prefill), so the
program then holds exactly what a fresh program fed those rows holds, at compact positions (the
paper's rule: positions within the cache). Each slide keeps `KEPT_SHARE` of the recent rows that
would fit, so it costs one prefill of the kept rows per `(1 - KEPT_SHARE)` of a window of tokens,
not one per token past the window.

    window 12, sinks 2, incoming 1:  [s s a b c d e f g h i j] + k
    slide (KEPT_SHARE 0.5):          [s s f g h i j] fed again at 0..6, then k at 7

M-RoPE (Qwen2-VL) feeds its rotary positions as `position_ids` [3, 1, seq] beside the slots, so the cache
also remembers the 3-D positions each row was fed with. A slide feeds them again: the sinks' as they were,
and the recent rows' all moved down by one amount, so the earliest of them sits right after the sinks. RoPE
attention depends only on the distance between positions, so among the recent rows (an image's rows included)
every distance is the one they had, as the ONNX cache keeps them (it moves every position by one amount when
it re-bases); only the gap to the sinks closes, as above. Later rows move by the same amount. A text-only
stream so gets exactly the compact positions 0.. of a cache without M-RoPE.

Example:
    >>> cache = StaticKVCache(manifest.components["text_decoder"].kv_cache, 256, 4)  # doctest: +SKIP
    >>> cache.make_room(5); cache.feeds(5)                                          # doctest: +SKIP
    {'input_pos': array([0, 1, 2, 3, 4])}
"""

from __future__ import annotations

import numpy as np

from edgemfm.manifest import KVCache as KVLayout
from edgemfm.runtimes.backend import Session
from edgemfm.runtimes.positions import decoder_positions


class StaticKVCache:
    """Positions only: `length` entries written, the next `position`, the window `max_len`, the rows fed."""

    # Share of the recent rows that fit beside the incoming ones that a slide keeps: 1.0 is ONNX's rule (room for
    # exactly the incoming rows), which here would re-feed a whole window at every token past it.
    KEPT_SHARE = 0.5

    def __init__(self, layout: KVLayout, max_len: int = 0, sinks: int = 0, dtype: str = "float32"):
        # The program's buffers bound the window, whatever the streaming settings ask for (load checks them).
        self.name, self.max_len = layout.position, min(max_len or layout.max_seq_len, layout.max_seq_len)
        self.sinks, self.dtype = sinks, dtype
        self.length = self.position = 0
        self.evicted = self.slides = 0  # entries dropped, and recomputes run, by the sliding window so far
        self.rows: np.ndarray | None = None  # [max_len, hidden]: the decoder inputs at positions 0..length-1
        self.fixed: dict[str, np.ndarray] = {}
        # M-RoPE (generation.positions "mrope"): the rotary positions differ from the cache slots
        # after an image, so the program takes them as `position_ids` beside the slots.
        self.mrope: tuple[np.ndarray, int] | None = None
        self.rotary = np.zeros((3, self.max_len), np.int64)  # M-RoPE: the 3-D positions fed at each slot
        self.stream = 0  # M-RoPE: rows of the stream fed so far, rows fed again not counted
        self.moved = 0  # M-RoPE: how far every slide so far moved the stream's later positions down
        self.replay = 0  # M-RoPE: the slots 0..replay-1 are (being) fed the kept rows again, at `rotary`

    def feeds(self, seq: int) -> dict[str, np.ndarray]:
        # `fixed`: an encoder-decoder's cross-attention K/V, the same every call
        slots = {self.name: np.arange(self.position, self.position + seq, dtype=np.int64), **self.fixed}
        if self.mrope is None:
            return slots
        return {**slots, "position_ids": self._rotary(seq)[:, None]}

    def run(self, session: Session, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The program's outputs for `feeds` (this call's inputs and `feeds(seq)`)."""
        return session.run(feeds)

    def _rotary(self, seq: int) -> np.ndarray:
        """M-RoPE's [3, seq] positions of the next `seq` slots: the kept rows' while they are fed again, else the
        stream's (`decoder_positions`) moved down by the slides so far."""
        if self.position < self.replay:
            assert self.position + seq <= self.replay, "the kept rows are fed again in calls of their own"
            return self.rotary[:, self.position : self.position + seq]
        return decoder_positions(self.stream, seq, self.mrope)[:, 0] - self.moved

    def advance(self, presents: dict[str, np.ndarray], seq: int, rows: np.ndarray | None = None) -> None:
        """The program consumed `rows` [1, seq, hidden] at the next `seq` positions: remember them for a slide."""
        assert rows is not None and rows.shape[1] == seq, "a static cache re-feeds what it was fed"
        if self.rows is None:
            self.rows = np.empty((self.max_len, rows.shape[-1]), rows.dtype)
        self.rows[self.length : self.length + seq] = rows[0]
        if self.mrope is not None and self.position >= self.replay:
            self.rotary[:, self.length : self.length + seq] = self._rotary(seq)
            self.stream += seq
        self.length += seq
        self.position += seq

    def make_room(self, incoming: int) -> np.ndarray | None:
        """None while `incoming` more positions fit; else slide: the kept rows [1, n, hidden] (the sinks, then
        the most recent), which the caller feeds again from position 0 before the incoming ones."""
        if self.length + incoming <= self.max_len:
            return None
        assert self.rows is not None and incoming <= self.max_len - self.sinks, "prefill_chunk is checked at load"
        recent = int((self.max_len - self.sinks - incoming) * self.KEPT_SHARE)
        head = min(self.sinks, self.length)
        kept = np.concatenate([self.rows[:head], self.rows[self.length - recent : self.length]])[None]
        if self.mrope is not None:
            self._keep_rotary(head, recent)
        self.evicted += self.length - head - recent
        self.slides += 1
        self.length = self.position = 0
        return kept

    def _keep_rotary(self, head: int, recent: int) -> None:
        """The kept rows' 3-D positions into slots 0..: the sinks' unchanged, the recent rows' moved down by one
        amount so the earliest sits right after the sinks (distances among them, an image's included, kept)."""
        tail = self.rotary[:, self.length - recent : self.length]
        after_sinks = int(self.rotary[:, :head].max()) + 1 if head else 0
        step = int(tail.min()) - after_sinks if recent else 0
        self.rotary[:, head : head + recent] = tail - step
        self.moved += step
        self.replay = head + recent

    def rollback(self, n: int) -> None:
        """Forget the last `n` rows (proposals the target rejected: rows of the stream, never kept rows)."""
        self.length -= n
        self.position -= n
        if self.mrope is not None:
            self.stream -= n
