"""A 10-minute English speech file and its reference text, made offline from WordNet's glosses with espeak-ng.

The text is real English (Princeton WordNet 3.0's noun definitions, Debian's wordnet-base), read
by espeak-ng's default English voice at its default rate, resampled to 16 kHz mono 16-bit. The same
packages give the same file: the glosses are taken in file order from a fixed line, those with
digits, abbreviations or non-ASCII letters skipped, until the text holds `WORDS` words.

    apt-get install -y espeak-ng wordnet-base
    python -m benchmarks.speech.long_audio work/speech --calibration work/speech-calibration
    python -m benchmarks.speech.long_audio work/speech-gaps --words 400 --gaps 1 5   # pauses for --vad to skip
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

from edgemfm.runtimes.audio import read_wav, resample

GLOSSES = Path("/usr/share/wordnet/data.noun")
CALIBRATION_GLOSSES = Path("/usr/share/wordnet/data.verb")  # other words than the test file's, for int8 calibration
CLIPS, CLIP_WORDS = 8, 50  # calibration clips of about 20 s: one window each
FIRST_LINE = 2000  # past the most abstract top-level nouns ("entity", "physical entity", ...)
WORDS = 1750  # about 10 minutes at espeak-ng's default 175 words a minute, with the pauses between sentences
RATE = 16000
NOISE = 0.002  # the pauses' noise (standard deviation of samples in [-1, 1])
NAME = "wordnet-10min"
_PLAIN = re.compile(r"[A-Za-z ,'\-()]+")


def sentences(words: int = WORDS, glosses: Path = GLOSSES) -> list[str]:
    """WordNet noun definitions as sentences, in file order, until `words` words.

    Example:
        >>> sentences(20)[0]   # doctest: +SKIP
        'A ...'
    """
    if not glosses.is_file():
        raise SystemExit(f"{glosses} is missing: apt-get install -y wordnet-base")
    out, count = [], 0
    for line in glosses.read_text(encoding="latin-1").splitlines()[FIRST_LINE:]:
        if line.startswith(" ") or " | " not in line:
            continue
        definition = line.split(" | ", 1)[1].split(";")[0].strip()  # the definition, not its quoted examples
        if not _PLAIN.fullmatch(definition) or len(definition.split()) < 4:
            continue
        out.append(definition[0].upper() + definition[1:] + ".")
        count += len(definition.split())
        if count >= words:
            return out
    raise SystemExit(f"{glosses} has fewer than {words} words of plain definitions past line {FIRST_LINE}")


def normalise(text: str) -> str:
    """The text WER is counted on: lower case, hyphens as spaces, no other punctuation, single spaces.

    Example:
        >>> normalise("A well-known (old) man's hat.")
        'a well known old man s hat'
    """
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split())


def build(out: Path, words: int = WORDS) -> tuple[Path, Path]:
    """Write `out/wordnet-10min.wav` (16 kHz mono) and `out/wordnet-10min.txt` (the text read, one sentence a line)."""
    return _speak(out, NAME, sentences(words))


def calibration(out: Path) -> Path:
    """A calibration folder for `edgemfm export --calibration`: `CLIPS` clips of WordNet's verb glosses (not the
    test file's nouns), clip-00.wav .. and transcripts.txt, one clip's text a line."""
    said = sentences(CLIPS * CLIP_WORDS, CALIBRATION_GLOSSES)
    per = -(-len(said) // CLIPS)
    lines = [" ".join(said[i * per : (i + 1) * per]) for i in range(CLIPS)]
    for i, line in enumerate(lines):
        _speak(out, f"clip-{i:02d}", [line])
        (out / f"clip-{i:02d}.txt").unlink()
    (out / "transcripts.txt").write_text("\n".join(lines) + "\n")
    return out


def _speak(out: Path, name: str, lines: list[str]) -> tuple[Path, Path]:
    """`out/NAME.wav` (espeak-ng reading `lines`, 16 kHz mono 16-bit) and `out/NAME.txt` (the lines)."""
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed: apt-get install -y espeak-ng")
    out.mkdir(parents=True, exist_ok=True)
    text = out / f"{name}.txt"
    text.write_text("\n".join(lines) + "\n")
    raw = out / f"{name}-22k.wav"
    subprocess.run(["espeak-ng", "-f", str(text), "-w", str(raw)], check=True, capture_output=True)
    samples, rate = read_wav(raw)
    samples = resample(samples.mean(axis=1), rate, RATE)
    raw.unlink()
    return _write(out / f"{name}.wav", samples), text


def _write(wav: Path, samples: np.ndarray) -> Path:
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return wav


def build_with_gaps(out: Path, words: int, gaps: tuple[float, float], seed: int = 0) -> tuple[Path, Path]:
    """`build`'s sentences, each read alone, after a pause of `gaps` seconds (uniform, seeded) of faint noise
    (-54 dBFS, a quiet room): a recording with the silences of real speech, for voice-activity gating to skip."""
    rng, parts = np.random.default_rng(seed), []
    lines = sentences(words)
    with tempfile.TemporaryDirectory() as scratch:
        for i, line in enumerate(lines):
            wav, _ = _speak(Path(scratch), f"s{i}", [line])
            parts += [rng.normal(0, NOISE, int(rng.uniform(*gaps) * RATE)), read_wav(wav)[0][:, 0]]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{NAME}.txt").write_text("\n".join(lines) + "\n")
    return _write(out / f"{NAME}.wav", np.concatenate(parts)), out / f"{NAME}.txt"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="the folder to write the WAV and its text into")
    p.add_argument("--words", type=int, default=WORDS, help=f"words of text (default {WORDS}: about 10 minutes)")
    p.add_argument("--calibration", type=Path, help="also write int8 calibration clips into this folder")
    p.add_argument(
        "--gaps", type=float, nargs=2, metavar=("MIN", "MAX"), help="read each sentence alone, MIN-MAX s apart"
    )
    args = p.parse_args()
    if args.calibration:
        print(calibration(args.calibration))
    wav, text = build_with_gaps(args.out, args.words, args.gaps) if args.gaps else build(args.out, args.words)
    with wave.open(str(wav)) as w:
        print(f"{wav}: {w.getnframes() / w.getframerate():.1f} s; {text}: {len(text.read_text().split())} words")


if __name__ == "__main__":
    main()
