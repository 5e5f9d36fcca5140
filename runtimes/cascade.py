"""A small-to-large cascade: the small bundle answers unless a cheap self-test sends the question up.

The self-test is a score of the small bundle's own answer read off the logits the decode loop
already has, no extra model call (`selftests`: the mean token log-probability by default, the
least sure token's, or the first token's margin over the runner-up). Below a threshold
calibrated on held-out questions the large bundle answers instead (an escalated question stops the small
bundle where its answer fails for good: the first token's margin at its first token, the least sure token's
log-probability at the first token below the threshold; `selftests.fails_at`). `calibrate` picks the test
and threshold that escalate the fewest questions while the cascade's answers differ from the large
bundle's on at most `tolerance` of the held-out questions (by default; or, against reference
answers, while its accuracy stays within `tolerance` of the large bundle's), and writes them to a
JSON file `load` reads back.

Why the large bundle's answers by default: the cascade is there to answer as the large bundle
does, cheaper. Two sets of answers that differ on a fraction d of the questions differ in accuracy
by at most d, so on the calibration questions the cascade is within `tolerance` of the large
bundle's accuracy whatever the reference, and no reference answers are needed. Against a reference
instead, a small bundle that happens to beat the large one on the calibration questions is never
escalated, even where it is unsure, and loses on the next questions what it won there (the demo's
pruned small bundle: 0% escalated, -1.3 points on the test half).

    question ─► small ─► answer, self-test s ─► s >= threshold ? answer : large(question)

An escalated question (greedy decoding) feeds the small answer to the large bundle right after the
prompt, in its prefill (`Pipeline.generate_checked`): the large bundle's answer token for token, and
where the two agree it costs the prefill alone, not the prefill and a step per token (the large
bundle's memory-bound steps are most of what an escalation adds).

Memory: both bundles stay resident by default; `load(..., on_demand=True)` keeps only the small
one and opens the large one for each escalated question (under the same memory budget, the small
one counted), paying its load time on every escalation.

Example:
    >>> cascade = edgemfm.load_cascade("bundles/large", "bundles/small", escalate_below="cascade.json")  # doctest: +SKIP
    >>> "".join(cascade.generate("What colour is the ball?", images=["ball.png"]))                        # doctest: +SKIP
    'red'
    >>> cascade.answered_by                                                                              # doctest: +SKIP
    'small'
    >>> cascade.answer("What colour is the ball?", images=["ball.png"])                                  # doctest: +SKIP
    CascadeAnswer(text='red', answered_by='small', score=-0.21)

Threads: one Cascade may serve several threads. Which bundle answered, its score and the
tokenizer that decodes the answer are kept per call (`answer` returns them in a record);
`answered_by` and `score` read the calling thread's last question.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgemfm import bundle, records
from edgemfm.errors import InputError
from edgemfm.progress import Progress, counter
from edgemfm.runtimes import selftests
from edgemfm.runtimes.decoding import Sampler, detokenize, logprob, stop_at
from edgemfm.runtimes.pipeline import Generates, Pipeline, _tokenizer, check_request
from edgemfm.runtimes.pipeline import load as load_pipeline
from edgemfm.runtimes.selftests import Scores


@dataclass(frozen=True)
class Calibration:
    threshold: float  # escalate when the small answer's self-test score is below this
    questions: int  # held-out questions it was calibrated on
    small_accuracy: float
    large_accuracy: float
    cascade_accuracy: float
    escalated: float  # fraction of the held-out questions sent to the large bundle
    test: str = "mean_logprob"  # which self-test (selftests.TESTS); files written before there were others lack it
    # what the accuracies above count as right (AGAINST): "large", the large bundle's own answers (large_accuracy 1.0,
    # the others its agreement with them), or "answers", the items' reference answers (files older than "large" lack it)
    against: str = "answers"

    def save(self, path: str | Path) -> None:
        records.write_json(path, self, indent=2)

    @classmethod
    def read(cls, path: str | Path) -> Calibration:
        try:
            calibration = cls(**json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as e:
            raise InputError(
                f"{str(path)!r} is not a cascade calibration file ({e}); allowed: a JSON file written by calibrate()"
            ) from None
        selftests.check_test(calibration.test)
        check_against(calibration.against)
        return calibration


AGAINST = ("large", "answers")  # what a calibration counts as a right answer: the large bundle's, or the reference


def check_against(name: str) -> str:
    """`name` if a calibration may be judged against it, else an InputError naming the allowed ones.

    Example:
        >>> check_against("large")
        'large'
    """
    if name not in AGAINST:
        raise InputError(f"calibration against {name!r} is not allowed; allowed: {', '.join(AGAINST)}")
    return name


@dataclass(frozen=True)
class CascadeAnswer:
    """One question's answer and who gave it."""

    text: str
    answered_by: str  # "small": passed the self-test; "large": escalated
    score: float  # the small answer's self-test score (the cascade's test)


