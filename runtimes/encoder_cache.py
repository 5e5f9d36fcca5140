"""The encoder-output cache: an image or audio clip seen again reuses its encoder rows.

On a small device an image's encoding costs more than the answer (seconds per image on a phone
CPU), and a user asks several questions about the same picture. So each encoder call's output
rows are kept under a key that hashes the encoder's name and its pre-processed feeds (the same
picture read again, or the same tile of it, hashes the same; a resized or re-cropped one does
not). Entries are evicted least recently used first once their rows pass `capacity` bytes, a
share of the memory budget that `budget.estimate` counts, so a cache that cannot fit says so at
load. Rows are stored read-only: the decoder only slices and concatenates them.

Example:
    >>> import numpy as np
    >>> cache = EncoderCache(capacity=1024)
    >>> key = cache.key("vision_encoder", {"pixel_values": np.zeros((1, 3, 4, 4), np.float32)})
    >>> cache.get(key) is None
    True
    >>> rows = cache.put(key, np.ones((1, 2, 8), np.float32))
    >>> cache.get(key).shape, cache.stats()
    ((1, 2, 8), CacheStats(hits=1, misses=1, bytes=64, entries=1, evictions=0, capacity=1024))
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CacheStats:
    hits: int  # encoder calls answered from the cache
    misses: int  # encoder calls run (and their rows stored when they fit)
    bytes: int  # bytes of rows held now
    entries: int  # encoder calls held now
    evictions: int  # entries dropped, least recently used first, to stay within capacity
    capacity: int  # the bound on `bytes`, taken from the memory budget (0: the cache is off)


class EncoderCache:
    """Encoder rows by content hash, least recently used evicted beyond `capacity` bytes."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.entries: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self.bytes = self.hits = self.misses = self.evictions = 0

    @staticmethod
    def key(encoder: str, feeds: dict[str, np.ndarray]) -> bytes:
        """A digest of the encoder's name and every feed's name, dtype, shape and bytes.

        BLAKE2b (hashlib's fastest strong hash) digests a 224x224 image's float feed in well under
        a millisecond, far below the encoder call it saves.
        """
        h = hashlib.blake2b(encoder.encode(), digest_size=20)
        for name in sorted(feeds):
            a = np.ascontiguousarray(feeds[name])
            h.update(f"|{name}|{a.dtype.str}|{a.shape}|".encode())
            h.update(a.data)
        return h.digest()

    def get(self, key: bytes) -> np.ndarray | None:
        """The rows stored under `key` (now the most recently used), or None; counts a hit or a miss."""
        rows = self.entries.get(key)
        if rows is None:
            self.misses += 1
            return None
        self.entries.move_to_end(key)
        self.hits += 1
        return rows

    def put(self, key: bytes, rows: np.ndarray) -> np.ndarray:
        """Store `rows` (read-only from now on) and evict the least recently used beyond capacity.

        Rows larger than the whole capacity are returned without being stored.
        """
        rows.flags.writeable = False
        if rows.nbytes > self.capacity or key in self.entries:
            return rows
        self.entries[key] = rows
        self.bytes += rows.nbytes
        while self.bytes > self.capacity:
            _, old = self.entries.popitem(last=False)
            self.bytes -= old.nbytes
            self.evictions += 1
        return rows

    def clear(self) -> None:
        """Drop every entry (the counters stay)."""
        self.entries.clear()
        self.bytes = 0

    def stats(self) -> CacheStats:
        return CacheStats(self.hits, self.misses, self.bytes, len(self.entries), self.evictions, self.capacity)
