"""Transcription of any length: Whisper's sequential long-form rule over windows read as needed.

Each window of the recording's log-mel (`mel_windows.py`) is encoded once, then decoded with
timestamp tokens: text sits between pairs of timestamps, and where the window ends in the middle
of a segment, the next window starts at the last complete segment's end timestamp, so no word is
cut at a window's edge. The rules are OpenAI's, as `WhisperForConditionalGeneration.generate
(return_timestamps=True)` implements them (checked token for token in tests):

    window [seek, seek + 30 s) ─► audio_encoder ─► cross-attention K/V
      ─► decoder: [<|startofprev|> earlier text] <|startoftranscript|> ─► <|t0|> text <|t1|><|t1|> text <|t2|> ...
      ─► segments; seek += the last pair's timestamp (or the whole window when it ends on one timestamp)

With `temperatures` beyond the first, a window whose tokens compress too well (repetition) or
whose mean log-probability is too low is decoded again at the next temperature. A greedy decode caught in a
loop (`loop_period`) is completed rather than run to the window's token limit, and a sampled one is cut where
a next temperature is left to try. Memory stays flat:
one window of samples, one of features and one decoder cache at a time.

Example:
    >>> for s in transcribe(pipe, "meeting.wav"):                 # doctest: +SKIP
    ...     print(f"[{s.start:.2f} → {s.end:.2f}] {s.text}")
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgemfm.errors import InputError
from edgemfm.manifest import Transcription
from edgemfm.runtimes.decoding import Sampler, logprob
from edgemfm.runtimes.mel_windows import MelWindows, source_of
from edgemfm.runtimes.vad import GatedSource, VadConfig


@dataclass(frozen=True)
class TranscribeConfig:
    """How a recording is transcribed window by window (defaults: transformers' `generate`, greedy)."""

    prompt: str = ""  # earlier text the first window reads after <|startofprev|> (names, spelling)
    condition_on_previous: bool = False  # each window reads the text before it (OpenAI's default: True)
    temperatures: tuple[float, ...] = (0.0,)  # the fallback ladder: (0.0, 0.2, 0.4, 0.6, 0.8, 1.0) in OpenAI's
    compression_ratio_threshold: float | None = None  # 2.4 in OpenAI's: above it a window repeats itself
    logprob_threshold: float | None = None  # -1.0 in OpenAI's: below this mean log-probability, retry
    seed: int = 0  # of the sampling at temperatures above 0
    vad: VadConfig | None = None  # only speech is transcribed (silero VAD, `vad.py`); None: all of the audio


FALLBACK = TranscribeConfig(
    temperatures=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0), compression_ratio_threshold=2.4, logprob_threshold=-1.0
)  # OpenAI's fallback settings, as `edgemfm run --fallback` applies them


@dataclass(frozen=True)
class Segment:
    """A stretch of speech between two timestamps."""

    start: float  # seconds from the recording's start
    end: float
    text: str
    tokens: tuple[int, ...]  # with the timestamp tokens, as transformers returns them


def _processed(logits: np.ndarray, tokens: list[int], g: Any, t: Transcription, eos: int) -> np.ndarray:
    """The scores a token is chosen from: suppressed tokens, then the timestamp rules (transformers'
    SuppressTokensAtBegin, SuppressTokens and WhisperTimeStamp logits processors, in that order)."""
    ts = t.no_timestamps + 1
    x = logits.astype(np.float64)  # the one copy of the vocabulary per step: everything below is in place
    x[list(g.suppress_tokens + (g.begin_suppress_tokens if not tokens else ()))] = -np.inf
    x[t.no_timestamps] = -np.inf
    last = len(tokens) >= 1 and tokens[-1] >= ts
    penultimate = len(tokens) < 2 or tokens[-2] >= ts
    if last:
        if penultimate:
            x[ts:] = -np.inf  # a pair of timestamps is followed by text
        else:
            x[:eos] = -np.inf  # a single timestamp is followed by another, or the end
    latest = next((token for token in reversed(tokens) if token >= ts), None)
    if latest is not None:  # timestamps never go back (nor repeat, but to close a segment)
        x[ts : latest + (0 if last and not penultimate else 1)] = -np.inf
    if not tokens:  # a window starts with a timestamp, within the first `max_initial_timestamp` steps
        x[:ts] = -np.inf
        if t.max_initial_timestamp is not None:
            x[ts + t.max_initial_timestamp + 1 :] = -np.inf
    # The timestamps together outweigh any single text token: compared as log-probabilities, whose
    # shared normalizer cancels, so the whole vocabulary's softmax is never computed.
    stamps, top = x[ts:], x[ts:].max()
    if top > -np.inf and top + np.log(np.exp(stamps - top).sum()) > x[:ts].max():
        x[:ts] = -np.inf
    return x