@dataclass(frozen=True)
class _Decision:
    answered_by: str
    score: float
    tokenizer: Any  # the answering bundle's: it decodes the answer


class Cascade(Generates):
    """Two pipelines behind one generate API; `answered_by` says which answered the calling thread's last question.

    `large` is a Pipeline (resident) or a function opening one (on demand: called for each escalated
    question, the pipeline dropped after its answer); `test` names the self-test (`selftests.TESTS`;
    default: the calibration file's, else mean_logprob).
    """

    def __init__(
        self,
        small: Pipeline,
        large: Pipeline | Callable[[], Pipeline],
        escalate_below: float | str | Path | None,
        test: str | None = None,
        tokenizer: Any = None,
    ):
        if escalate_below is None:
            raise InputError(
                "a cascade needs escalate_below; allowed: a self-test score (e.g. -1.5) or a calibration JSON file"
            )
        if isinstance(escalate_below, (str, Path)) and _number(str(escalate_below)) is None:
            calibration = Calibration.read(escalate_below)
            escalate_below, test = calibration.threshold, test or calibration.test
        escalate_below = float(
            _number(str(escalate_below)) if isinstance(escalate_below, (str, Path)) else escalate_below
        )
        if math.isnan(escalate_below):  # every comparison with NaN is False: it would always escalate
            raise InputError("escalate_below nan is not allowed; allowed: a self-test score (e.g. -1.5) or -inf/inf")
        self.test = selftests.check_test(test or "mean_logprob")
        self.small, self.threshold = small, escalate_below
        self.on_demand = callable(large) and not isinstance(large, Pipeline)
        self._open_large = large if self.on_demand else (lambda: large)
        self.large = None if self.on_demand else large
        # never swapped: each answer carries its own in its _Decision
        self.tokenizer = tokenizer if self.on_demand else large.tokenizer
        self._last = threading.local()  # per thread: the decision of its last question

    @property
    def answered_by(self) -> str | None:
        """ "small" or "large" for the calling thread's last question (None before the first)."""
        decision = getattr(self._last, "decision", None)
        return None if decision is None else decision.answered_by

    @property
    def score(self) -> float | None:
        """The self-test score of the calling thread's last question (None before the first)."""
        decision = getattr(self._last, "decision", None)
        return None if decision is None else decision.score

    def generate(
        self,
        prompt: str,
        images: Iterable[Any] = (),
        audio: Iterable[Any] = (),
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
    ) -> Iterator[str]:
        """Pieces of the answer's text, decoded by the tokenizer of the bundle that answered.

        Example:
            >>> "".join(cascade.generate("Colour?", images=["ball.png"]))  # doctest: +SKIP
            'red'
        """
        sampler = Sampler(temperature, top_k, top_p, seed)
        scored, large, decision = self._answer(prompt, images, audio, max_new_tokens, sampler)
        tokens = (t for t, _ in large) if scored is None else (t for t, _ in scored)
        return stop_at(detokenize(decision.tokenizer, tokens), stop)

    def answer(
        self, prompt: str, images: Iterable[Any] = (), audio: Iterable[Any] = (), **options: Any
    ) -> CascadeAnswer:
        """The whole answer with which bundle gave it and the self-test score: safe to call from many threads.

        Example:
            >>> cascade.answer("Colour?", images=["ball.png"], max_new_tokens=4).answered_by  # doctest: +SKIP
            'small'
        """
        text = "".join(self.generate(prompt, images, audio, **options))
        decision = self._last.decision  # set by this thread's generate just above
        return CascadeAnswer(text, decision.answered_by, decision.score)

    @property
    def provider(self) -> str:
        return self.small.provider if self.on_demand else self.large.provider

    def generate_steps(
        self,
        prompt: str,
        images: Iterable[Any] = (),
        audio: Iterable[Any] = (),
        max_new_tokens: int | None = None,
        sampler: Sampler | None = None,
    ) -> Iterator[tuple[int, np.ndarray | None]]:
        """The small bundle's answer if it passes the self-test (its logits not kept: None), else the large bundle's."""
        scored, large, _ = self._answer(prompt, images, audio, max_new_tokens, sampler)
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
        scored, large, _ = self._answer(prompt, images, audio, max_new_tokens, sampler)
        return ((token, logprob(logits, token)) for token, logits in large) if scored is None else iter(scored)

    def _answer(self, prompt, images, audio, max_new_tokens, sampler):
        """(the small answer's scored tokens, None, decision) when it passes the self-test, else
        (None, the large bundle's steps, decision); the decision is also this thread's last."""
        check_request(prompt, images, audio, max_new_tokens)
        images, audio = list(images), list(audio)  # the large bundle may need them again
        scored: list[tuple[int, float]] = []

        def steps():  # the small answer's steps, each token's log-probability kept for generate_scored, until it fails
            for step, (token, logits) in enumerate(
                self.small.generate_steps(prompt, images, audio, max_new_tokens, sampler)
            ):
                scored.append((token, logprob(logits, token)))
                yield token, logits
                if selftests.fails_at(self.test, self.threshold, step, token, logits):
                    return  # an escalation: the small bundle decodes no further (its next step is never run)

        _, scores = selftests.score(steps())
        score = getattr(scores, self.test)
        passed = score >= self.threshold
        answering = self.small if passed else self._open_large()
        self._last.decision = decision = _Decision("small" if passed else "large", score, answering.tokenizer)
        if passed:
            return scored, None, decision
        if sampler is not None and not sampler.is_greedy:
            return None, answering.generate_steps(prompt, images, audio, max_new_tokens, sampler), decision
        # greedy: the small answer so far goes into the large bundle's prefill, which keeps what it would say itself
        proposal = [token for token, _ in scored]
        return None, answering.generate_checked(prompt, images, audio, proposal, max_new_tokens), decision


