"""Transcript files from timed segments: SubRip (.srt), WebVTT (.vtt) and JSON, written atomically.

Example:
    >>> from edgemfm.runtimes.longform import Segment
    >>> print(render([Segment(0.0, 1.5, " Hello.", ())], "srt"))
    1
    00:00:00,000 --> 00:00:01,500
    Hello.
    <BLANKLINE>
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edgemfm.errors import InputError
from edgemfm.records import write_text

FORMATS = ("srt", "vtt", "json")


def _clock(seconds: float, mark: str) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{mark}{ms % 1000:03d}"


def line(segment: Any) -> str:
    """`[start → end] text`, as `edgemfm run --timestamps` prints a segment.

    Example:
        >>> from edgemfm.runtimes.longform import Segment
        >>> line(Segment(61.0, 63.25, " Hello.", ()))
        '[00:01:01.000 → 00:01:03.250] Hello.'
    """
    return f"[{_clock(segment.start, '.')} → {_clock(segment.end, '.')}] {segment.text.strip()}"


def render(segments: Iterable[Any], format: str) -> str:
    """The transcript file's text in `format` (srt, vtt or json)."""
    segments = list(segments)
    if format == "srt":
        cues = [
            f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text.strip()}\n"
            for i, s in enumerate(segments, 1)
        ]
        return "\n".join(cues)
    if format == "vtt":
        cues = [f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text.strip()}\n" for s in segments]
        return "\n".join(["WEBVTT\n", *cues])
    if format == "json":
        rows = [{"start": s.start, "end": s.end, "text": s.text.strip()} for s in segments]
        return json.dumps({"text": "".join(s.text for s in segments).strip(), "segments": rows}, indent=1) + "\n"
    raise InputError(f"transcript format {format!r} is not known; allowed: {', '.join(FORMATS)}")


def write(path: str | Path, segments: Iterable[Any], format: str) -> Path:
    """Write the transcript to `path` atomically: a reader sees the old file or the whole new one.

    Example:
        >>> write("talk.srt", pipe.transcribe("talk.wav"), "srt")   # doctest: +SKIP
        PosixPath('talk.srt')
    """
    return write_text(path, render(segments, format))
