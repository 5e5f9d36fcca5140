"""Audio pre-processing in numpy: WAV reading, mono mixdown, resampling and Whisper's log-mel.

    WAV file ─► samples [-1, 1] ─► mono ─► resample to the model's rate ─► pad/trim to the window
      ─► STFT (Hann, centred, reflect) ─► power ─► mel filters (Slaney) ─► log10 ─► 8-decade floor
      ─► (x + 4) / 4  = features [n_mels, frames], as WhisperFeatureExtractor computes them

Example:
    >>> spec = AudioPreprocess(sampling_rate=16000, n_fft=400, hop_length=160, n_mels=80, n_samples=480000)
    >>> features, frames = preprocess_audio("speech.wav", spec)    # doctest: +SKIP
    >>> features.shape, frames                                      # doctest: +SKIP
    ((80, 3000), 212)
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgemfm.errors import InputError
from edgemfm.manifest import AudioPreprocess

# WAVE format tags: integer PCM, IEEE float, and the extensible header that wraps either.
_PCM, _FLOAT, _EXTENSIBLE = 0x0001, 0x0003, 0xFFFE
_ALLOWED = "WAV (RIFF/WAVE) with PCM 8, 16, 24 or 32-bit integer or 32/64-bit float samples"
_WIDTHS = {_PCM: (1, 2, 3, 4), _FLOAT: (4, 8)}  # bytes per sample this reader decodes
_PCM_DTYPES = {2: np.int16, 4: np.int32}  # 8-bit (unsigned) and 24-bit are unpacked by hand below
_FLOAT_DTYPES = {4: np.float32, 8: np.float64}
_RESAMPLE_TAPS = 32  # zero crossings of the windowed sinc on each side: >90 dB stop band
_KAISER_BETA = 8.6
_MAX_FILTER = 1 << 22  # entries of the resampling matrix (32 MiB): rates with a simple ratio stay far below


_RATES = (1000, 768000)  # Hz a WAV may declare: telephony's 8 kHz down to 1 kHz, studio's 768 kHz
_MAX_CHANNELS = 64  # beyond any microphone array or surround layout; a header claiming more is broken


@dataclass(frozen=True)
class WavLayout:
    """Where a WAV file's samples are and how they are stored: enough to read any range of frames."""

    tag: int  # _PCM or _FLOAT
    channels: int
    rate: int  # Hz
    width: int  # bytes per sample
    offset: int  # of the data chunk's first byte in the file
    frames: int  # whole frames in the data chunk


def wav_layout(path: str | Path, max_seconds: float | None = None) -> WavLayout:
    """The layout of a WAV file, read from its chunk headers only (the samples stay on disk).

    A clip whose header claims more than `max_seconds`, then data shorter than its header claims,
    are reported here, before any sample is read.

    Example:
        >>> wav_layout("speech.wav").frames   # doctest: +SKIP
        38912
    """
    path = Path(path)
    where = repr(str(path))
    if path.is_dir():
        raise InputError(f"audio path {where} is a directory; allowed: a WAV file")
    if not path.is_file():
        raise InputError(f"audio file {where} does not exist")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            raise InputError(f"{where} is not a WAV file; allowed: {_ALLOWED}")
        fmt, data, pos = None, None, 12
        while pos + 8 <= size and (fmt is None or data is None):
            f.seek(pos)
            tag, length = f.read(4), struct.unpack("<I", f.read(4))[0]
            if tag == b"fmt " and fmt is None:
                fmt = f.read(min(length, 40))
            elif tag == b"data" and data is None:
                data = (pos + 8, length, size - pos - 8)  # offset, claimed, present
            pos += 8 + length + (length & 1)  # chunks are padded to an even length
    if fmt is None or data is None:
        raise InputError(f"{where} is a WAV file without a fmt or data chunk; allowed: {_ALLOWED}")
    return _layout(fmt, data, where, max_seconds)