LOOP_SPAN = 48  # text tokens a greedy decode repeats before it is taken to repeat them to the window's limit
LOOP_PERIOD = 32  # the longest repeated phrase looked for, in tokens


def loop_period(tokens: list[int], ts: int, span: int = LOOP_SPAN, longest: int = LOOP_PERIOD) -> int | None:
    """The period of a greedy decode's loop: its last `span` tokens, all text, equal the `span` tokens `period`
    before them (for the shortest period up to `longest`), else None.

    Greedy decoding that has repeated a phrase this long goes on repeating it, without a timestamp, until the
    window's token limit (Whisper's hallucination loop; the temperature fallback exists for it): the decode
    stops there and completes the loop instead of running hundreds of decoder steps whose tokens are known.

    Example:
        >>> loop_period([1, 2] + [7, 8, 9] * 20, ts=100)
        3
        >>> loop_period(list(range(60)), ts=100) is None
        True
    """
    if len(tokens) <= span or tokens[-1] >= ts:
        return None
    tail = tokens[-span:]
    if any(tok >= ts for tok in tail):
        return None
    return next((p for p in range(1, min(longest, len(tokens) - span) + 1) if tokens[-span - p : -p] == tail), None)


def _repeat(items: list, period: int, length: int) -> None:
    """Continue `items`' last `period` entries cyclically until it holds `length`."""
    while len(items) < length:
        items.append(items[-period])


def compression_ratio(tokens: list[int], vocab_size: int) -> float:
    """Bytes of the tokens over their zlib-compressed bytes (transformers' measure): high means repetition.

    Example:
        >>> round(compression_ratio([5] * 100, 1000), 1) > 2.4
        True
    """
    width = int(math.log2(vocab_size) / 8) + 1
    raw = b"".join(t.to_bytes(width, "little") for t in tokens)
    return len(raw) / len(zlib.compress(raw))


