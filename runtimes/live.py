"""Live transcription of audio as it arrives, text committed by local agreement and never rewritten.

The stream keeps long-form's windows (`longform.py`): its buffer starts where long-form's window
starts, and each window is settled exactly as long-form settles it. In between, every `step_s` of
new audio, the buffer is decoded as that window with the same rule (`LongForm.window`: the same
earlier-text conditioning and fallbacks), continuing the tokens already committed in it (OpenAI's
decoding `prefix`); the longest common text prefix of this hypothesis and the previous one, past
what is committed, is committed (LocalAgreement-2, Macháček et al., "Turning Whisper into Real-Time
Transcription System", 2023) once `commit_delay_s` of audio follows it (its end read from the
hypothesis' timestamps). Once the buffer holds a whole window, it
is decoded once more continuing the committed tokens, its complete segments are committed, and the
buffer is cut where long-form's next window starts (the last complete segment's end). Greedy
decoding continuing its own tokens decodes what it would have decoded without them, so wherever
the agreed tokens are what the whole window says, the committed text is long-form's text.

Which it is not, often enough: tiny.en reads a word differently with 20 s of audio after it than
with the whole 30 s window ("as high magic" / "as a magic"), and a word committed otherwise is
copied on through the window. The delay trades latency for agreement (BENCHMARKS.md "commit
delay"): 0 s commits as soon as two hypotheses agree; the default, 30 s (a whole window of the
real checkpoints), commits only settled windows, so the committed text is long-form's and only
`partial` runs ahead of it.

With a VAD (`TranscribeConfig(vad=...)`), only speech enters the buffer, and at each endpoint the
VAD finds (`min_silence_s` of silence after speech) that pause counts as audio after the words heard:
the words it lets the commit delay through are committed there, agreed or not (no more of that
speech is to come). At a delay up to the pause (2 s) that is all the buffer says: a speaker who
pauses gets the text of what they said rather than wait for a whole window of speech; at the
default (a whole window; the pause is counted up to the window's end only) nothing commits early
and the text stays long-form's. The window is not cut there (its tokens are continued, as agreed
ones are), so the windows stay long-form's; but a word read before the rest of its window is heard
may read otherwise ("Activity that refreshes" read from its 3 s alone: "Activity, not regression"),
measured in BENCHMARKS.md ("commit delay at pauses"). Cutting the window at each endpoint instead
(each utterance decoded on its own) read further from long-form still: 14.1 WER points against 5.1
on the first 60 s of that file (int8 pi5, one run each).

    chunks ─► buffer [seek, now) ─► every step_s: hypothesis ─► LCP(previous, hypothesis) beyond committed ─► committed
                 ▲                   buffer = a whole window: its complete segments ─► committed ─┐
                 └──────────── cut where long-form's next window starts (seek += advance) ◄───────┘

Memory and each step's work stay flat however long the stream runs: the buffer never outgrows one
window (and the 20 ms its last frames read), the earlier text kept is what a window's prompt reads.

Example:
    >>> for update in transcribe_stream(pipe, microphone_chunks()):   # doctest: +SKIP
    ...     print(update.committed, end="", flush=True)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from edgemfm.arguments import number
from edgemfm.errors import InputError
from edgemfm.runtimes.longform import LongForm, Segment, TranscribeConfig, without_closing_pair
from edgemfm.runtimes.mel_windows import ArraySource, MelWindows
from edgemfm.runtimes.vad import Gate

# seconds of audio after an agreed word before it is committed: at least a window's, only settled windows commit
# (long-form's text); the measured trade in BENCHMARKS.md "commit delay"
COMMIT_DELAY_S = 30.0
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


def _through(tokens: list[int], texts: int, ts: int) -> int:
    """How many of `tokens` run through their first `texts` text tokens (the timestamps between them included)."""
    if texts == 0:
        return 0
    seen = 0
    for i, token in enumerate(tokens):
        seen += token < ts
        if seen == texts:
            return i + 1
    raise AssertionError(f"{texts} text tokens asked of {seen}")


def word_ends(tokens: list[int], ts: int, precision: float, heard: float) -> list[float]:
    """Each text token's end in its window (seconds), spread evenly over its segment: from the timestamp before it
    to the one after it, or to `heard` (the audio the window holds) in a segment still open.

    Example:
        >>> word_ends([100, 1, 2, 150, 150, 3], ts=100, precision=0.02, heard=1.5)
        [0.5, 1.0, 1.5]
    """
    ends: list[float] = []
    start, run = 0.0, 0
    for token in [*tokens, None]:
        if token is not None and token < ts:
            run += 1
            continue
        stop = heard if token is None else (token - ts) * precision
        ends += [start + (stop - start) * (i + 1) / run for i in range(run)]
        start, run = stop, 0
    return ends


class _Recent:
    """The last samples of a stream of `length`, from its sample `first`, read by the stream's sample numbers."""

    def __init__(self, samples: np.ndarray, first: int, length: int):
        self.samples, self.first, self.length = samples, first, length

    def read(self, start: int, stop: int) -> np.ndarray:
        start, stop = max(start, 0), min(stop, self.length)
        assert start >= self.first or start >= stop, f"sample {start} is gone (kept from {self.first})"
        return self.samples[start - self.first : stop - self.first]


