"""Side by side: edgemfm's numpy audio pre-processing against the libraries it mirrors.

Times resampling espeak-ng speech from 22.05 to 16 kHz (against scipy's resample_poly) and the
80- and 128-bin log-mel of one 30 s window (against transformers' WhisperFeatureExtractor), and
reports how far apart the results are.

    python -m benchmarks.runtime.audio_preprocess --repeats 5
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edgemfm.manifest import AudioPreprocess
from edgemfm.runtimes.audio import log_mel

from .. import record

TEXT = "The quick brown fox jumps over the lazy dog, and then it runs into the forest to find its friends."


def _speech(path: Path) -> Path:
    """A sentence of espeak-ng speech (22.05 kHz, 16-bit mono, about 6 s)."""
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed: apt-get install -y espeak-ng")
    subprocess.run(["espeak-ng", "-w", str(path), TEXT], check=True, capture_output=True)
    return path


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="best of this many runs")
    args = parser.parse_args()
    from transformers import WhisperFeatureExtractor

    with tempfile.TemporaryDirectory() as tmp:
        wav = _speech(Path(tmp) / "speech.wav")
        table = Table(title="audio pre-processing, best of %d (ms)" % args.repeats)  # noqa: UP031
        columns = ("step", "edgemfm (numpy)", "reference", "reference ms", "max abs diff")
        for col in columns:
            table.add_column(col)
        rows = []

        def add(*cells: str) -> None:
            table.add_row(*cells)
            rows.append(dict(zip(columns, cells)))

        spec = AudioPreprocess(16000, 400, 160, 80, 480000)
        from scipy.signal import resample_poly

        from edgemfm.runtimes.audio import read_wav, resample

        raw = read_wav(wav)[0][:, 0]
        samples = resample(raw, 22050, 16000)
        theirs = resample_poly(raw.astype(np.float64), 320, 441)
        add(
            f"resample {len(raw) / 22050:.1f} s, 22.05 -> 16 kHz",
            f"{_best(lambda: resample(raw, 22050, 16000), args.repeats):.1f}",
            "scipy resample_poly",
            f"{_best(lambda: resample_poly(raw, 320, 441), args.repeats):.1f}",
            f"{np.abs(samples - theirs).max():.1e}",
        )
        for mels in (80, 128):
            spec = AudioPreprocess(16000, 400, 160, mels, 480000)
            fe = WhisperFeatureExtractor(feature_size=mels)
            ours_ms = _best(lambda: log_mel(samples, spec), args.repeats)  # noqa: B023
            theirs_ms = _best(lambda: fe(samples, sampling_rate=16000, return_tensors="np"), args.repeats)  # noqa: B023
            diff = np.abs(
                log_mel(samples, spec)[0] - fe(samples, sampling_rate=16000, return_tensors="np").input_features[0]
            ).max()
            add(
                f"log-mel, {mels} bins, one 30 s window",
                f"{ours_ms:.1f}",
                "WhisperFeatureExtractor",
                f"{theirs_ms:.1f}",
                f"{diff:.1e}",
            )
        Console().print(table)
        record.write("audio_preprocess", rows)


if __name__ == "__main__":
    main()