class LongForm:
    """One recording transcribed window by window with a pipeline's sessions."""

    def __init__(self, pipe: Any, config: TranscribeConfig):
        t = pipe.manifest.generation.transcription
        if t is None:
            raise InputError(
                "this bundle has no timestamp tokens, so it transcribes one window per call; "
                "allowed: a Whisper bundle exported from a checkpoint with <|notimestamps|> and its timestamps"
            )
        if config.prompt.strip() and t.previous is None:
            raise InputError(f"this bundle takes no text prompt (no <|startofprev|>); got {config.prompt!r}")
        self.pipe, self.config, self.t = pipe, config, t
        self.eos = pipe.manifest.tokenizer.eos_token_ids[0]
        self.vocab = pipe.tokenizer.get_vocab_size()
        cross = pipe.manifest.components[pipe.manifest.generation.decoder].cross_attention
        self.cross, self.encoder = cross, pipe.sessions[cross.encoder]
        words = pipe.tokenizer.encode(" " + config.prompt.strip(), add_special_tokens=False).ids
        self.prompt = words if config.prompt.strip() else None

    @property
    def context(self) -> int:
        """Earlier text tokens a window reads at most: half the decoder's positions, as OpenAI's."""
        return self.t.max_target_positions // 2 - 1

    def _prefix(self, earlier: list[list[int]], condition: bool) -> list[int]:
        """A window's decoder prompt: earlier text after <|startofprev|> (when asked for), then the start."""
        if condition and (earlier or self.prompt):
            kept = [tok for seg in ([self.prompt] if self.prompt else []) + earlier for tok in seg]
            return [self.t.previous, *kept[-self.context :], *self.t.start]
        if self.prompt:
            return [self.t.previous, *self.prompt, *self.t.start]
        return list(self.t.start)

    def _decode(
        self,
        fixed: dict[str, np.ndarray],
        prefix: list[int],
        sampler: Sampler,
        forced: tuple[int, ...] = (),
        cut_loops: bool = True,
    ) -> tuple[list[int], float]:
        """Tokens of one window (`forced` first, with the end token, if reached) and the mean log-probability of
        those chosen (0 unless judged). With `cut_loops`, a loop (`loop_period`) is completed, not decoded."""
        decoder, g = self.pipe.decoder, self.pipe.manifest.generation
        cache = decoder.new_cache()
        cache.fixed = fixed
        logits = decoder.run(cache, decoder.embed_ids([*prefix, *forced]))[-1]
        tokens: list[int] = list(forced)
        scores_of: list[float] = []  # each chosen token's log-probability, only when judged (a softmax per token)
        scored, ts = self.config.logprob_threshold is not None, self.t.no_timestamps + 1
        length, looked = self.t.max_target_positions - len(prefix), len(forced) + LOOP_SPAN + LOOP_PERIOD
        while len(tokens) < length:
            scores = _processed(logits, tokens, g, self.t, self.eos)
            token = sampler(scores)
            scores_of += [logprob(scores, token)] if scored else []
            tokens.append(token)
            if token == self.eos:
                break
            # a loop is looked for among the decoded tokens only (never the forced ones): their scores are repeated too
            if cut_loops and len(tokens) >= looked and (period := loop_period(tokens, ts)):
                _repeat(tokens, period, length)
                _repeat(scores_of, period, length - len(forced) if scored else 0)
                break
            logits = decoder.run(cache, decoder.embed_ids([token]))[-1]
        return tokens, sum(scores_of) / max(len(tokens) - len(forced), 1)

    def _fallback(
        self, fixed: dict[str, np.ndarray], prefix: list[int], forced: tuple[int, ...] = ()
    ) -> tuple[list[int], float]:
        """The first temperature's tokens that pass the checks (or the last temperature's)."""
        c = self.config
        for i, temperature in enumerate(c.temperatures):
            # Greedy decoding repeats a loop to the limit, so completing it is exact (as far as loops go on);
            # sampling might leave one, but a loop at a temperature with a next one to try fails the compression
            # check either way: only the last temperature's tokens, kept whatever they are, decode to the end.
            cut = temperature == 0 or (i < len(c.temperatures) - 1 and c.compression_ratio_threshold is not None)
            tokens, mean = self._decode(fixed, prefix, Sampler(temperature, seed=c.seed + i), forced, cut)
            repeats = c.compression_ratio_threshold is not None and (
                compression_ratio(tokens, self.vocab) > c.compression_ratio_threshold
            )
            unsure = c.logprob_threshold is not None and mean < c.logprob_threshold
            if not (repeats or unsure):
                break
        return tokens, temperature

    def segments(self, mel: MelWindows) -> Iterator[Segment]:
        """The recording's segments, window by window."""
        seek, earlier, condition = 0, [], self.config.condition_on_previous
        while seek < mel.frames:
            n = min(mel.frames - seek, mel.window_frames)
            tokens, temperature = self.window(mel, seek, earlier, condition)
            found, advance = self.split(tokens, seek, n)
            for segment in found:
                earlier.append(without_closing_pair(segment.tokens, self.t.no_timestamps + 1))
                yield segment
            seek += advance
            condition = self.config.condition_on_previous and temperature < 0.5

    def window(
        self, mel: MelWindows, seek: int, earlier: list[list[int]], condition: bool, forced: tuple[int, ...] = ()
    ) -> tuple[list[int], float]:
        """Tokens (timestamps included, no end token) of the window at frame `seek`, read after the `earlier`
        segments' tokens when `condition` (or the prompt), continuing `forced` (OpenAI's decoding `prefix`), and the
        temperature that gave them: the one decoding rule of long-form and of a live stream's hypotheses (`live.py`).

        Example:
            >>> longform.window(mel, 0, earlier=[], condition=False)   # doctest: +SKIP
            ([50363, 383, 3797, 50414], 0.0)
        """
        n = min(mel.frames - seek, mel.window_frames)
        out = self.encoder.run({self.cross.input: mel.window(seek, n)[None]})
        fixed = {name: out[name] for name in self.cross.outputs}
        tokens, temperature = self._fallback(fixed, self._prefix(earlier, condition), forced)
        return (tokens[:-1] if tokens and tokens[-1] == self.eos else tokens), temperature

    def split(self, tokens: list[int], seek: int, n: int) -> tuple[list[Segment], int]:
        """Segments of a window's tokens and the frames to advance (transformers' `_retrieve_segment`)."""
        ts, step, audio = self.t.no_timestamps + 1, self.t.time_precision, self.pipe.manifest.preprocess.audio
        frame_s = audio.hop_length / audio.sampling_rate
        offset = seek * frame_s
        stamp = [tok >= ts for tok in tokens]
        single_end = stamp[-2:] == [False, True]
        cuts = [i + 1 for i in range(len(stamp) - 1) if stamp[i] and stamp[i + 1]]
        if not cuts:  # one segment: to its last timestamp, or the window's end
            stamps = [tok for tok in tokens if tok >= ts]
            end = stamps[-1] - ts if stamps and stamps[-1] != ts else int(n * frame_s / step)
            return [self._segment(tokens, offset, offset + end * step)], n
        if single_end:
            cuts.append(len(tokens))
        else:
            cuts[-1] += 1  # the last segment keeps both closing timestamps
        found, last = [], 0
        for i, cut in enumerate(cuts):
            piece = tokens[last:cut]
            close = piece[-1] if i < len(cuts) - 1 or single_end else piece[-2]
            found.append(self._segment(piece, offset + (piece[0] - ts) * step, offset + (close - ts) * step))
            last = cut
        advance = n if single_end else (tokens[last - 2] - ts) * self.t.frames_per_position
        return found, advance

    def _segment(self, tokens: list[int], start: float, end: float) -> Segment:
        ts = self.t.no_timestamps + 1
        text = self.pipe.tokenizer.decode([tok for tok in tokens if tok < ts], skip_special_tokens=True)
        return Segment(round(start, 3), round(end, 3), text, tuple(tokens))


def without_closing_pair(tokens: tuple[int, ...], ts: int) -> list[int]:
    """A segment's tokens as later windows read them: one closing timestamp, not two (transformers #35750)."""
    return list(tokens[:-1]) if len(tokens) > 2 and tokens[-2] >= ts else list(tokens)


def transcribe(pipe: Any, audio: Any, config: TranscribeConfig | None = None) -> Iterator[Segment]:
    """Segments of a recording of any length (a WAV path or 1-D float samples at the model's rate).

    Example:
        >>> [s.text for s in transcribe(pipe, "talk.wav", TranscribeConfig(condition_on_previous=True))]  # doctest: +SKIP
        [' Good morning.', ' Today we look at ...']
    """
    config = config or TranscribeConfig()
    longform, spec = LongForm(pipe, config), pipe.manifest.preprocess.audio
    source = source_of(audio, spec)
    if config.vad is None:
        return longform.segments(MelWindows(source, spec))
    # the speech joined, in windows packed with it: silences are never encoded nor decoded (faster-whisper's vad_filter)
    speech = GatedSource(source, config.vad)
    if speech.length < spec.hop_length:
        return iter(())
    return map(speech.timeline.segment, longform.segments(MelWindows(speech, spec)))