def _layout(fmt: bytes, data: tuple[int, int, int], where: str, max_seconds: float | None) -> WavLayout:
    if len(fmt) < 16:
        raise InputError(f"{where} has a truncated fmt chunk; allowed: {_ALLOWED}")
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == _EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack("<H", fmt[24:26])[0]  # the sub-format GUID starts with the plain tag
    width = bits // 8
    if width not in _WIDTHS.get(tag, ()) or bits % 8 or channels == 0 or rate == 0:
        kind = {_PCM: "PCM", _FLOAT: "float"}.get(tag, f"format tag {tag:#06x}")
        raise InputError(
            f"{where} holds {bits}-bit {kind} samples ({channels} channels, {rate} Hz); allowed: {_ALLOWED}"
        )
    if not _RATES[0] <= rate <= _RATES[1]:
        raise InputError(f"{where} declares {rate} Hz; allowed: {_RATES[0]} to {_RATES[1]} Hz")
    if channels > _MAX_CHANNELS:
        raise InputError(f"{where} declares {channels} channels; allowed: 1 to {_MAX_CHANNELS}")
    offset, claimed, present = data
    claimed -= claimed % (width * channels)
    seconds = claimed / (width * channels * rate)
    if max_seconds is not None and seconds > max_seconds:  # never cut a clip silently: the encoder sees one window
        raise InputError(f"audio {where} lasts {seconds:.1f} s; this model takes clips of at most {max_seconds:g} s")
    if present < claimed:
        raise InputError(
            f"{where} holds {present} bytes of samples where its header claims {claimed} (truncated?); "
            "allowed: a complete WAV file"
        )
    frames = claimed // (width * channels)
    if not frames:
        raise InputError(f"{where} holds no audio samples; allowed: a non-empty {_ALLOWED}")
    return WavLayout(tag, channels, rate, width, offset, frames)


