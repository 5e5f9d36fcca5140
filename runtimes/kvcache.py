"""The decoder's KV cache between calls: kept in the backend's own tensors, bounded by a sliding window.

The exported decoder takes the cache as `past.{layer}.{key,value}` [1, kv_heads, length, head_dim]
and returns it grown as `present.*`; those arrays go straight back in at the next step. They are
sliced only when a stream outgrows `max_len` (the window slides, keeping the first `sinks`
entries, the attention sinks of StreamingLLM, arXiv 2309.17453) or when speculative decoding
rolls back rejected tokens.

Keys are cached after the rotary embedding, so kept entries keep their original positions; new
tokens take the next absolute position, and the attention mask covers exactly the kept entries.
Where the rotation is inside GroupQueryAttention (`rotary_table` > 0), the kernel reads a cos/sin
table of that many positions, so the cache feeds `position - base`; when a call would pass the
table, `base` moves to the next position and every cached key is rotated back by the same angle,
once: RoPE attention depends only on the distance between positions, which stays exact for every
kept entry, so a stream still goes on forever (the unfused graph's results, tested past the table).
An int8 cache (`export --kv-cache int8`) is sliced the same way, exactly; its keys' scales are shared by
each rotated pair of channels, so a re-base turns the stored integers and rounds them as the kernel does.

Example:
    >>> cache = KVCache(manifest_kv, max_len=2048, sinks=4)  # doctest: +SKIP
    >>> cache.make_room(256); feeds = cache.feeds(256)                              # doctest: +SKIP
"""

from __future__ import annotations

import mmap
from collections.abc import Callable

import numpy as np

from edgemfm.manifest import KVCache as KVLayout
from edgemfm.runtimes.backend import Session
from edgemfm.runtimes.positions import decoder_positions


class KVCache:
    """One sequence's cache: `length` kept entries, the next absolute `position`, the window bound."""

    def __init__(self, layout: KVLayout, max_len: int, sinks: int, dtype: str = "float32"):
        names = [(i, k) for i in range(layout.layers) for k in ("key", "value")]
        self.past_names = [layout.past.format(layer=i, kind=k) for i, k in names]
        self.present_names = [layout.present.format(layer=i, kind=k) for i, k in names]
        empty = np.zeros((1, layout.kv_heads, 0, layout.head_dim), np.dtype(layout.dtype or dtype))
        self.values: dict[str, np.ndarray] = {name: empty for name in self.past_names}
        self.max_len, self.sinks = max_len, sinks
        self.length = 0  # entries held
        self.position = 0  # absolute position of the next token
        self.evicted = 0  # entries dropped by the sliding window so far
        self.fixed: dict[
            str, np.ndarray
        ] = {}  # inputs every call takes unchanged (an encoder-decoder's cross-attention K/V)
        # M-RoPE (generation.positions "mrope"): the prompt's 3-D positions, and the shift of every later position
        self.mrope: tuple[np.ndarray, int] | None = None
        self.table, self.base = layout.rotary_table, 0  # fed positions are position - base, below table
        self.frequencies = np.asarray(layout.rotary_frequencies, np.float64)
        self.key_names = [self.past_names[i] for i, (_, kind) in enumerate(names) if kind == "key"]

    def feeds(self, seq: int) -> dict[str, np.ndarray]:
        """The decoder's cache, mask and position inputs for `seq` new tokens."""
        return {
            "attention_mask": np.ones((1, self.length + seq), np.int64),
            "position_ids": self.position_ids(seq),
            **self.values,
            **self.fixed,
        }

    def position_ids(self, seq: int) -> np.ndarray:
        """[1, seq] positions of the next `seq` tokens, or [3, 1, seq] with M-RoPE: the prompt's own
        3-D positions, then every axis at the absolute position plus the shift."""
        return decoder_positions(self.position - self.base, seq, self.mrope)

    def advance(self, presents: dict[str, np.ndarray], seq: int, rows: np.ndarray | None = None) -> None:
        """Take the decoder's grown cache after it consumed `seq` tokens (`rows`, their inputs: the cache holds
        what they made, so a slide needs no recompute)."""
        self.values = {past: presents[present] for past, present in zip(self.past_names, self.present_names)}
        self.length += seq
        self.position += seq

    def run(self, session: Session, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The decoder's outputs for `feeds` (this call's inputs and `feeds(seq)`)."""
        return session.run(feeds)

    def make_room(self, incoming: int) -> None:
        """Slide the window so `incoming` more entries fit in `max_len`, keeping the sink entries; re-base
        the positions where the rotary table would end within the `incoming` ones. Nothing to feed again
        (None), unlike a static cache's slide."""
        if self.table and self.position - self.base + incoming > self.table:
            self.rebase()
        if self.length + incoming <= self.max_len:
            return None
        recent = self.max_len - self.sinks - incoming
        assert recent >= 0, "the prefill chunk is checked against max_len - sinks at load"
        head, tail = self.sinks, self.length - recent
        self._keep(head, tail)
        self.evicted += tail - head
        self.length = head + recent
        return None

    def rebase(self) -> None:
        """The next token at fed position 0: every cached key rotated back by the positions skipped."""
        for name in self.key_names:
            self.values[name] = rotate(self.values[name], self.base - self.position, self.frequencies)
        self.base = self.position

    def rollback(self, n: int) -> None:
        """Forget the last `n` entries (tokens a speculative step proposed and the target rejected)."""
        if n:
            self._keep(self.length - n, self.length)
            self.length -= n
            self.position -= n

    def _keep(self, head: int, tail: int) -> None:
        """Keep entries [0, head) and [tail, length)."""
        self.values = {
            name: np.ascontiguousarray(np.concatenate([a[:, :, :head], a[:, :, tail:]], axis=2))
            for name, a in self.values.items()
        }


