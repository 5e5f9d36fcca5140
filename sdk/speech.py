"""`edgemfm run` on speech: full-length transcription with timestamps and transcript files, and live
transcription of raw PCM from stdin (`--audio -`).

A Whisper bundle with timestamp tokens transcribes a recording longer than its window, or any
recording when one of the options below is given, with the long-form rule (runtimes/longform.py);
`--audio -` reads 16-bit little-endian mono PCM at the model's rate from stdin and prints text as
it is committed (runtimes/live.py).

Example:
    $ edgemfm run bundles/whisper-pi5 --audio lecture.wav --timestamps --format srt
    $ arecord -f S16_LE -r 16000 -c 1 -t raw | edgemfm run bundles/whisper-pi5 --audio - --vad
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from edgemfm import arguments as A
from edgemfm.errors import InputError
from edgemfm.runtimes import transcripts
from edgemfm.runtimes.audio import wav_layout
from edgemfm.runtimes.live import COMMIT_DELAY_S
from edgemfm.runtimes.longform import FALLBACK, TranscribeConfig
from edgemfm.runtimes.vad import MODEL_FILE, VadConfig

STDIN = "-"
_STATUS_CHARS = 70  # the partial's tail shown on the status line: one terminal line's worth


def add_arguments(r: argparse.ArgumentParser) -> None:
    """The speech options of `edgemfm run`."""
    r.add_argument("--timestamps", action="store_true", help="speech: print [start → end] text per segment")
    r.add_argument(
        "--format", choices=transcripts.FORMATS, help="speech: also write the transcript as srt, vtt or json"
    )
    r.add_argument("--out", metavar="FILE", help="speech: the --format file (default: the audio's name, that suffix)")
    r.add_argument("--condition-on-previous", action="store_true", help="speech: each window reads the text before it")
    r.add_argument(
        "--step",
        type=A.POSITIVE,
        default=1.0,
        metavar="SECONDS",
        help="speech, --audio -: seconds of new audio between live updates (each decodes the unsettled buffer)",
    )
    r.add_argument(
        "--commit-delay",
        type=A.NON_NEGATIVE,
        default=COMMIT_DELAY_S,
        metavar="SECONDS",
        help=f"speech, --audio -: audio an agreed word waits for after it before it is committed (default: "
        f"{COMMIT_DELAY_S:g}; more waits longer and agrees more often with the whole window's text)",
    )
    r.add_argument(
        "--vad",
        nargs="?",
        const="",
        metavar="ONNX",
        help=f"speech: transcribe only what silero VAD hears as speech (default model: silero-vad's {MODEL_FILE})",
    )
    r.add_argument(
        "--fallback",
        action="store_true",
        help="speech: decode a window again at rising temperatures when it repeats or is unsure (OpenAI's settings)",
    )


def wants_longform(pipe: Any, args: argparse.Namespace) -> bool:
    """Whether `run` transcribes at full length: asked for, or a recording longer than the bundle's window."""
    asked = args.timestamps or args.format or args.condition_on_previous or args.fallback or args.vad is not None
    if asked or STDIN in args.audio:
        if len(args.audio) != 1 or args.image:
            raise InputError(f"transcription takes exactly one audio input and no image; got {len(args.audio)} audio")
        return True
    if len(args.audio) != 1 or args.image or getattr(pipe, "manifest", None) is None:  # a cascade answers questions
        return False
    if pipe.manifest.generation.transcription is None:
        return False
    spec, layout = pipe.manifest.preprocess.audio, wav_layout(args.audio[0])
    return layout.frames / layout.rate > spec.n_samples / spec.sampling_rate


def run(pipe: Any, args: argparse.Namespace) -> None:
    """Transcribe `args.audio[0]` (or stdin) with `pipe`, printing as it goes and writing --format's file."""
    base = FALLBACK if args.fallback else TranscribeConfig()
    vad = None if args.vad is None else VadConfig(model=args.vad)
    config = dataclasses.replace(base, prompt=args.prompt, condition_on_previous=args.condition_on_previous, vad=vad)
    audio = args.audio[0]
    if audio == STDIN:
        from edgemfm.runtimes.live import pcm_chunks

        updates = pipe.transcribe_stream(
            pcm_chunks(sys.stdin.buffer), config, step_s=args.step, commit_delay_s=args.commit_delay
        )
        segments = _print_live(updates, args.timestamps)
    else:
        segments = _print(pipe.transcribe(audio, config), args.timestamps)
    if args.format:
        default = Path("transcript" if audio == STDIN else Path(audio).stem).with_suffix(f".{args.format}")
        path = transcripts.write(args.out or default, segments, args.format)
        print(f"edgemfm: wrote {path}", file=sys.stderr)


def _print(segments: Any, timestamps: bool) -> list[Any]:
    kept = []
    for s in segments:
        kept.append(s)
        sys.stdout.write(transcripts.line(s) + "\n" if timestamps else s.text)
        sys.stdout.flush()
    if not timestamps:
        sys.stdout.write("\n")
    return kept


def _print_live(updates: Any, timestamps: bool, status: Any = None) -> list[Any]:
    """Committed text as it is committed (never rewritten); the segments it came from.

    On a terminal, the partial hypothesis (what is heard but not committed yet) is shown on one status
    line on stderr, redrawn at every update, so a live reader sees words seconds after they are spoken
    while the committed text waits for its window to settle (the default commit delay)."""
    status = sys.stderr if status is None and sys.stderr.isatty() else status
    kept = []
    for update in updates:
        if status is not None:
            status.write("\r\033[K")
        if update.committed:
            sys.stdout.write(update.committed + ("\n" if status is not None else ""))
            sys.stdout.flush()
        if status is not None and update.partial.strip():
            status.write("\033[2m… " + update.partial.strip()[-_STATUS_CHARS:] + "\033[0m")
            status.flush()
        kept = list(update.segments)
    if status is not None:
        status.write("\r\033[K")
    sys.stdout.write("\n")
    if timestamps:
        for s in kept:
            sys.stdout.write(transcripts.line(s) + "\n")
    return kept