def load(
    large: str | Path,
    small: str | Path,
    escalate_below: float | str | Path | None,
    device: str | None = None,
    threads: int = 0,
    memory_budget: float | None = None,
    on_demand: bool = False,
    self_test: str | None = None,
    **options: Any,
) -> Cascade:
    """Open `large` as `edgemfm.load` does and `small` in front of it, which answers unless its self-test
    falls below `escalate_below` (a score, or a calibration JSON file from `calibrate`, which names its test).

    `options` go to the large bundle's `edgemfm.load` (draft, draft_k, streaming overrides); the small
    bundle runs under the same profile, threads, memory budget and streaming settings. `on_demand`:
    only the small bundle stays resident; the large one is opened (its files verified, the budget
    checked with the small one counted) for each escalated question and dropped after it.
    `self_test` overrides the calibration file's test (`selftests.TESTS`).

    Example:
        >>> cascade = load("bundles/large", "bundles/small", escalate_below=-1.5, device="pi5")  # doctest: +SKIP
        >>> cascade.threshold                                                                  # doctest: +SKIP
        -1.5
    """
    if on_demand:
        return _on_demand(large, small, escalate_below, device, threads, memory_budget, self_test, options)
    pipe = load_pipeline(large, device, threads, memory_budget, **options)
    # reserved: the large pipeline's KV cache and activations count against the same budget
    front = Pipeline(
        Path(small),
        bundle.read_manifest(small, options.get("trusted_keys")),  # signed like the large one when keys are given
        pipe.profile,
        threads,
        memory_budget,
        pipe.streaming,
        reserved=pipe.working_bytes,
    )
    return Cascade(front, pipe, escalate_below, self_test)


def _on_demand(large, small, escalate_below, device, threads, memory_budget, self_test, options) -> Cascade:
    """The small bundle loaded alone; the large one's files verified once, then opened by each escalated question
    with the small one's working memory reserved (its weights are resident: the budget check reads the process)."""
    if options.pop("draft", None) is not None:
        raise InputError("a draft is not allowed with on_demand; allowed: a resident cascade (on_demand=False)")
    options.pop("draft_k", None)
    manifest = bundle.read_manifest(large, options.get("trusted_keys"))
    front = load_pipeline(small, device or manifest.profile, threads, memory_budget, **options)

    def open_large() -> Pipeline:
        return Pipeline(
            Path(large), manifest, front.profile, threads, memory_budget, front.streaming, front.working_bytes
        )

    return Cascade(front, open_large, escalate_below, self_test, tokenizer=_tokenizer(Path(large), manifest))


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def normalize(text: str) -> str:
    """Lower case, single spaces, no surrounding punctuation: how answers are compared."""
    return re.sub(r"\s+", " ", text.lower()).strip(" .,!?;:'\"")