def decode_samples(raw: bytes, layout: WavLayout, where: str = "the WAV file") -> np.ndarray:
    """Whole frames of raw WAV data -> float32 samples in [-1, 1], shaped [frames, channels]; NaN/inf refused."""
    tag, width = layout.tag, layout.width
    if tag == _FLOAT:
        samples = np.frombuffer(raw, dtype=_FLOAT_DTYPES[width]).astype(np.float32)
    elif width == 1:  # 8-bit PCM is unsigned, centred on 128
        samples = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        samples = ((b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8).astype(np.float32) / 2.0**23
    else:
        samples = np.frombuffer(raw, dtype=_PCM_DTYPES[width]).astype(np.float32) / 2.0 ** (8 * width - 1)
    if not np.isfinite(samples).all():
        raise InputError(f"{where} holds NaN or infinite samples; allowed: finite samples")
    return samples.reshape(-1, layout.channels)


def read_wav(path: str | Path, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Samples as float32 in [-1, 1], shaped [frames, channels], and the sample rate.

    Reads the RIFF chunks itself: the stdlib `wave` module reads only integer PCM before Python
    3.12 (a float WAV raises "unknown format: 3"), and float WAVs are common from audio tools.
    The headers are read first: a clip whose header claims more than `max_seconds` is refused
    before its samples are read, and data shorter than the header claims is reported.

    Example:
        >>> samples, rate = read_wav("speech.wav")   # doctest: +SKIP
        >>> samples.shape, rate                      # doctest: +SKIP
        ((38912, 1), 22050)
    """
    layout, where = wav_layout(path, max_seconds), repr(str(path))
    with Path(path).open("rb") as f:
        f.seek(layout.offset)
        raw = f.read(layout.frames * layout.width * layout.channels)
    return decode_samples(raw, layout, where), layout.rate


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """1-D `samples` at `from_rate` resampled to `to_rate` with a Kaiser-windowed sinc filter.

    Polyphase band-limited interpolation, as scipy's resample_poly or soxr do; written here
    because the runtime install carries only numpy. The cut-off is the lower Nyquist frequency.
    The rates' ratio reduces to up / down: every `up` outputs, from `down` more inputs, repeat
    the same `up` filter rows, so one [up, span] matrix resamples every block in one product.

    Example:
        >>> resample(np.zeros(22050, np.float32), 22050, 16000).shape
        (16000,)
    """
    if from_rate == to_rate:
        return samples.astype(np.float32)
    g = math.gcd(from_rate, to_rate)
    up, down = to_rate // g, from_rate // g
    cutoff = min(1.0, up / down)  # of the input Nyquist frequency
    half = math.ceil(_RESAMPLE_TAPS / cutoff)  # input samples on each side of an output sample
    span = down + 2 * half  # inputs one block of `up` outputs reads
    if up * span > _MAX_FILTER:
        raise InputError(
            f"cannot resample {from_rate} Hz to {to_rate} Hz: their ratio {up}/{down} needs a {up}x{span} filter; "
            "allowed: rates with a simple ratio to the model's (8, 11.025, 16, 22.05, 24, 32, 44.1, 48, 96 kHz ...)"
        )
    r = np.arange(up)
    first = r * down // up + 1  # output r of a block reads inputs first .. first + 2 half - 1 of its span
    t = ((r * down % up) / up)[:, None] - np.arange(-half + 1, half + 1)[None, :]  # distance to each input
    window = np.i0(_KAISER_BETA * np.sqrt(np.clip(1.0 - (t / half) ** 2, 0.0, None))) / np.i0(_KAISER_BETA)
    block = np.zeros((up, span))
    block[r[:, None], first[:, None] + np.arange(2 * half)[None, :]] = cutoff * np.sinc(cutoff * t) * window
    n_out = math.ceil(len(samples) * up / down)
    blocks = -(-n_out // up)
    x = np.pad(samples.astype(np.float64), (half, blocks * down + span - len(samples) - half))
    spans = np.lib.stride_tricks.sliding_window_view(x, span)[: blocks * down : down]
    return _product(spans, block.T).reshape(-1)[:n_out].astype(np.float32)


def _product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b on the calling thread. numpy's `@` hands a product this size to OpenBLAS, which splits it over
    every core and leaves its workers spinning after it returns: on a 2 s clip that cost ~8x the product
    itself in CPU time and slowed the single-threaded decoder that runs next. einsum (no `optimize`) never
    calls BLAS.

    Example:
        >>> _product(np.eye(2), np.arange(4.0).reshape(2, 2)).tolist()
        [[0.0, 1.0], [2.0, 3.0]]
    """
    return np.einsum("ij,jk->ik", a, b)


def _hertz_to_mel(freq: np.ndarray) -> np.ndarray:
    """The Slaney mel scale: linear below 1 kHz, logarithmic above (librosa, transformers)."""
    mels = 3.0 * freq / 200.0
    log = freq >= 1000.0
    mels[log] = 15.0 + np.log(freq[log] / 1000.0) * 27.0 / np.log(6.4)
    return mels


def _mel_to_hertz(mels: np.ndarray) -> np.ndarray:
    freq = 200.0 * mels / 3.0
    log = mels >= 15.0
    freq[log] = 1000.0 * np.exp(np.log(6.4) * (mels[log] - 15.0) / 27.0)
    return freq


def mel_filters(spec: AudioPreprocess) -> np.ndarray:
    """Slaney-normalized triangular mel filters, [n_fft // 2 + 1, n_mels], as transformers builds them.

    Example:
        >>> mel_filters(AudioPreprocess(16000, 400, 160, 80, 480000)).shape
        (201, 80)
    """
    bins = spec.n_fft // 2 + 1
    edges = np.array([spec.min_frequency, spec.max_frequency], np.float64)
    mel_edges = _hertz_to_mel(edges)
    centres = _mel_to_hertz(np.linspace(mel_edges[0], mel_edges[1], spec.n_mels + 2))
    fft_freqs = np.linspace(0, spec.sampling_rate // 2, bins)
    slopes = centres[None, :] - fft_freqs[:, None]
    widths = np.diff(centres)
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    return filters * (2.0 / (centres[2:] - centres[:-2]))[None, :]


def log_mel(samples: np.ndarray, spec: AudioPreprocess) -> tuple[np.ndarray, int]:
    """Mono `samples` at the model's rate -> (features [n_mels, frames] float32, valid frames).

    The samples are zero-padded (or cut) to the model's window first; `valid frames` counts the
    frames that start inside the real audio, as the feature extractor's attention mask does.

    Example:
        >>> features, valid = log_mel(np.zeros(16000, np.float32), spec)  # doctest: +SKIP
        >>> features.shape, valid                                           # doctest: +SKIP
        ((80, 3000), 100)
    """
    n = min(len(samples), spec.n_samples)
    x = np.zeros(spec.n_samples, np.float64)
    x[:n] = samples[:n]
    half = spec.n_fft // 2
    x = np.pad(x, half, mode="reflect")  # centred frames, as torch.stft(center=True)
    frames = np.lib.stride_tricks.sliding_window_view(x, spec.n_fft)[:: spec.hop_length]  # a view: no copy
    window = np.hanning(spec.n_fft + 1)[:-1]  # periodic Hann, as torch.hann_window
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    mel = _product(mel_filters(spec).T, power[:-1].T)  # Whisper drops the last frame
    log = np.log10(np.maximum(mel, 1e-10))
    log = np.maximum(log, log.max() - 8.0)
    valid = min(mel.shape[1], -(-n // spec.hop_length))
    return ((log + 4.0) / 4.0).astype(np.float32), valid


def log_mel_working_bytes(spec: AudioPreprocess) -> int:
    """The most memory `log_mel` holds at once for one clip (float64 throughout, as Whisper's reference).

    The padded signal twice (zeros, then reflect-padded), the windowed frames [frames, n_fft],
    their spectrum [frames, n_fft / 2 + 1] complex, its magnitude, and as much again for the
    FFT's scratch and the allocator's rounding: 34.9 MiB for a 30 s window, where the process's
    peak was measured to grow by 28.9-30.8 MiB over one call.

    Example:
        >>> log_mel_working_bytes(AudioPreprocess(16000, 400, 160, 80, 480000)) // 2**20  # a 30 s window
        34
    """
    frames, bins = 1 + spec.n_samples // spec.hop_length, spec.n_fft // 2 + 1
    return 2 * 8 * (spec.n_samples + spec.n_fft) + frames * (8 * spec.n_fft + 32 * bins)


def load_audio(item: str | Path | np.ndarray, spec: AudioPreprocess) -> np.ndarray:
    """Mono float32 samples at the model's rate from a WAV path or a 1-D array already at that rate.

    Example:
        >>> load_audio("stereo-44k.wav", spec).shape   # doctest: +SKIP
        (16000,)
    """
    if isinstance(item, np.ndarray):
        if item.ndim != 1 or not np.issubdtype(item.dtype, np.floating) or not 0 < item.size <= spec.n_samples:
            raise InputError(
                f"audio array must be 1-D float samples at {spec.sampling_rate} Hz, at most {spec.n_samples}; "
                f"got {item.dtype} {item.shape}"
            )
        if not np.isfinite(item).all():
            raise InputError("audio array holds NaN or infinite samples; allowed: finite samples")
        return item.astype(np.float32)
    if not isinstance(item, (str, Path)):
        raise InputError(f"audio item {item!r} is a {type(item).__name__}; allowed: a WAV path or a 1-D float array")
    samples, rate = read_wav(item, max_seconds=spec.n_samples / spec.sampling_rate)
    return resample(samples.mean(axis=1), rate, spec.sampling_rate)


def preprocess_audio(item: str | Path | np.ndarray, spec: AudioPreprocess) -> tuple[np.ndarray, int]:
    """One audio clip -> (log-mel features [n_mels, frames] float32, frames holding real audio).

    Example:
        >>> preprocess_audio("speech.wav", spec)[0].shape   # doctest: +SKIP
        (80, 3000)
    """
    return log_mel(load_audio(item, spec), spec)
