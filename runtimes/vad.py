"""Voice-activity gating: only speech goes through the encoder, timestamps stay on the recording's timeline.

Silero VAD (the `silero-vad` wheel's real weights, its torch-free sequence ONNX model, run with
onnxruntime) gives each 32 ms frame a speech probability; the rule that turns those into regions
is silero's `get_speech_timestamps` with faster-whisper's `vad_filter` settings (speech starts at
`threshold`, ends after `min_silence_s` below `threshold - 0.15`, `pad_s` kept either side), applied
as the frames arrive, so a live stream and a file are gated alike. What it drops is the silence
between regions; the kept pieces are joined, so long-form packs speech into its windows (as
faster-whisper does) and a live stream decodes nothing while nobody speaks. `Timeline` maps the
joined audio's seconds back to the recording's.

    frames ─► silero p ─► speaking? ──yes──► kept (and the `pad_s` held before it)
                              └─ silent `min_silence_s` ─► dropped but the `pad_s` after the speech

Example:
    >>> for s in pipe.transcribe("meeting.wav", TranscribeConfig(vad=VadConfig())):   # doctest: +SKIP
    ...     print(f"[{s.start:.1f} → {s.end:.1f}]{s.text}")
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgemfm.arguments import number
from edgemfm.errors import InputError

RATE = 16000  # the sequence model's one sampling rate
FRAME = 512  # samples the model scores at a time (32 ms)
CONTEXT = 64  # samples of the frame before that each frame is scored with (silero's streaming context)
BLOCK = 512  # frames per model call (16 s): one call, not a Python loop per frame
MODEL_FILE = "silero_vad_16k_sequence.onnx"
INSTALL = "pip install --no-deps silero-vad==6.2.3"  # --no-deps: the wheel's ONNX files need no torch


@dataclass(frozen=True)
class VadConfig:
    """Which audio counts as speech (defaults: faster-whisper's `vad_filter`)."""

    model: str = ""  # silero-vad's sequence ONNX file; "": the one the installed silero-vad wheel ships
    threshold: float = 0.5  # speech probability at which a region starts
    min_silence_s: float = 2.0  # a quieter stretch at least this long ends a region; shorter ones are kept whole
    pad_s: float = 0.4  # audio kept before and after each region (word onsets and tails the model scores low)

    def __post_init__(self) -> None:
        number("VAD threshold", self.threshold, low=0, high=1, above=True)
        number("VAD pad_s", self.pad_s, low=0)
        # the padding after one region and before the next both fit in a dropped silence
        number("VAD min_silence_s", self.min_silence_s, low=2 * self.pad_s)


def model_path(config: VadConfig) -> Path:
    """The VAD model file: the config's, or the silero-vad wheel's (found without importing it: it imports torch).

    Example:
        >>> model_path(VadConfig()).name   # doctest: +SKIP
        'silero_vad_16k_sequence.onnx'
    """
    if config.model:
        path = Path(config.model)
    else:
        spec = importlib.util.find_spec("silero_vad")
        if spec is None or not spec.submodule_search_locations:
            raise InputError(f"voice-activity gating needs silero-vad's model; install it: {INSTALL}")
        path = Path(next(iter(spec.submodule_search_locations))) / "data" / MODEL_FILE
    if not path.is_file():
        raise InputError(f"VAD model {str(path)!r} not found; allowed: silero-vad's {MODEL_FILE} ({INSTALL})")
    return path


class Silero:
    """Silero VAD's speech probabilities of a stream's whole frames, state carried from call to call."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1  # a small model: threads cost more
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidProtobuf) as e:
            reason = str(e).splitlines()[0][:120]
            raise InputError(
                f"VAD model {str(path)!r} is not an ONNX model ({reason}); allowed: {MODEL_FILE}"
            ) from None
        names = sorted(i.name for i in self.session.get_inputs())
        if names != ["c", "h", "input"]:
            raise InputError(f"VAD model {str(path)!r} takes inputs {names}; allowed: {MODEL_FILE} (c, h, input)")
        self.h = self.c = np.zeros((1, 1, 128), np.float32)
        self.context = np.zeros(CONTEXT, np.float32)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """Probabilities of `frames` [n, FRAME], the stream's next frames."""
        probs = []
        for i in range(0, len(frames), BLOCK):
            block = frames[i : i + BLOCK]
            before = np.concatenate([self.context[None], block[:-1, -CONTEXT:]])
            p, self.h, self.c = self.session.run(
                ["speech_probs", "hn", "cn"], {"input": np.concatenate([before, block], 1), "h": self.h, "c": self.c}
            )
            self.context = block[-1, -CONTEXT:].copy()
            probs.append(p.reshape(-1))
        return np.concatenate(probs) if probs else np.zeros(0, np.float32)


class Timeline:
    """Where the joined pieces of kept audio lie on the recording's timeline.

    Example:
        >>> t = Timeline(16000); t.add(0, 16000); t.add(16000, 80000)   # the recording's 1-2 s kept, then from 5 s
        >>> t.original(1.5), t.original(1.0, end=True), t.original(1.0)
        (5.5, 2.0, 5.0)
    """

    def __init__(self, rate: int):
        self.rate = rate
        self.joined: list[int] = []  # each piece's first sample in the joined audio
        self.at: list[int] = []  # and in the recording

    def add(self, joined: int, original: int) -> None:
        """A piece starting at sample `joined` of the joined audio is the recording's from sample `original`."""
        if self.joined and original - self.at[-1] == joined - self.joined[-1]:
            return  # continues the last piece
        self.joined.append(joined)
        self.at.append(original)

    def original(self, seconds: float, end: bool = False) -> float:
        """The recording's seconds at the joined audio's `seconds` (an `end` on a seam: the earlier piece's end)."""
        sample = seconds * self.rate
        find = bisect.bisect_left if end else bisect.bisect_right
        i = max(find(self.joined, sample) - 1, 0)
        return round((self.at[i] + sample - self.joined[i]) / self.rate, 3) if self.joined else seconds

    def segment(self, s: Any) -> Any:
        """A segment (start, end) moved from the joined audio's timeline to the recording's."""
        return dataclasses.replace(s, start=self.original(s.start), end=self.original(s.end, end=True))


class Gate:
    """The speech of a stream, as it arrives: `feed` returns the kept pieces as (first sample in the recording,
    samples), and (sample, None) where a region ended (an endpoint: `min_silence_s` of silence after speech, where a
    live stream settles what it heard); `timeline` places the pieces.

    Example:
        >>> gate = Gate(VadConfig())                                             # doctest: +SKIP
        >>> [(start, None if x is None else len(x)) for start, x in gate.feed(samples)]   # doctest: +SKIP
        [(9600, 40960), (83968, None), (131072, 25600)]
    """

    def __init__(self, config: VadConfig, rate: int = RATE):
        if rate != RATE:
            raise InputError(f"voice-activity gating takes {RATE} Hz audio; the bundle's is {rate} Hz")
        self.model, self.config = Silero(model_path(config)), config
        self.pad = round(config.pad_s * RATE / FRAME)  # frames
        self.silence = round(config.min_silence_s * RATE / FRAME)  # frames
        self.low = max(config.threshold - 0.15, 0.01)  # below it a frame is silence (silero's neg_threshold)
        self.rest = np.zeros(0, np.float32)  # samples short of a whole frame
        self.frame = 0  # the next whole frame's number
        self.speaking = False
        self.quiet: int | None = None  # where the speaking region's current quiet stretch started (a frame)
        self.held: list[tuple[int, np.ndarray]] = []  # quiet frames past the pad, kept if speech comes back
        self.before: collections.deque = collections.deque(maxlen=self.pad)  # silent frames a region's pad takes
        self.kept = 0  # samples kept so far
        self.timeline = Timeline(RATE)

    def feed(self, samples: np.ndarray) -> list[tuple[int, np.ndarray | None]]:
        """The kept pieces these samples (the stream's next) complete, and the endpoints among them, in order."""
        samples = np.concatenate([self.rest, np.asarray(samples, np.float32)])
        whole = len(samples) // FRAME * FRAME
        self.rest = samples[whole:]
        frames = samples[:whole].reshape(-1, FRAME)
        out: list[tuple[int, np.ndarray]] = []
        for frame, p in zip(frames, self.model(frames)):
            self._step(self.frame, frame, float(p), out)
            self.frame += 1
        return self._join(out)

    def flush(self) -> list[tuple[int, np.ndarray]]:
        """The stream ended: a region still open runs to its end (silero's rule)."""
        if not self.speaking:
            return []
        out = [*self.held, (self.frame, self.rest)]
        self.held = []
        return self._join(out)

    def _step(self, i: int, frame: np.ndarray, p: float, out: list) -> None:
        if not self.speaking:
            if p < self.config.threshold:
                self.before.append((i, frame))
                return
            self.speaking, self.quiet = True, None
            out += self.before
            self.before.clear()
        if p >= self.config.threshold:
            self.quiet = None
        elif p < self.low and self.quiet is None:
            self.quiet = i
        if self.quiet is None or i - self.quiet < self.pad:
            out += [*self.held, (i, frame)]
            self.held = []
            return
        self.held.append((i, frame))
        if i - self.quiet >= self.silence:  # the region ended at `quiet`: drop its silence but the next pad
            self.speaking = False
            self.before.extend(self.held)
            self.held = []
            out.append((i, None))

    def _join(self, frames: list[tuple[int, np.ndarray | None]]) -> list[tuple[int, np.ndarray | None]]:
        """Runs of consecutive frames as (first sample in the recording, samples), placed on the timeline; an
        endpoint (a None frame) stays where it is, between them."""
        pieces: list[tuple[int, list[np.ndarray] | None]] = []
        last = None
        for i, frame in frames:
            if frame is None:
                pieces.append((i * FRAME, None))
                last = None
                continue
            if i != last:
                pieces.append((i * FRAME, []))
            pieces[-1][1].append(frame)
            last = i + 1
        out: list[tuple[int, np.ndarray | None]] = []
        for start, parts in pieces:
            if parts is None:
                out.append((start, None))
                continue
            joined = np.concatenate(parts)
            self.timeline.add(self.kept, start)
            self.kept += len(joined)
            out.append((start, joined))
        return out


class GatedSource:
    """A recording's speech, joined: the audio source long-form reads in place of the whole recording.

    One pass of the VAD over the recording (read block by block, as the log-mel's floor pass reads it) finds the
    kept pieces; only their places are kept, and their samples are read again from the recording as needed.

    Example:
        >>> speech = GatedSource(WavSource("meeting.wav", 16000), VadConfig())   # doctest: +SKIP
        >>> speech.length / 16000, speech.timeline.original(0.0)                # doctest: +SKIP
        (412.3, 3.1)
    """

    def __init__(self, source: Any, config: VadConfig):
        gate = Gate(config)
        self.source = source
        found = []
        for a in range(0, source.length, BLOCK * FRAME):
            found += gate.feed(source.read(a, min(a + BLOCK * FRAME, source.length)))
        found += gate.flush()
        self.pieces: list[tuple[int, int, int]] = []  # (first sample joined, first sample in the recording, length)
        for start, samples in found:
            if samples is None:  # an endpoint: long-form packs the speech into windows whatever the pauses
                continue
            joined, at, n = self.pieces[-1] if self.pieces else (0, 0, 0)
            if self.pieces and at + n == start:  # continues the last piece (across the VAD's blocks)
                self.pieces[-1] = (joined, at, n + len(samples))
            else:
                self.pieces.append((joined + n, start, len(samples)))
        self.length, self.timeline = gate.kept, gate.timeline

    def read(self, start: int, stop: int) -> np.ndarray:
        start, stop = max(start, 0), min(stop, self.length)
        parts = [
            self.source.read(at + max(start - joined, 0), at + min(stop - joined, n))
            for joined, at, n in self.pieces
            if joined < stop and joined + n > start
        ]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)
