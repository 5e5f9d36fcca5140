"""Audio pre-processing: WAV reading, mixdown, resampling and log-mel against transformers."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from edgemfm.errors import InputError
from edgemfm.manifest import AudioPreprocess
from edgemfm.runtimes.audio import load_audio, log_mel, mel_filters, read_wav, resample
from edgemfm.runtimes.preprocess import PREPROCESSORS

WHISPER = AudioPreprocess(sampling_rate=16000, n_fft=400, hop_length=160, n_mels=80, n_samples=480000)


def speech_wav(path: Path, text: str) -> Path:
    """Real speech from espeak-ng (22050 Hz, 16-bit mono); the test is skipped without it."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install -y espeak-ng): no speech to test with")
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    return path


@pytest.fixture(scope="session")
def speech(tmp_path_factory) -> Path:
    return speech_wav(tmp_path_factory.mktemp("audio") / "speech.wav", "The quick brown fox jumps over the lazy dog.")


def _write_pcm(path: Path, samples: np.ndarray, rate: int, width: int) -> Path:
    """Integer PCM through the stdlib writer, so the reader is checked against another implementation."""
    scaled = {
        1: lambda x: (x * 127 + 128).astype(np.uint8),
        2: lambda x: (x * 32767).astype("<i2"),
        3: lambda x: (x * (2**23 - 1)).astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].copy(),  # low 3 bytes
        4: lambda x: (x * (2**31 - 1)).astype("<i4"),
    }
    with wave.open(str(path), "wb") as w:
        w.setnchannels(samples.shape[1])
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(scaled[width](samples).tobytes())
    return path


def _write_float(path: Path, samples: np.ndarray, rate: int) -> Path:
    data = samples.astype("<f4").tobytes()
    channels = samples.shape[1]
    fmt = np.array([3, channels], "<u2").tobytes() + np.array([rate, rate * 4 * channels], "<u4").tobytes()
    fmt += np.array([4 * channels, 32], "<u2").tobytes()
    body = b"WAVE" + b"fmt " + np.uint32(len(fmt)).tobytes() + fmt + b"data" + np.uint32(len(data)).tobytes() + data
    path.write_bytes(b"RIFF" + np.uint32(len(body)).tobytes() + body)
    return path


