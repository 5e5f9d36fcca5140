"""Audio of any length cut into the encoder's fixed windows as it arrives, for streaming.

A microphone or a long file gives chunks of samples of any size; the audio encoder takes
windows of a fixed length (`streaming.audio_window_s` x the sample rate). `windows` yields each
window as soon as its samples have arrived and keeps at most one window of samples buffered,
so an hour of audio needs the memory of one window. Each window is one audio item of the
prompt: `generate(prompt, audio=windows(chunks, size))` encodes it and prefills its rows
before the next window is read (`streaming.py`).

Example:
    >>> import numpy as np
    >>> [w.shape for w in windows(iter([np.zeros(5), np.zeros(7)]), size=4)]
    [(4,), (4,), (4,)]
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from edgemfm.errors import InputError


def windows(chunks: Iterable[np.ndarray], size: int, pad_last: bool = True) -> Iterator[np.ndarray]:
    """Consecutive windows of `size` samples; a short last window is zero-padded (or dropped).

    Each window is a fresh array, so releasing it releases its samples.
    """
    if size <= 0:
        raise InputError(f"audio window of {size} samples is not allowed; allowed: a positive number of samples")
    buffer = np.zeros(0, np.float32)
    for chunk in chunks:
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.ndim != 1:
            raise InputError(f"audio chunks must be 1-D arrays of samples, got shape {chunk.shape}")
        buffer = np.concatenate([buffer, chunk])
        while buffer.size >= size:
            yield buffer[:size].copy()
            buffer = buffer[size:]
    if buffer.size and pad_last:
        yield np.concatenate([buffer, np.zeros(size - buffer.size, np.float32)])
