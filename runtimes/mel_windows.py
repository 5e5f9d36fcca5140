"""A recording of any length read as Whisper's log-mel, one window at a time, from disk.

Long-form transcription takes windows of the whole recording's log-mel spectrogram starting at
any frame (wherever the last timestamp token said). They are computed here exactly as slices of
the spectrogram `WhisperFeatureExtractor` computes for the whole recording (centred frames,
reflected at the recording's two ends, the 8-decade floor under the loudest frame of the whole
recording), while only one window of samples is ever in memory: the samples are read from the
WAV file as each window needs them, resampled block by block, and the floor comes from a first
pass over the file.

    WAV on disk ─► AudioSource.read(a, b) ─► mono samples at the model's rate ─► frames [seek, seek + n)
      ─► log10 mel ─► floor (whole recording's max - 8) ─► (x + 4) / 4, padded with 0 to the window

Example:
    >>> mel = MelWindows(WavSource("talk.wav", 16000), spec)   # doctest: +SKIP
    >>> mel.frames, mel.window(0, 3000).shape                 # doctest: +SKIP
    (60000, (80, 3000))
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol

import numpy as np

from edgemfm.errors import InputError
from edgemfm.manifest import AudioPreprocess
from edgemfm.runtimes.audio import _RESAMPLE_TAPS, _product, decode_samples, mel_filters, resample, wav_layout

_PASS_FRAMES = 3000  # frames per block of the floor's first pass: one 30 s window of samples at a time


class AudioSource(Protocol):
    """Mono samples at the model's rate, read by range."""

    length: int  # samples

    def read(self, start: int, stop: int) -> np.ndarray: ...


class ArraySource:
    """Samples already in memory (a microphone's buffer, an array the caller gives)."""

    def __init__(self, samples: np.ndarray):
        self.samples = np.asarray(samples, np.float32)
        self.length = len(self.samples)

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.samples[max(start, 0) : max(min(stop, self.length), 0)]


class WavSource:
    """A WAV file read range by range, mixed to mono and resampled to `rate` block by block.

    A range at another rate is resampled from its input blocks plus a margin of whole blocks on each
    side, so every output sample sees the same inputs as when the whole file is resampled at once.
    """

    def __init__(self, path: str | Path, rate: int):
        self.path, self.layout = Path(path), wav_layout(path)
        g = math.gcd(self.layout.rate, rate)
        self.up, self.down, self.rate = rate // g, self.layout.rate // g, rate
        half = math.ceil(_RESAMPLE_TAPS / min(1.0, self.up / self.down))  # as `resample` reads each side
        self.margin = -(-half // self.down) + 1  # blocks of `down` inputs covering `half` inputs
        self.length = -(-self.layout.frames * self.up // self.down)

    def _frames(self, start: int, stop: int) -> np.ndarray:
        """Input frames [start, stop) at the file's rate, mono."""
        lay = self.layout
        start, stop = max(start, 0), min(stop, lay.frames)
        if stop <= start:
            return np.zeros(0, np.float32)
        with self.path.open("rb") as f:
            f.seek(lay.offset + start * lay.width * lay.channels)
            raw = f.read((stop - start) * lay.width * lay.channels)
        return decode_samples(raw, lay).mean(axis=1)

    def read(self, start: int, stop: int) -> np.ndarray:
        start, stop = max(start, 0), min(stop, self.length)
        if self.up == self.down:
            return self._frames(start, stop).astype(np.float32)
        first = max(0, start // self.up - self.margin)
        last = -(-stop // self.up) + self.margin
        x = resample(self._frames(first * self.down, last * self.down), self.layout.rate, self.rate)
        return x[start - first * self.up : stop - first * self.up]


def source_of(item: str | Path | np.ndarray, spec: AudioPreprocess) -> AudioSource:
    """A WAV path or a 1-D float array at the model's rate as an AudioSource.

    Example:
        >>> source_of(np.zeros(16000, np.float32), spec).length   # doctest: +SKIP
        16000
    """
    if isinstance(item, np.ndarray):
        if item.ndim != 1 or not np.issubdtype(item.dtype, np.floating) or item.size == 0:
            raise InputError(
                f"audio array must be 1-D float samples at {spec.sampling_rate} Hz; got {item.dtype} {item.shape}"
            )
        return ArraySource(item)
    return WavSource(item, spec.sampling_rate)


class MelWindows:
    """Windows of a recording's log-mel spectrogram, as slices of the whole recording's.

    `top`: the loudest frame's log10 mel power, when known (a live stream passes the loudest so far);
    by default a first pass over the recording finds it.
    """

    def __init__(self, source: AudioSource, spec: AudioPreprocess, top: float | None = None):
        self.source, self.spec = source, spec
        self.frames = source.length // spec.hop_length  # the extractor drops the last centred frame
        self.window_frames = spec.n_samples // spec.hop_length
        if self.frames == 0:
            raise InputError(f"audio of {source.length} samples is shorter than one hop ({spec.hop_length} samples)")
        if top is None:
            blocks = range(0, self.frames, _PASS_FRAMES)
            top = max(float(self._log10(a, min(a + _PASS_FRAMES, self.frames)).max()) for a in blocks)
        self.top = top

    def _samples(self, lo: int, hi: int) -> np.ndarray:
        """Samples [lo, hi), reflected at the recording's two ends as the centred STFT pads them."""
        n = self.source.length
        x = self.source.read(lo, hi).astype(np.float64)
        if lo < 0:
            x = np.concatenate([self.source.read(1, 1 - lo)[::-1], x])
        if hi > n:
            x = np.concatenate([x, self.source.read(2 * n - 1 - hi, n - 1)[::-1]])
        return x

    def _log10(self, a: int, b: int) -> np.ndarray:
        """log10 mel power [n_mels, b - a] of frames [a, b)."""
        spec, half = self.spec, self.spec.n_fft // 2
        x = self._samples(a * spec.hop_length - half, (b - 1) * spec.hop_length + half)
        frames = np.lib.stride_tricks.sliding_window_view(x, spec.n_fft)[:: spec.hop_length]
        window = np.hanning(spec.n_fft + 1)[:-1]  # periodic Hann, as torch.hann_window
        power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
        return np.log10(np.maximum(_product(mel_filters(spec).T, power.T), 1e-10))  # no BLAS threads: see _product

    def loudest(self, a: int, b: int) -> float:
        """The loudest of frames [a, b): their greatest log10 mel power (the floor's reference).

        Example:
            >>> mel.loudest(0, mel.frames) == mel.top   # doctest: +SKIP
            True
        """
        return float(self._log10(a, b).max())

    def window(self, seek: int, n: int) -> np.ndarray:
        """Features [n_mels, window frames] of frames [seek, seek + n), padded with zeros as transformers pads
        the last window.

        Example:
            >>> mel.window(2900, 100)[:, 100:].max()   # doctest: +SKIP
            0.0
        """
        n = min(n, self.frames - seek, self.window_frames)
        out = np.zeros((self.spec.n_mels, self.window_frames), np.float32)
        log = np.maximum(self._log10(seek, seek + n), self.top - 8.0)
        out[:, :n] = (log + 4.0) / 4.0
        return out
