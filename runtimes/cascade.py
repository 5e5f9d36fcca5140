"""A small-to-large cascade: the small bundle answers unless a cheap self-test sends the question up.

The self-test is the small bundle's mean token log-probability over its own answer, read off
the logits the decode loop already has (no extra model call). Below a threshold calibrated on
held-out questions the large bundle answers instead. `calibrate` picks the threshold that
escalates the fewest questions while the cascade stays within `tolerance` of the large
bundle's accuracy on the held-out set, and writes it to a JSON file `load` reads back.

    question ─► small ─► answer, mean log-prob s ─► s >= threshold ? answer : large(question)

Example:
    >>> cascade = edgemfm.load_cascade("bundles/large", "bundles/small", escalate_below="cascade.json")  # doctest: +SKIP
    >>> "".join(cascade.generate("What colour is the ball?", images=["ball.png"]))                        # doctest: +SKIP
    'red'
    >>> cascade.answered_by                                                                              # doctest: +SKIP
    'small'
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgemfm import bundle
from edgemfm.errors import InputError
from edgemfm.runtimes.decoding import Sampler, logprob
from edgemfm.runtimes.pipeline import Generates, Pipeline
from edgemfm.runtimes.pipeline import load as load_pipeline


@dataclass(frozen=True)
class Calibration:
    threshold: float  # escalate when the small answer's mean token log-probability is below this
    questions: int  # held-out questions it was calibrated on
    small_accuracy: float
    large_accuracy: float
    cascade_accuracy: float
    escalated: float  # fraction of the held-out questions sent to the large bundle

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, path: str | Path) -> Calibration:
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as e:
            raise InputError(
                f"{str(path)!r} is not a cascade calibration file ({e}); allowed: a JSON file written by calibrate()"
            ) from None


def mean_logprob(scored: Sequence[tuple[int, float]]) -> float:
    """The self-test score of an answer; an empty answer scores -inf, so it always escalates."""
    return sum(lp for _, lp in scored) / len(scored) if scored else -math.inf


class Cascade(Generates):
    """Two pipelines behind one generate API; `answered_by` says which answered the last question."""

    def __init__(self, small: Pipeline, large: Pipeline, escalate_below: float | str | Path | None):
        if escalate_below is None:
            raise InputError(
                "a cascade needs escalate_below; allowed: a mean log-probability (e.g. -1.5) or a calibration JSON file"
            )
        if isinstance(escalate_below, (str, Path)):
            escalate_below = (
                _number(str(escalate_below))
                if _number(str(escalate_below)) is not None
                else Calibration.read(escalate_below).threshold
            )
        self.small, self.large, self.threshold = small, large, float(escalate_below)
        self.tokenizer = large.tokenizer  # each answer is decoded by the tokenizer of the bundle that gave it
        self.answered_by: str | None = None
        self.score: float | None = None

    @property
    def provider(self) -> str:
        return self.large.provider

    def generate_steps(
        self,
        prompt: str,
        images: Iterable[Any] = (),
        audio: Iterable[Any] = (),
        max_new_tokens: int | None = None,
        sampler: Sampler | None = None,
    ) -> Iterator[tuple[int, np.ndarray | None]]:
        """The small bundle's answer if it passes the self-test (its logits not kept: None), else the large bundle's."""
        scored, large = self._answer(prompt, images, audio, max_new_tokens, sampler)
        return large if scored is None else ((token, None) for token, _ in scored)

    def generate_scored(
        self,
        prompt: str,
        images: Iterable[Any] = (),
        audio: Iterable[Any] = (),
        max_new_tokens: int | None = None,
        sampler: Sampler | None = None,
    ) -> Iterator[tuple[int, float]]:
        """(token, log-probability) pairs of the answer that passed: the small bundle's, or the large one's."""
        scored, large = self._answer(prompt, images, audio, max_new_tokens, sampler)
        return ((token, logprob(logits, token)) for token, logits in large) if scored is None else iter(scored)

    def _answer(self, prompt, images, audio, max_new_tokens, sampler):
        """(the small answer's scored tokens, None) when it passes the self-test, else (None, the large bundle's steps)."""
        images, audio = list(images), list(audio)  # the large bundle may need them again
        steps = self.small.generate_steps(prompt, images, audio, max_new_tokens, sampler)
        scored = [(token, logprob(logits, token)) for token, logits in steps]  # one float per token, no logits kept
        self.score = mean_logprob(scored)
        if self.score >= self.threshold:
            self.answered_by, self.tokenizer = "small", self.small.tokenizer
            return scored, None
        self.answered_by, self.tokenizer = "large", self.large.tokenizer
        return None, self.large.generate_steps(prompt, images, audio, max_new_tokens, sampler)


def load(
    large: str | Path,
    small: str | Path,
    escalate_below: float | str | Path | None,
    device: str | None = None,
    threads: int = 0,
    memory_budget: float | None = None,
    **options: Any,
) -> Cascade:
    """Open `large` as `edgemfm.load` does and `small` in front of it, which answers unless its self-test
    falls below `escalate_below` (a mean token log-probability, or a calibration JSON file from `calibrate`).

    `options` go to the large bundle's `edgemfm.load` (draft, draft_k, streaming overrides); the small
    bundle runs under the same profile, threads, memory budget and streaming settings.

    Example:
        >>> cascade = load("bundles/large", "bundles/small", escalate_below=-1.5, device="pi5")  # doctest: +SKIP
        >>> cascade.threshold                                                                  # doctest: +SKIP
        -1.5
    """
    pipe = load_pipeline(large, device, threads, memory_budget, **options)
    # reserved: the large pipeline's KV cache and activations count against the same budget
    front = Pipeline(
        Path(small),
        bundle.read_manifest(small),
        pipe.profile,
        threads,
        memory_budget,
        pipe.streaming,
        reserved=pipe.working_bytes,
    )
    return Cascade(front, pipe, escalate_below)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def normalize(text: str) -> str:
    """Lower case, single spaces, no surrounding punctuation: how answers are compared."""
    return re.sub(r"\s+", " ", text.lower()).strip(" .,!?;:'\"")


def calibrate(
    small: Pipeline, large: Pipeline, items: Sequence[dict[str, Any]], max_new_tokens: int, tolerance: float = 0.01
) -> Calibration:
    """The threshold escalating the fewest held-out items while accuracy >= large's - `tolerance`.

    Each item is {"question": str, "answer": str, "images": [paths], "audio": [paths]} (either
    media list may be absent); an answer is right when it equals the reference after `normalize`.

    Example:
        >>> calibrate(small, large, [{"question": "Colour?", "answer": "red", "images": ["a.png"]}], 8)  # doctest: +SKIP
        Calibration(threshold=-0.9, questions=1, ...)
    """
    if not items:
        raise InputError("calibration needs at least one held-out question; allowed: a non-empty list")
    return choose_threshold([judge(small, large, item, max_new_tokens) for item in items], tolerance)


def judge(small: Pipeline, large: Pipeline, item: dict[str, Any], max_new_tokens: int) -> tuple[float, bool, bool]:
    """(the small answer's self-test score, small right, large right) for one question with its answer.

    Example:
        >>> judge(small, large, {"question": "What digit is this?", "answer": "7", "images": ["7.png"]}, 6)  # doctest: +SKIP
        (-0.02, True, True)
    """
    images, audio = item.get("images", []), item.get("audio", [])
    scored = list(small.generate_scored(item["question"], images, audio, max_new_tokens))
    small_text = small.tokenizer.decode([t for t, _ in scored], skip_special_tokens=True)
    large_text = "".join(large.generate(item["question"], images, audio, max_new_tokens=max_new_tokens))
    ref = normalize(item["answer"])
    return mean_logprob(scored), normalize(small_text) == ref, normalize(large_text) == ref


def choose_threshold(rows: Sequence[tuple[float, bool, bool]], tolerance: float) -> Calibration:
    """From (small score, small right, large right) per item: the cheapest threshold within tolerance."""
    n = len(rows)
    large_acc = sum(r[2] for r in rows) / n
    best = None
    for t in sorted({-math.inf, math.inf, *(r[0] for r in rows)}):
        escalated = sum(s < t for s, _, _ in rows)
        acc = sum(lr if s < t else sr for s, sr, lr in rows) / n
        if acc >= large_acc - tolerance and (best is None or (escalated, -acc) < (best[1], -best[2])):
            best = (t, escalated, acc)
    t, escalated, acc = best  # +inf (escalate all) always qualifies
    return Calibration(t, n, sum(r[1] for r in rows) / n, large_acc, acc, escalated / n)