def in_place(layout: KVLayout | None, provider: str) -> bool:
    """Whether a decoder of this cache layout, run by `provider`, appends to one buffer in place (`SharedKVCache`):
    the export marked it shared, and ONNX Runtime's CPU kernel sees past and present at one address.

    Example:
        >>> in_place(manifest.components["text_decoder"].kv_cache, "CPUExecutionProvider")  # doctest: +SKIP
        True
    """
    return layout is not None and layout.shared and provider == "CPUExecutionProvider"


class SharedKVCache(KVCache):
    """The dynamic cache of a decoder whose past tensors only GroupQueryAttention reads (`kv_cache.shared`), on
    ONNX Runtime's CPU: each tensor is one [1, kv_heads, max_len, head_dim] buffer, bound once as both the past
    input and the present output, which the kernel appends each call's entries to in place. Nothing of the cache
    is allocated or copied per call; a slide moves the kept entries down inside the buffers, a rollback only
    shortens `length`, a re-base turns the held keys where they lie.

    Example:
        >>> cache = SharedKVCache(manifest_kv, max_len=2048, sinks=4)         # doctest: +SKIP
        >>> out = cache.run(session, {"inputs_embeds": x, **cache.feeds(1)})   # doctest: +SKIP
    """

    def __init__(self, layout: KVLayout, max_len: int, sinks: int, dtype: str = "float32"):
        super().__init__(layout, max_len, sinks, dtype)
        shape, kind = (1, layout.kv_heads, max_len, layout.head_dim), np.dtype(layout.dtype or dtype)
        self.values = {name: _untouched(shape, kind) for name in self.past_names}
        self.bound: tuple[Session, Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]] | None = None

    def feeds(self, seq: int) -> dict[str, np.ndarray]:
        """The mask and positions for `seq` new tokens (the buffers are bound, not fed)."""
        return {name: value for name, value in super().feeds(seq).items() if name not in self.values}

    def run(self, session: Session, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.bound is None or self.bound[0] is not session:
            pairs = zip(self.past_names, self.present_names)
            self.bound = session, session.in_place({past: (present, self.values[past]) for past, present in pairs})
        return self.bound[1](feeds)

    def advance(self, presents: dict[str, np.ndarray], seq: int, rows: np.ndarray | None = None) -> None:
        """The kernel wrote the call's `seq` entries into the buffers."""
        self.length += seq
        self.position += seq

    def rebase(self) -> None:
        for name in self.key_names:
            held = self.values[name][:, :, : self.length]
            held[...] = rotate(held, self.base - self.position, self.frequencies)
        self.base = self.position

    def _keep(self, head: int, tail: int) -> None:
        for buffer in self.values.values():
            buffer[:, :, head : head + self.length - tail] = buffer[:, :, tail : self.length]  # numpy copies overlaps


def _untouched(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Zeros in memory the OS maps only as it is written: a max-length buffer costs the entries held. (np.zeros
    may reuse freed heap memory, which calloc then clears page by page: measured, SmolLM2's 2,048-position cache
    resident whole, +78 MiB, from the second generation on.)"""
    return np.frombuffer(mmap.mmap(-1, int(np.prod(shape)) * dtype.itemsize), dtype).reshape(shape)


def rotate(keys: np.ndarray, positions: int, frequencies: np.ndarray) -> np.ndarray:
    """Keys [..., d] (rotate-half RoPE layout: pairs (i, i + d/2)) moved by `positions` positions: what
    the rotation at position p + positions gives where `keys` hold the one at p. Computed in float64,
    so a stream's re-bases add no more than one rounding each. Integer keys (an int8 cache, one scale per
    rotated pair) are rounded as GroupQueryAttention quantizes: half to even, saturated.

    Example:
        >>> rotate(np.array([[1.0, 0.0]]), 3, np.array([np.pi / 6])).round(6).tolist()
        [[0.0, 1.0]]
        >>> rotate(np.array([[100, 0]], np.int8), 1, np.array([np.pi / 4])).tolist()
        [[71, 71]]
    """
    angle = positions * np.asarray(frequencies, np.float64)
    cos, sin = np.cos(angle), np.sin(angle)
    first, second = np.split(keys.astype(np.float64), 2, axis=-1)
    turned = np.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
    if np.issubdtype(keys.dtype, np.integer):
        info = np.iinfo(keys.dtype)
        return np.clip(np.rint(turned), info.min, info.max).astype(keys.dtype)
    return turned.astype(keys.dtype)
