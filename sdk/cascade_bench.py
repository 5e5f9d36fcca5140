"""`edgemfm bench LARGE --cascade SMALL`: a cascade's time, memory and accuracy per question, beside the large bundle's
(`--calibrate OUT`: its self-test and threshold chosen on held-out questions instead, `calibrate_cascade`).

The questions are a data folder's held-out ones (`DATA/eval.jsonl`, `edgemfm finetune`'s format);
`half="test"` keeps every other one from the second, the half `benchmarks/runtime/cascade.py`
measures on (the first half, `half="calibration"`, calibrates the threshold).

- resident (default): both bundles loaded. Each question is answered by the large bundle alone
  and by the cascade, the order alternating from one question to the next; memory is the
  process's peak resident size (both bundles, every answer).
- on demand: only the small bundle resident; each escalated question opens the large one and
  drops it after its answer (its load time is in that question's time). The large bundle alone
  is not measured in this process: loading it would make it resident.

Times are wall seconds and process CPU seconds (all threads) per question, means over the questions.

Example:
    >>> r = bench_cascade("bundles/large", "bundles/small", "cascade.json", "data/demo")  # doctest: +SKIP
    >>> r.cascade_s / r.large_s, r.escalated                                             # doctest: +SKIP
    (0.41, 0.12)
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgemfm.errors import InputError
from edgemfm.progress import Progress, counter

HALVES = ("all", "test", "calibration")


@dataclass(frozen=True)
class Answered:
    """One question's cascade answer."""

    answered_by: str
    text: str
    right: bool
    seconds: float
    cpu_seconds: float


@dataclass(frozen=True)
class CascadeBench:
    mode: str  # "resident" or "on_demand"
    questions: int
    test: str  # the self-test and its threshold
    threshold: float
    escalated: float  # fraction of the questions the large bundle answered
    cascade_accuracy: float
    cascade_s: float  # mean wall seconds per question
    cascade_cpu_s: float  # mean process CPU seconds per question
    large_accuracy: float | None  # the large bundle alone (None on demand: not measured)
    large_s: float | None
    large_cpu_s: float | None
    load_s: float  # opening the cascade (on demand: the small bundle and the large one's checks)
    peak_rss_mib: float  # the process's peak resident size from before loading to the last answer
    rss_after_mib: float  # its resident size after the last answer, freed heap returned (on demand: small only)
    answers: tuple[Answered, ...]


def questions(data: str | Path, half: str = "test") -> list[dict[str, Any]]:
    """The held-out questions of `data/eval.jsonl` as cascade items ({question, answer, images|audio}).

    Example:
        >>> questions("data/demo")[0]["question"]  # doctest: +SKIP
        'What word is spoken?'
    """
    from edgemfm.exporters.trainee import read_examples

    if half not in HALVES:
        raise InputError(f"half {half!r} is not allowed; allowed: {', '.join(HALVES)}")
    examples = read_examples(Path(data), "eval")
    picked = {"all": examples, "test": examples[1::2], "calibration": examples[0::2]}[half]
    return [
        {"question": e.prompt, "answer": e.answer, "images" if e.kind == "image" else "audio": [str(e.media)]}
        for e in picked
    ]


def bench_cascade(
    large: str | Path,
    small: str | Path,
    escalate_below: float | str | Path,
    data: str | Path,
    half: str = "test",
    on_demand: bool = False,
    max_new_tokens: int = 8,
    threads: int = 0,
    progress: Progress | None = None,
) -> CascadeBench:
    """Answer the held-out questions with the cascade (and the large bundle alone when resident), timed.

    Example:
        >>> bench_cascade("bundles/large", "bundles/small", -0.5, "data/demo", on_demand=True).peak_rss_mib  # doctest: +SKIP
        402.5
    """
    from edgemfm.runtimes import budget
    from edgemfm.runtimes.cascade import load, normalize

    items = questions(data, half)
    budget.reset_peak()
    start = time.perf_counter()
    cascade = load(large, small, escalate_below, threads=threads, on_demand=on_demand)
    load_s = time.perf_counter() - start
    step = counter(progress, f"cascade ({'on demand' if on_demand else 'resident'}) answers", len(items))
    answers, alone = [], []
    for i, item in enumerate(items):
        media = {k: item[k] for k in ("images", "audio") if k in item}

        def ask_cascade(media=media, item=item) -> Any:
            return cascade.answer(item["question"], max_new_tokens=max_new_tokens, **media)

        def ask_large(media=media, item=item) -> str:
            return "".join(cascade.large.generate(item["question"], max_new_tokens=max_new_tokens, **media))

        runs = [ask_cascade] if on_demand else [ask_cascade, ask_large][:: 1 if i % 2 == 0 else -1]
        timed = {fn: _timed(fn) for fn in runs}
        answer, seconds, cpu = timed[ask_cascade]
        right = normalize(answer.text) == normalize(item["answer"])
        answers.append(Answered(answer.answered_by, answer.text, right, seconds, cpu))
        if not on_demand:
            text, seconds, cpu = timed[ask_large]
            alone.append((normalize(text) == normalize(item["answer"]), seconds, cpu))
        step()
    n = len(items)
    budget.release_free_heap()  # on demand: the last large pipeline's freed buffers leave the process
    mean = lambda xs: statistics.fmean(xs) if xs else None  # noqa: E731
    return CascadeBench(
        mode="on_demand" if on_demand else "resident",
        questions=n,
        test=cascade.test,
        threshold=cascade.threshold,
        escalated=sum(a.answered_by == "large" for a in answers) / n,
        cascade_accuracy=sum(a.right for a in answers) / n,
        cascade_s=statistics.fmean(a.seconds for a in answers),
        cascade_cpu_s=statistics.fmean(a.cpu_seconds for a in answers),
        large_accuracy=mean([r for r, _, _ in alone]),
        large_s=mean([s for _, s, _ in alone]),
        large_cpu_s=mean([c for _, _, c in alone]),
        load_s=load_s,
        peak_rss_mib=budget.peak_resident_bytes() / budget.MiB,
        rss_after_mib=budget.resident_bytes() / budget.MiB,
        answers=tuple(answers),
    )


def calibrate_cascade(
    large: str | Path,
    small: str | Path,
    data: str | Path,
    out: str | Path,
    half: str = "calibration",
    against: str = "large",
    tolerance: float = 0.01,
    max_new_tokens: int = 8,
    threads: int = 0,
    progress: Progress | None = None,
) -> Any:
    """`cascade.calibrate` on the held-out questions of `data` (`half`), both bundles resident; the
    Calibration, also written to `out` for `--escalate-below`.

    Example:
        >>> calibrate_cascade("bundles/large", "bundles/small", "data/demo", "cascade.json").escalated  # doctest: +SKIP
        0.065
    """
    from edgemfm.runtimes.cascade import calibrate
    from edgemfm.runtimes.pipeline import load

    items = questions(data, half)
    calibration = calibrate(
        load(small, threads=threads), load(large, threads=threads), items, max_new_tokens, tolerance, against, progress
    )
    calibration.save(out)
    return calibration


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """fn's result, wall seconds and process CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu
