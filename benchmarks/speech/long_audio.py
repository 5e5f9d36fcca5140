"""10-minute English speech files and their reference texts, made offline from WordNet's glosses with espeak-ng.

The text is real English (Princeton WordNet 3.0's definitions, Debian's wordnet-base), read by
espeak-ng's default English voice at its default rate, resampled to 16 kHz mono 16-bit. The same
packages give the same file: the glosses are taken in file order from a fixed line, those with
digits, abbreviations or non-ASCII letters skipped, until the text holds `WORDS` words.

Two files (`TEXTS`, `--glosses`), so that no claim rests on one: `noun` (wordnet-10min.wav, 605 s:
noun definitions from line 2000 of data.noun) and `adj` (wordnet-adj-10min.wav: adjective definitions
from the start of data.adj). They share no sentence with each other nor with the calibration clips
(verb definitions), and each folder holds one file, named by its text.

    apt-get install -y espeak-ng wordnet-base
    python -m benchmarks.speech.long_audio work/speech --calibration work/speech-calibration
    python -m benchmarks.speech.long_audio work/speech-adj --glosses adj    # the second file
    python -m benchmarks.speech.long_audio work/speech-gaps --words 400 --gaps 1 5   # pauses for --vad to skip
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgemfm.runtimes.audio import read_wav, resample

WORDNET = Path("/usr/share/wordnet")


@dataclass(frozen=True)
class Text:
    """A file's text: WordNet definitions from `glosses`, in file order from line `first_line`; `name` is the
    stem of its WAV and text files."""

    name: str
    glosses: Path
    first_line: int


# noun: past the most abstract top-level nouns ("entity", "physical entity", ...); adj: its first definitions, the
# header's lines (indented) skipped as any other
TEXTS = {
    "noun": Text("wordnet-10min", WORDNET / "data.noun", 2000),
    "adj": Text("wordnet-adj-10min", WORDNET / "data.adj", 0),
}
CALIBRATION = Text("clip", WORDNET / "data.verb", 2000)  # other words than the test files', for int8 calibration
CLIPS, CLIP_WORDS = 8, 50  # calibration clips of about 20 s: one window each
WORDS = 1750  # about 10 minutes at espeak-ng's default 175 words a minute, with the pauses between sentences
RATE = 16000
NOISE = 0.002  # the pauses' noise (standard deviation of samples in [-1, 1])
_PLAIN = re.compile(r"[A-Za-z ,'\-()]+")


def sentences(words: int = WORDS, text: Text = TEXTS["noun"]) -> list[str]:
    """`text`'s WordNet definitions as sentences, in file order, until `words` words.

    Example:
        >>> sentences(20, TEXTS["adj"])[0]   # doctest: +SKIP
        'Facing away from the axis of an organ or organism.'
    """
    glosses = text.glosses
    if not glosses.is_file():
        raise SystemExit(f"{glosses} is missing: apt-get install -y wordnet-base")
    out, count = [], 0
    for line in glosses.read_text(encoding="latin-1").splitlines()[text.first_line :]:
        if line.startswith(" ") or " | " not in line:
            continue
        definition = line.split(" | ", 1)[1].split(";")[0].strip()  # the definition, not its quoted examples
        if not _PLAIN.fullmatch(definition) or len(definition.split()) < 4:
            continue
        out.append(definition[0].upper() + definition[1:] + ".")
        count += len(definition.split())
        if count >= words:
            return out
    raise SystemExit(f"{glosses} has fewer than {words} words of plain definitions past line {text.first_line}")


def normalise(text: str) -> str:
    """The text WER is counted on: lower case, hyphens as spaces, no other punctuation, single spaces.

    Example:
        >>> normalise("A well-known (old) man's hat.")
        'a well known old man s hat'
    """
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split())


def build(out: Path, words: int = WORDS, text: Text = TEXTS["noun"]) -> tuple[Path, Path]:
    """Write `out/NAME.wav` (16 kHz mono) and `out/NAME.txt` (the text read, one sentence a line), NAME `text`'s."""
    return _speak(out, text.name, sentences(words, text))


def speech(folder: Path) -> tuple[Path, Path]:
    """The WAV and reference text that `build` wrote into `folder`: the one of `TEXTS` there.

    Example:
        >>> speech(Path("work/speech-adj"))  # doctest: +SKIP
        (PosixPath('work/speech-adj/wordnet-adj-10min.wav'), PosixPath('work/speech-adj/wordnet-adj-10min.txt'))
    """
    found = [folder / t.name for t in TEXTS.values() if (folder / f"{t.name}.wav").is_file()]
    if len(found) != 1:
        allowed = " or ".join(f"{t.name}.wav" for t in TEXTS.values())
        raise SystemExit(f"{folder} holds {len(found)} of the speech files; allowed: one folder with {allowed}")
    return found[0].with_suffix(".wav"), found[0].with_suffix(".txt")


def calibration(out: Path) -> Path:
    """A calibration folder for `edgemfm export --calibration`: `CLIPS` clips of WordNet's verb glosses (not the
    test files' nouns and adjectives), clip-00.wav .. and transcripts.txt, one clip's text a line."""
    said = sentences(CLIPS * CLIP_WORDS, CALIBRATION)
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


def build_with_gaps(
    out: Path, words: int, gaps: tuple[float, float], seed: int = 0, text: Text = TEXTS["noun"]
) -> tuple[Path, Path]:
    """`build`'s sentences, each read alone, after a pause of `gaps` seconds (uniform, seeded) of faint noise
    (-54 dBFS, a quiet room): a recording with the silences of real speech, for voice-activity gating to skip."""
    rng, parts = np.random.default_rng(seed), []
    lines = sentences(words, text)
    with tempfile.TemporaryDirectory() as scratch:
        for i, line in enumerate(lines):
            wav, _ = _speak(Path(scratch), f"s{i}", [line])
            parts += [rng.normal(0, NOISE, int(rng.uniform(*gaps) * RATE)), read_wav(wav)[0][:, 0]]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{text.name}.txt").write_text("\n".join(lines) + "\n")
    return _write(out / f"{text.name}.wav", np.concatenate(parts)), out / f"{text.name}.txt"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="the folder to write the WAV and its text into")
    p.add_argument("--words", type=int, default=WORDS, help=f"words of text (default {WORDS}: about 10 minutes)")
    p.add_argument("--glosses", choices=TEXTS, default="noun", help="which file's text (default noun: 605 s)")
    p.add_argument("--calibration", type=Path, help="also write int8 calibration clips into this folder")
    p.add_argument(
        "--gaps", type=float, nargs=2, metavar=("MIN", "MAX"), help="read each sentence alone, MIN-MAX s apart"
    )
    args = p.parse_args()
    if args.calibration:
        print(calibration(args.calibration))
    source = TEXTS[args.glosses]
    gaps = args.gaps
    wav, text = (
        build_with_gaps(args.out, args.words, gaps, text=source) if gaps else build(args.out, args.words, source)
    )
    with wave.open(str(wav)) as w:
        print(f"{wav}: {w.getnframes() / w.getframerate():.1f} s; {text}: {len(text.read_text().split())} words")


if __name__ == "__main__":
    main()