def _tone(rate: int, seconds: float, freq: float = 440.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


@pytest.mark.parametrize("width, step", [(1, 1 / 127), (2, 1 / 32767), (3, 2**-23), (4, 1e-9)])
def test_pcm_widths_read_back(tmp_path, width, step):
    stereo = np.stack([_tone(8000, 0.1), -_tone(8000, 0.1, 300.0)], axis=1)
    samples, rate = read_wav(_write_pcm(tmp_path / "x.wav", stereo, 8000, width))
    assert rate == 8000 and samples.shape == stereo.shape
    assert np.abs(samples - stereo).max() <= 2 * step + 1e-6


def test_float_wav_and_mono_mixdown(tmp_path):
    stereo = np.stack([_tone(16000, 0.2), _tone(16000, 0.2, 1000.0)], axis=1)
    mono = load_audio(_write_float(tmp_path / "f.wav", stereo, 16000), WHISPER)
    assert np.abs(mono - stereo.mean(axis=1)).max() < 1e-7


def test_resampling_reproduces_a_tone():
    """44.1 kHz and 22.05 kHz tones resampled to 16 kHz match the tone sampled at 16 kHz."""
    for rate in (44100, 22050, 8000):
        got = resample(_tone(rate, 0.5, 1234.0), rate, 16000)
        want = _tone(16000, 0.5, 1234.0)
        assert len(got) == len(want)
        assert np.abs(got - want)[400:-400].max() < 2e-3, rate  # away from the edges' half filters


def test_resampling_matches_scipy():
    scipy_signal = pytest.importorskip("scipy.signal")
    # Content below 7 kHz: the two filters differ only in their transition band near 8 kHz.
    rng = np.random.default_rng(0)
    noise = sum(_tone(22050, 1.0, f) * a for f, a in zip(rng.uniform(50, 7000, 40), rng.uniform(0, 0.05, 40)))
    ours = resample(noise, 22050, 16000)
    theirs = scipy_signal.resample_poly(noise.astype(np.float64), 320, 441)
    assert ours.shape == theirs.shape
    err = ours[200:-200] - theirs[200:-200]
    assert 10 * np.log10((theirs[200:-200] ** 2).sum() / (err**2).sum()) > 40  # SQNR in dB


def test_mel_filters_match_transformers():
    from transformers.audio_utils import mel_filter_bank

    theirs = mel_filter_bank(201, 80, 0.0, 8000.0, 16000, norm="slaney", mel_scale="slaney")
    assert np.abs(mel_filters(WHISPER) - theirs).max() < 1e-7


def test_log_mel_of_speech_matches_whisper_feature_extractor(speech):
    from transformers import WhisperFeatureExtractor

    samples = load_audio(speech, WHISPER)
    assert 1.5 < len(samples) / 16000 < 6  # resampled from espeak's 22.05 kHz
    ours, valid = log_mel(samples, WHISPER)
    ref = WhisperFeatureExtractor()(samples, sampling_rate=16000, return_tensors="np", return_attention_mask=True)
    assert ours.shape == ref["input_features"][0].shape == (80, 3000)
    assert np.abs(ours - ref["input_features"][0]).max() < 1e-4
    assert valid == int(ref["attention_mask"][0].sum())


# Measured in a fresh interpreter: in the test process the heap other tests left behind decides how much of
# one call's memory the allocator finds free (a full-suite run measured 39.2 MB where alone it is under 36.6).
PEAK_CHILD = """
import numpy as np
from edgemfm.manifest import AudioPreprocess
from edgemfm.runtimes import budget
from edgemfm.runtimes.audio import log_mel, log_mel_working_bytes
spec = AudioPreprocess(sampling_rate=16000, n_fft=400, hop_length=160, n_mels=80, n_samples=480000)
samples = np.random.default_rng(0).standard_normal(spec.n_samples).astype(np.float32)
log_mel(samples, spec)  # first call: numpy's FFT plans and caches
if not (budget.release_free_heap() and budget.reset_peak()):
    print("SKIP")
else:
    before = budget.resident_bytes()
    log_mel(samples, spec)
    print(budget.peak_resident_bytes() - before, log_mel_working_bytes(spec))
"""


def test_log_mel_working_bytes_bound_its_measured_peak():
    """The memory budget counts one window's log-mel: the process's peak over a call stays within it."""
    result = subprocess.run([sys.executable, "-c", PEAK_CHILD], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    if result.stdout.strip() == "SKIP":
        pytest.skip("this OS cannot reset its peak-memory counter")
    grown, working = map(int, result.stdout.split())
    assert 0.5 * working < grown <= working


def test_preprocessor_row_is_registered(speech):
    x, valid = PREPROCESSORS["audio"](str(speech), type("Pre", (), {"audio": WHISPER})())
    assert x.shape == (80, 3000) and x.dtype == np.float32 and 100 < valid < 3000


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not audio at all", "is not a WAV file; allowed: WAV (RIFF/WAVE) with PCM 8, 16, 24 or 32-bit"),
        (b"", "is not a WAV file"),
    ],
)
def test_wrong_kind_of_file_is_named(tmp_path, content, message):
    path = tmp_path / "clip.wav"
    path.write_bytes(content)
    with pytest.raises(InputError, match=re.escape(message)) as err:
        read_wav(path)
    assert "clip.wav" in str(err.value)


def test_empty_and_odd_width_wavs_are_refused(tmp_path):
    empty = _write_pcm(tmp_path / "empty.wav", np.zeros((0, 1), np.float32), 16000, 2)
    with pytest.raises(InputError, match=r"'.*empty.wav' holds no audio samples"):
        read_wav(empty)
    odd = bytearray(_write_pcm(tmp_path / "odd.wav", np.zeros((10, 1), np.float32), 16000, 2).read_bytes())
    odd[34:36] = (12).to_bytes(2, "little")  # bits per sample: 12
    (tmp_path / "odd.wav").write_bytes(bytes(odd))
    with pytest.raises(InputError, match=r"odd.wav' holds 12-bit PCM samples .*; allowed: WAV"):
        read_wav(tmp_path / "odd.wav")
    with pytest.raises(InputError, match="audio file 'missing.wav' does not exist"):
        read_wav("missing.wav")


def test_clips_longer_than_the_window_are_refused_not_cut(tmp_path):
    long = _write_pcm(tmp_path / "long.wav", _tone(8000, 31.0)[:, None], 8000, 2)
    with pytest.raises(InputError, match=r"long.wav' lasts 31.0 s; this model takes clips of at most 30 s"):
        load_audio(long, WHISPER)
    with pytest.raises(
        InputError, match=r"audio array must be 1-D float samples at 16000 Hz, at most 480000; got int16 \(10,\)"
    ):
        load_audio(np.zeros(10, np.int16), WHISPER)


def test_a_rate_without_a_simple_ratio_is_refused():
    with pytest.raises(InputError, match=r"cannot resample 44099 Hz to 16000 Hz: .*allowed: rates with a simple ratio"):
        resample(np.zeros(100, np.float32), 44099, 16000)
