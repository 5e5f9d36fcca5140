"""Live transcription of audio as it arrives, text committed by local agreement and never rewritten.

The policy is LocalAgreement-2 (Macháček et al., "Turning Whisper into Real-Time Transcription
System", 2023, as whisper_streaming runs it): every `step_s` of new audio, the buffer of not yet
settled audio is transcribed again (the long-form rule, `longform.py`); the longest common prefix
of this hypothesis and the previous one, past what is already committed, is committed. Once a
whole segment is committed, the buffer is cut at its end, so the buffer stays within about one
window and memory stays flat however long the stream runs; a buffer that outgrows the window
commits its hypothesis' finished segments (or, failing any, its whole hypothesis) and is cut.

    chunks ─► buffer ─► every step_s: hypothesis ─► LCP(previous, hypothesis) beyond committed ─► committed text
                 ▲                                                                                │
                 └──────────── cut at the end of the last wholly committed segment ◄──────────────┘

Example:
    >>> for update in transcribe_stream(pipe, microphone_chunks()):   # doctest: +SKIP
    ...     print(update.committed, end="", flush=True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from edgemfm.errors import InputError
from edgemfm.runtimes.longform import LongForm, Segment, TranscribeConfig
from edgemfm.runtimes.mel_windows import ArraySource, MelWindows

PCM_CHUNK = 3200  # bytes read from a PCM stream at a time: 0.1 s of 16-bit samples at 16 kHz


@dataclass(frozen=True)
class LiveUpdate:
    """What one step of live transcription settled."""

    committed: str  # text committed at this step: appended to all committed before, never rewritten
    partial: str  # the hypothesis past the committed text: may still change
    audio_s: float  # seconds of audio received when this step ran (committed text's latency is measured on it)
    segments: tuple[Segment, ...]  # every segment committed so far, in stream time


def pcm_chunks(stream: BinaryIO, chunk_bytes: int = PCM_CHUNK) -> Iterator[np.ndarray]:
    """Float samples from raw 16-bit little-endian mono PCM (what `arecord -f S16_LE -t raw` writes).

    Example:
        >>> import io
        >>> next(pcm_chunks(io.BytesIO(b"\\x00\\x40" * 4))).tolist()
        [0.5, 0.5, 0.5, 0.5]
    """
    rest = b""
    while data := stream.read(chunk_bytes):
        data = rest + data
        whole = len(data) - len(data) % 2
        rest = data[whole:]
        if whole:
            yield np.frombuffer(data[:whole], "<i2").astype(np.float32) / 32768.0


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


class Live:
    """The state of one live stream: the unsettled buffer, the committed tokens and the last hypothesis."""

    def __init__(self, pipe: Any, config: TranscribeConfig, step_s: float):
        self.pipe, self.config, self.spec = pipe, config, pipe.manifest.preprocess.audio
        self.step = max(1, int(step_s * self.spec.sampling_rate))
        self.ts = pipe.manifest.generation.transcription.no_timestamps + 1
        self.buffer = np.zeros(0, np.float32)
        self.offset = 0.0  # stream seconds at the buffer's first sample
        self.received = 0  # samples
        self.done: list[Segment] = []  # committed segments, in stream time
        self.pending: list[int] = []  # committed text tokens of the buffer's unfinished segments
        self.previous: list[int] = []  # the last hypothesis' text tokens past `pending`

    def _hypothesis(self) -> list[Segment]:
        config = self.config
        if config.condition_on_previous and self.done:  # earlier text as Whisper's prompt
            config = dataclasses.replace(config, prompt="".join(s.text for s in self.done)[-200:])
        longform = LongForm(self.pipe, config)
        return list(longform.segments(MelWindows(ArraySource(self.buffer), self.spec)))

    def _text(self, tokens: list[int]) -> str:
        return self.pipe.tokenizer.decode(tokens, skip_special_tokens=True)

    def update(self, final: bool = False) -> LiveUpdate:
        """Transcribe the buffer again and commit what two hypotheses in a row agree on (everything at the end;
        at least the finished segments when the buffer has outgrown the window)."""
        segments = self._hypothesis() if self.buffer.size >= self.spec.hop_length else []
        words = [[t for t in s.tokens if t < self.ts] for s in segments]
        flat = [t for w in words for t in w]
        new = flat[len(self.pending) :]  # past the committed tokens, however the model reads them now
        agreed = len(new) if final else _common(new, self.previous)
        if self.buffer.size > self.spec.n_samples:
            finished = sum(len(w) for w in words[:-1]) if len(words) > 1 else len(flat)
            agreed = max(agreed, finished - len(self.pending))
        committed = new[:agreed]
        self.pending += committed
        self.previous = new[agreed:]
        self._settle(segments, words, final)
        return LiveUpdate(
            committed=self._text(committed),
            partial=self._text(self.previous),
            audio_s=self.received / self.spec.sampling_rate,
            segments=tuple(self.done),
        )

    def _settle(self, segments: list[Segment], words: list[list[int]], final: bool) -> None:
        """Move the wholly committed segments to `done` and cut the buffer at the last one's end (at the
        end of the stream, all of them)."""
        whole, used = 0, 0
        for w in words:
            if used + len(w) > len(self.pending):
                break
            used += len(w)
            whole += 1
        end = min(int(segments[whole - 1].end * self.spec.sampling_rate), self.buffer.size) if whole else 0
        if end <= 0 and not final:  # nothing to cut: the same audio is heard again, its text kept pending
            return
        if final and whole == 0 and self.pending:  # the last hypothesis has no segment: the committed text is one
            duration = self.buffer.size / self.spec.sampling_rate
            self.done.append(Segment(self.offset, self.offset + duration, self._text(self.pending), ()))
        at = 0
        for i, (s, w) in enumerate(zip(segments[:whole], words[:whole])):
            # the committed tokens, not this hypothesis' reading of them; the stream's last segment takes the rest
            upto = len(self.pending) if final and i == whole - 1 else at + len(w)
            self.done.append(
                Segment(self.offset + s.start, self.offset + s.end, self._text(self.pending[at:upto]), s.tokens)
            )
            at = upto
        used = at
        self.buffer = self.buffer[end:].copy()
        self.offset += end / self.spec.sampling_rate
        self.pending = self.pending[used:]

    def feed(self, chunks: Iterable[np.ndarray]) -> Iterator[LiveUpdate]:
        """Updates as the chunks arrive: one per `step_s` of new audio, and a final one."""
        fresh = 0
        for chunk in chunks:
            chunk = np.asarray(chunk, np.float32)
            if chunk.ndim != 1:
                raise InputError(f"audio chunks must be 1-D arrays of samples, got shape {chunk.shape}")
            self.buffer = np.concatenate([self.buffer, chunk])
            self.received += chunk.size
            fresh += chunk.size
            if fresh >= self.step:
                fresh = 0
                yield self.update()
        yield self.update(final=True)


def transcribe_stream(
    pipe: Any, chunks: Iterable[np.ndarray], config: TranscribeConfig | None = None, step_s: float = 1.0
) -> Iterator[LiveUpdate]:
    """Live updates from chunks of float samples at the model's rate (a microphone, a socket, a file read in pieces).

    Example:
        >>> text = "".join(u.committed for u in transcribe_stream(pipe, chunks))   # doctest: +SKIP
    """
    return Live(pipe, config or TranscribeConfig(), step_s).feed(chunks)