def calibrate(
    small: Pipeline,
    large: Pipeline,
    items: Sequence[dict[str, Any]],
    max_new_tokens: int,
    tolerance: float = 0.01,
    against: str = "large",
    progress: Progress | None = None,
) -> Calibration:
    """The self-test and threshold escalating the fewest held-out items while the cascade's answers differ from
    the large bundle's on at most `tolerance` of them (`against="answers"`: while its accuracy on the items'
    reference answers is >= the large bundle's - `tolerance`; see the module's note on why not by default).

    Each item is {"question": str, "answer": str, "images": [paths], "audio": [paths]} (either
    media list may be absent; "answer" only against the reference); answers are compared after `normalize`.

    Example:
        >>> calibrate(small, large, [{"question": "Colour?", "images": ["a.png"]}], 8)  # doctest: +SKIP
        Calibration(threshold=-0.9, questions=1, ..., test='mean_logprob', against='large')
    """
    if not items:
        raise InputError("calibration needs at least one held-out question; allowed: a non-empty list")
    check_against(against)
    step, rows = counter(progress, "calibrating the cascade", len(items)), []
    for item in items:
        rows.append(judge(small, large, item, max_new_tokens, against))
        step()
    return replace(choose(rows, tolerance), against=against)


def judge(
    small: Pipeline, large: Pipeline, item: dict[str, Any], max_new_tokens: int, against: str = "large"
) -> tuple[Scores, bool, bool]:
    """(the small answer's self-test scores, small right, large right) for one question: right means the large
    bundle's answer (`against="large"`: the large one is always right) or the item's "answer".

    Example:
        >>> judge(small, large, {"question": "What digit is this?", "answer": "7", "images": ["7.png"]}, 6, "answers")  # doctest: +SKIP
        (Scores(mean_logprob=-0.02, min_logprob=-0.03, first_margin=6.1), True, True)
    """
    if against == "answers" and "answer" not in item:
        raise InputError(f"item {item['question']!r} has no answer; allowed: an item with one, or against='large'")
    images, audio = item.get("images", []), item.get("audio", [])
    tokens, scores = selftests.score(small.generate_steps(item["question"], images, audio, max_new_tokens))
    # both answers as the cascade would show them (`generate`'s text), so neither is judged on how it is decoded
    small_text = normalize("".join(detokenize(small.tokenizer, tokens)))
    large_text = normalize("".join(large.generate(item["question"], images, audio, max_new_tokens=max_new_tokens)))
    if check_against(against) == "large":
        return scores, small_text == large_text, True
    ref = normalize(item["answer"])
    return scores, small_text == ref, large_text == ref


def choose(
    rows: Sequence[tuple[Scores, bool, bool]], tolerance: float, tests: Sequence[str] = selftests.TESTS
) -> Calibration:
    """From (small scores, small right, large right) per item: the self-test whose cheapest threshold within
    `tolerance` escalates the fewest items (ties: the more accurate, then the one that fails an answer soonest,
    `selftests.EARLIEST`: an escalated question then costs the fewest small steps).

    Example:
        >>> choose([(Scores(-0.1, -0.2, 3.0), True, True), (Scores(-0.3, -0.5, 0.1), False, True)], 0.0).test
        'first_margin'
    """
    picks = []
    for test in map(selftests.check_test, tests):
        c = choose_threshold([(getattr(s, test), sr, lr) for s, sr, lr in rows], tolerance)
        picks.append(Calibration(**{**asdict(c), "test": test}))
    return min(picks, key=lambda c: (c.escalated, -c.cascade_accuracy, selftests.EARLIEST.index(c.test)))


def choose_threshold(rows: Sequence[tuple[float, bool, bool]], tolerance: float) -> Calibration:
    """From (small score, small right, large right) per item: the cheapest threshold within tolerance (one test)."""
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
