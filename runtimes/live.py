"""Live transcription of audio as it arrives, text committed by local agreement and never rewritten.

The policy is LocalAgreement-2 (Macháček et al., "Turning Whisper into Real-Time Transcription
System", 2023, as whisper_streaming runs it): every `step_s` of new audio, the buffer of not yet
settled audio is decoded again as one window, read after the text committed before it (Whisper's
<|startofprev|> context) and continuing the text already committed inside it (OpenAI's decoding
`prefix`, so a hypothesis never re-reads committed words differently); the longest common prefix of
this hypothesis and the previous one, past what is committed, is committed. Once a whole segment
(closed by its timestamp) is committed, the buffer is cut at its end. The buffer never outgrows one
window: audio that would overflow it first commits the hypothesis' closed segments (or, failing any,
all of it) and cuts, so memory and each step's work stay flat however long the stream runs.

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
    """The state of one live stream: the buffer, the committed tokens in it and before it, the last hypothesis."""

    def __init__(self, pipe: Any, config: TranscribeConfig, step_s: float):
        self.pipe, self.config, self.spec = pipe, config, pipe.manifest.preprocess.audio
        self.longform = LongForm(pipe, config)
        self.step = max(1, int(step_s * self.spec.sampling_rate))
        self.ts = pipe.manifest.generation.transcription.no_timestamps + 1
        self.precision = pipe.manifest.generation.transcription.time_precision
        self.buffer = np.zeros(0, np.float32)
        self.offset = 0.0  # stream seconds at the buffer's first sample
        self.received = 0  # samples
        self.done: list[Segment] = []  # committed segments, in stream time
        self.context: list[int] = []  # committed text tokens before the buffer (the next hypothesis' context)
        self.pending: list[int] = []  # committed text tokens of the buffer's first, unfinished segment
        self.lead = 0.0  # where that segment starts in the buffer, seconds
        self.previous: list[int] = []  # the last hypothesis' text tokens past `pending`
        self.carry = ""  # text committed to make room for audio, reported with the next update

    def _hypothesis(self) -> list[Segment]:
        """The buffer's segments (times in the buffer; a closed segment's tokens end with its timestamp)."""
        mel = MelWindows(ArraySource(self.buffer), self.spec)
        if mel.frames > mel.window_frames:  # steps longer than the window: the long-form rule across windows
            prompt = self.config.prompt + self._text(self.context[-200:])
            longform = LongForm(self.pipe, dataclasses.replace(self.config, prompt=prompt))
            return list(longform.segments(mel))
        last = int(self.spec.n_samples / self.spec.sampling_rate / self.precision)  # the window's last timestamp
        lead = (self.ts + min(round(self.lead / self.precision), last),) if self.pending else ()
        return self._pieces(self.longform.first_window(mel, self.context, (*lead, *self.pending)))

    def _pieces(self, tokens: list[int]) -> list[Segment]:
        """Segments of one window's tokens, the last one open when no timestamp closes it yet."""
        out, start, words = [], 0.0, []
        for token in tokens:
            if token >= self.ts:
                if words:
                    out.append(Segment(start, (token - self.ts) * self.precision, "", (*words, token)))
                start, words = (token - self.ts) * self.precision, []
            else:
                words.append(token)
        if words:  # open: it runs to the buffer's end (or, read as starting past it, ends where it starts)
            out.append(Segment(start, max(start, self.buffer.size / self.spec.sampling_rate), "", tuple(words)))
        return out

    def _text(self, tokens: list[int]) -> str:
        return self.pipe.tokenizer.decode(tokens, skip_special_tokens=True)

    def _closed(self, segments: list[Segment], i: int) -> bool:
        return i < len(segments) - 1 or (bool(segments[i].tokens) and segments[i].tokens[-1] >= self.ts)

    def update(self, final: bool = False, room: int = 0) -> LiveUpdate:
        """Decode the buffer again and commit what two hypotheses in a row agree on (everything at the end;
        at least the closed segments, or all, when `room` more samples must fit in the window)."""
        text = self.carry + self._pass(final, room)
        self.carry = ""
        return LiveUpdate(
            committed=text,
            partial=self._text(self.previous),
            audio_s=self.received / self.spec.sampling_rate,
            segments=tuple(self.done),
        )

    def _pass(self, final: bool, room: int) -> str:
        """One hypothesis of the buffer: commit, settle, and the text committed."""
        segments = self._hypothesis() if self.buffer.size >= self.spec.hop_length else []
        words = [[t for t in s.tokens if t < self.ts] for s in segments]
        flat = [t for w in words for t in w]
        new = flat[len(self.pending) :]  # past the committed tokens (the hypothesis continues them)
        agreed = len(new) if final else _common(new, self.previous)
        if room:
            closed = sum(len(w) for i, w in enumerate(words) if self._closed(segments, i))
            agreed = max(agreed, closed - len(self.pending))
            whole, end = self._whole(segments, words, len(self.pending) + agreed, final)
            final = self.buffer.size - end + room > self.spec.n_samples  # still no room: commit and cut it all
            agreed = len(new) if final else agreed
        committed = new[:agreed]
        self.pending += committed
        self.previous = new[agreed:]
        self._settle(segments, words, final)
        return self._text(committed)

    def _whole(self, segments: list[Segment], words: list[list[int]], pending: int, final: bool) -> tuple[int, int]:
        """How many leading segments are wholly committed and closed, and the sample they end at."""
        whole, used = 0, 0
        for i, w in enumerate(words):
            if used + len(w) > pending or not (final or self._closed(segments, i)):
                break
            used += len(w)
            whole += 1
        if final:
            return whole, self.buffer.size
        end = min(int(segments[whole - 1].end * self.spec.sampling_rate), self.buffer.size) if whole else 0
        return whole, end

    def _settle(self, segments: list[Segment], words: list[list[int]], final: bool) -> None:
        """Move the wholly committed segments to `done` and cut the buffer at the last one's end (at the
        end of the stream, or when the buffer must make room, all of it)."""
        whole, end = self._whole(segments, words, len(self.pending), final)
        if end <= 0:  # nothing to cut: the same audio is heard again, its committed text forced
            return
        if final and whole == 0 and self.pending:  # no segment in the last hypothesis: the committed text is one
            duration = self.buffer.size / self.spec.sampling_rate
            self.done.append(Segment(self.offset, self.offset + duration, self._text(self.pending), ()))
        at = 0
        for i, (s, w) in enumerate(zip(segments[:whole], words[:whole])):
            # the committed tokens; at the end the last segment takes the rest
            upto = len(self.pending) if final and i == whole - 1 else at + len(w)
            self.done.append(
                Segment(self.offset + s.start, self.offset + s.end, self._text(self.pending[at:upto]), s.tokens)
            )
            at = upto
        if final:
            at = len(self.pending)
        keep = self.longform.t.max_target_positions // 2  # all a window's prompt reads: memory stays flat
        self.context = (self.context + self.pending[:at])[-keep:]
        self.lead = max(segments[whole].start - end / self.spec.sampling_rate, 0.0) if whole < len(segments) else 0.0
        self.buffer = self.buffer[end:].copy()
        self.offset += end / self.spec.sampling_rate
        self.pending = self.pending[at:]

    def feed(self, chunks: Iterable[np.ndarray]) -> Iterator[LiveUpdate]:
        """Updates as the chunks arrive: one per `step_s` of new audio, and a final one."""
        fresh = 0
        for chunk in chunks:
            chunk = np.asarray(chunk, np.float32)
            if chunk.ndim != 1:
                raise InputError(f"audio chunks must be 1-D arrays of samples, got shape {chunk.shape}")
            while chunk.size:  # in pieces that end where a step does
                piece, chunk = chunk[: self.step - fresh], chunk[self.step - fresh :]
                if self.buffer.size and self.buffer.size + piece.size > self.spec.n_samples:
                    self.carry += self._pass(False, piece.size)
                self.buffer = np.concatenate([self.buffer, piece])
                self.received += piece.size
                fresh += piece.size
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