class Live:
    """The state of one live stream: the window's audio, the tokens committed in it, the last hypothesis."""

    def __init__(self, pipe: Any, config: TranscribeConfig, step_s: float, commit_delay_s: float = COMMIT_DELAY_S):
        self.pipe, self.config, self.spec = pipe, config, pipe.manifest.preprocess.audio
        self.delay = commit_delay_s  # seconds of audio an agreed word waits for after it before it is committed
        self.longform = LongForm(pipe, config)
        self.step = max(1, int(step_s * self.spec.sampling_rate))
        self.ts = pipe.manifest.generation.transcription.no_timestamps + 1
        hop = self.spec.hop_length
        # whole hops of audio kept before the window: its first frames see the samples long-form's do
        self.margin = math.ceil(self.spec.n_fft / 2 / hop) * hop
        self.audio = np.zeros(0, np.float32)  # the margin kept, then the buffer
        self.start = 0  # the buffer's first sample in `audio` (past its end while audio long-form skips is to come)
        self.top = -np.inf  # the loudest log-mel frame so far: the floor long-form takes from the whole recording
        self.offset = 0.0  # stream seconds at the buffer's first sample
        self.received = 0  # samples
        self.done: list[Segment] = []  # segments of the settled windows, in stream time
        self.earlier: list[list[int]] = []  # their tokens, as much as a window's prompt reads
        self.condition = config.condition_on_previous  # whether the window reads them (long-form's rule)
        self.pending: list[int] = []  # tokens committed in the buffer, timestamps included
        self.previous: list[int] = []  # the last hypothesis' text tokens past `pending`
        self.carry = ""  # text committed by windows settled since the last update
        self.fresh = 0  # samples taken since the last update
        self.taken = 0  # samples taken into the stream (of speech, with a VAD)
        self.loud = 0  # the first frame whose loudness is not taken in yet
        self.tail = np.zeros(0, np.float32)  # the stream's last samples, which those frames read
        # with a VAD, only speech enters the buffer (`vad.py`): silence is never encoded nor decoded
        self.gate = Gate(config.vad, self.spec.sampling_rate) if config.vad else None

    @property
    def frames(self) -> int:
        """Mel frames in the buffer."""
        return max(self.audio.size - self.start, 0) // self.spec.hop_length

    def _loudest(self, chunk: np.ndarray, final: bool = False) -> None:
        """Take in the loudness of the frames the stream's samples so far complete, framed as long-form frames the
        whole recording: on its hop grid, reflected at its start only (and at its end, once `final`). A chunk framed
        alone, reflected at its own edges, can be louder than the recording ever is, and with it the floor."""
        hop, half = self.spec.hop_length, self.spec.n_fft // 2
        x, first = np.concatenate([self.tail, chunk]), self.taken - self.tail.size  # x[0]: the stream's sample `first`
        self.taken += chunk.size
        last = self.taken // hop if final else (self.taken - half) // hop + 1  # frames [loud, last) are complete
        if last > self.loud and self.taken >= hop:
            mel = MelWindows(_Recent(x, first, self.taken), self.spec, top=0.0)
            self.top = max(self.top, mel.loudest(self.loud, last))
            self.loud = last
        self.tail = x[-(2 * half + 2 * hop) :]  # what the frames not complete yet read

    def _decode(self) -> tuple[list[int], float, int]:
        """The buffer decoded as long-form decodes its window, continuing the committed tokens; the frames it held."""
        end = self.start + self.spec.n_samples + self.margin  # the window and the samples its last frames read
        mel = MelWindows(ArraySource(self.audio[:end]), self.spec, top=self.top)
        seek = self.start // self.spec.hop_length
        tokens, temperature = self.longform.window(mel, seek, self.earlier, self.condition, tuple(self.pending))
        return tokens, temperature, min(self.frames, mel.window_frames)

    def _text(self, tokens: list[int]) -> str:
        return self.pipe.tokenizer.decode([t for t in tokens if t < self.ts], skip_special_tokens=True)

    def _agree(self, endpoint: bool = False) -> str:
        """One hypothesis: commit the text it and the previous one agree on past the committed tokens, as far as
        `delay` seconds of audio follow it (at a VAD endpoint: as far as the pause lets it, agreed or not: no more of
        that speech is to come)."""
        tokens, _, n = self._decode()
        new = tokens[len(self.pending) :]
        text = [t for t in new if t < self.ts]
        followed = self._followed(tokens, n, endpoint)
        agreed = followed if endpoint else min(_common(text, self.previous), followed)
        committed = new[: _through(new, agreed, self.ts)]
        self.pending += committed
        self.previous = text[agreed:]
        return self._text(committed)

    def _followed(self, tokens: list[int], frames: int, endpoint: bool = False) -> int:
        """How many text tokens past the committed ones end at least `delay` seconds before the audio heard after
        them ends: a word read from little audio after it may read otherwise once the whole window is heard. That
        audio is the buffer's, and at a VAD endpoint the pause too (`_pause`)."""
        heard = frames * self.spec.hop_length / self.spec.sampling_rate
        spoken, horizon = self._pause(heard) if endpoint else (heard, heard)
        ends = word_ends(tokens, self.ts, self.longform.t.time_precision, spoken)
        # at an endpoint no word ends after the speech did (the random timestamps of a bad reading included)
        ends = [min(end, spoken) for end in ends] if endpoint else ends
        ends = ends[sum(t < self.ts for t in self.pending) :]
        return next((i for i, end in enumerate(ends) if end > horizon - self.delay), len(ends))

    def _pause(self, heard: float) -> tuple[float, float]:
        """At a VAD endpoint: where the speech in the buffer ended (the buffer ends with the `pad_s` of silence the
        VAD keeps) and where the audio after it ends: `min_silence_s` of silence followed the speech, counted up to
        the window's end only (long-form reads nothing past it with these words, so a delay of a whole window, the
        default, commits nothing early and the text stays long-form's)."""
        vad = self.config.vad
        spoken = max(heard - vad.pad_s, 0.0)
        return spoken, min(spoken + vad.min_silence_s, self.spec.n_samples / self.spec.sampling_rate)

    def _settle(self) -> str:
        """Decode the window once more and commit its complete segments (long-form's rule); cut the buffer where
        long-form's next window starts. Tokens committed past that point start the next window's."""
        tokens, temperature, n = self._decode()
        found, advance = self.longform.split(tokens, 0, n)
        used = sum(len(s.tokens) for s in found)
        text = self._text(tokens[len(self.pending) : used])
        for s in found:
            self.done.append(dataclasses.replace(s, start=self.offset + s.start, end=self.offset + s.end))
            self.earlier.append(without_closing_pair(s.tokens, self.ts))
        # memory stays flat: drop the oldest segments no window reads any more (long-form's prompt keeps the last
        # `context` tokens of them all)
        while sum(map(len, self.earlier[1:])) >= self.longform.context:
            self.earlier.pop(0)
        carried = self.pending[used:]  # committed words of the segment long-form reads again from the cut
        self.previous = [t for t in tokens[max(used, len(self.pending)) :] if t < self.ts]
        # that segment's start (the last timestamp pair's second) in the next window, which starts at the pair's first
        start = tokens[used - 1] - advance // self.longform.t.frames_per_position if carried else 0
        self.pending = [start, *carried] if carried else []
        self.condition = self.config.condition_on_previous and temperature < 0.5
        cut = (advance or n) * self.spec.hop_length  # as long-form's, even past the window (never stuck on it)
        self.start += cut
        self.offset += cut / self.spec.sampling_rate
        self._trim()
        return text

    def _trim(self) -> None:
        """Drop the audio before the buffer but the margin its first frames read (and, where long-form's next window
        starts past what was heard, the audio to come before it, as it comes)."""
        drop = min(max(self.start - self.margin, 0), self.audio.size)
        if drop:
            self.audio, self.start = self.audio[drop:].copy(), self.start - drop

    def update(self, final: bool = False, endpoint: bool = False) -> LiveUpdate:
        """Decode the buffer again and commit what two hypotheses in a row agree on (at a VAD endpoint: what the
        pause lets through; at the end: settle every window left, as long-form would)."""
        if final:
            self._loudest(np.zeros(0, np.float32), final=True)
            text = ""
            while self.frames:
                text += self._settle()
            self.previous = []
        else:
            text = self._agree(endpoint) if self.frames else ""
        text, self.carry = self.carry + text, ""
        return LiveUpdate(
            committed=text,
            partial=self.pipe.tokenizer.decode(self.previous, skip_special_tokens=True),
            audio_s=self.received / self.spec.sampling_rate,
            segments=tuple(map(self.gate.timeline.segment, self.done) if self.gate else self.done),
        )

    def feed(self, chunks: Iterable[np.ndarray]) -> Iterator[LiveUpdate]:
        """Updates as the chunks arrive: one per `step_s` of new audio (of speech, with a VAD), and a final one."""
        for chunk in chunks:
            chunk = np.asarray(chunk, np.float32)
            if chunk.ndim != 1:
                raise InputError(f"audio chunks must be 1-D arrays of samples, got shape {chunk.shape}")
            if self.gate is None:
                yield from self._take(chunk)
                continue
            self.received += chunk.size
            for _, speech in self.gate.feed(chunk):
                yield from self._take(speech) if speech is not None else self._endpoint()
        for _, speech in self.gate.flush() if self.gate else ():
            yield from self._take(speech)
        yield self.update(final=True)

    def _endpoint(self) -> Iterator[LiveUpdate]:
        """The speaker paused (the VAD's endpoint: `min_silence_s` of silence after speech): the pause counts as audio
        after the words heard, so the words it lets the commit delay through are committed now, without waiting for
        two hypotheses to agree and more speech to follow (at a delay up to the pause: all the buffer says). Where
        the delay lets nothing through, nothing is decoded and the stream waits as without endpoints."""
        heard = self.frames * self.spec.hop_length / self.spec.sampling_rate
        if self.frames and self._pause(heard)[1] > self.delay:
            self.fresh = 0  # the next update comes a whole step into the next region
            yield self.update(endpoint=True)

    def _take(self, chunk: np.ndarray) -> Iterator[LiveUpdate]:
        """Append samples to the buffer, settling each whole window and updating every step."""
        self._loudest(chunk)
        while chunk.size:  # in pieces that end where a step does, or where the buffer holds a whole window
            whole = self.spec.n_samples + self.margin  # and the samples its last frames read
            size = min(self.step - self.fresh, whole - (self.audio.size - self.start))
            piece, chunk = chunk[:size], chunk[size:]
            self.audio = np.concatenate([self.audio, piece])
            self.received += 0 if self.gate else piece.size  # with a VAD, the chunk's samples as it arrives
            self._trim()
            self.fresh += piece.size
            if self.audio.size - self.start == whole:
                self.carry += self._settle()
            if self.fresh >= self.step:
                self.fresh = 0
                yield self.update()


def transcribe_stream(
    pipe: Any,
    chunks: Iterable[np.ndarray],
    config: TranscribeConfig | None = None,
    step_s: float = 1.0,
    commit_delay_s: float = COMMIT_DELAY_S,
) -> Iterator[LiveUpdate]:
    """Live updates from chunks of float samples at the model's rate (a microphone, a socket, a file read in pieces);
    an agreed word is committed once `commit_delay_s` seconds of audio follow it.

    Example:
        >>> text = "".join(u.committed for u in transcribe_stream(pipe, chunks, commit_delay_s=8))   # doctest: +SKIP
    """
    delay = number("commit_delay_s", commit_delay_s, low=0)
    return Live(pipe, config or TranscribeConfig(), step_s, delay).feed(chunks)
