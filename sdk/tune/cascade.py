"""`edgemfm tune --cascade`: each candidate scored as a cascade's small bundle in front of tune's float bundle.

The objective is the cascade's: mean predicted cost per question while its answers differ from the
large bundle's on at most `tolerance` of the held-out questions. Each candidate answers tune's own
held-out questions; `runtimes.cascade`'s judge and choose (what `calibrate` does, against the large bundle's
answers) give the escalation rate at that tolerance, and the cost is

    candidate's predicted latency + escalated x the large bundle's predicted latency

(an escalated question pays for both). The large bundle answers each question once, whatever the
number of candidates; each question is judged once per (its media kind's encoder part, the decoder's precision),
since nothing else of a candidate touches its answer, and each candidate's calibration is chosen from its rows.

Example:
    >>> choice = cascade_choice(result, parts, source, asked, large, 0.01, tmp)  # doctest: +SKIP
    >>> choice.calibration.escalated, round(choice.cost_ms / choice.large_ms, 2)                # doctest: +SKIP
    (0.08, 0.59)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgemfm.errors import InputError
from edgemfm.progress import Progress, counter
from edgemfm.tune.host import write_chosen
from edgemfm.tune.parts import Part, media_encoders
from edgemfm.tune.quality import MAX_NEW_TOKENS, Question
from edgemfm.tune.search import Point, Result


@dataclass(frozen=True)
class CascadeChoice:
    point: Point  # the chosen small bundle
    calibration: Any  # runtimes.cascade.Calibration: its self-test, threshold and escalation rate
    cost_ms: float  # predicted mean per question: the small bundle's + escalated x the large one's
    large_ms: float  # predicted latency of the large bundle alone


class _Answers:
    """The large pipeline's answers, each question asked once (calibrate asks it again per candidate)."""

    def __init__(self, pipe: Any) -> None:
        self.pipe, self.tokenizer, self.seen = pipe, pipe.tokenizer, {}

    def generate(self, prompt: str, images=(), audio=(), max_new_tokens: int | None = None) -> list[str]:
        key = (prompt, tuple(images), tuple(audio), max_new_tokens)
        if key not in self.seen:
            self.seen[key] = list(self.pipe.generate(prompt, images, audio, max_new_tokens=max_new_tokens))
        return self.seen[key]


def items_of(asked: dict[str, tuple[Question, ...]]) -> list[dict[str, Any]]:
    """Tune's held-out questions as `calibrate` items (media lists by kind).

    Example:
        >>> items_of({"image": (Question("image", "a.png", "Colour?", "red"),)})
        [{'question': 'Colour?', 'images': ['a.png']}]
    """
    return [
        {"question": q.prompt, {"image": "images", "audio": "audio"}[q.kind]: [q.media]}
        for qs in asked.values()
        for q in qs
    ]


def cascade_choice(
    result: Result,
    parts: dict[Any, Part],
    source: Path,
    asked: dict[str, tuple[Question, ...]],
    large: Point,
    tolerance: float,
    scratch: Path,
    progress: Progress | None = None,
    memory_budget_mb: float = math.inf,
) -> CascadeChoice:
    """Of `result.points`, the one whose cascade in front of `source` (predicted as `large`) costs least per
    question at `tolerance` (ties: the smaller); only points within `memory_budget_mb` are small bundles.

    Example:
        >>> cascade_choice(result, parts, src, asked, large, 0.0, tmp).point.candidate.precisions  # doctest: +SKIP
        (('vision_encoder', 'int8'), ('text_decoder', 'int4'))
    """
    from edgemfm.runtimes.cascade import choose

    # one judgement per (settings, precisions): the cache length does not change an answer that fits
    firsts: dict[tuple, Point] = {}
    for p in sorted(result.points, key=lambda p: (p.latency_ms, p.memory_mb)):
        if p.memory_mb <= memory_budget_mb:
            firsts.setdefault((p.candidate.settings, p.candidate.precisions), p)
    if not firsts:
        smallest = min(p.memory_mb for p in result.points)
        raise InputError(
            f"no small bundle fits: the smallest needs {smallest:.0f} MB; allowed: {memory_budget_mb:g} MB"
        )
    rows = _judged(result, parts, source, asked, list(firsts.values()), scratch, progress)
    judged = []
    for p in firsts.values():
        # a question's answer depends only on its media kind's encoder and the decoder side (tune.quality):
        # the candidate's rows are those of its parts, judged once per kind
        calibration = replace(choose([r for key in _keys(p, result) for r in rows[key]], tolerance), against="large")
        cost = p.latency_ms + calibration.escalated * large.latency_ms
        judged.append(CascadeChoice(p, calibration, cost, large.latency_ms))
    return min(judged, key=lambda j: (j.cost_ms, j.point.memory_mb))


def _keys(p: Point, result: Result) -> list[tuple]:
    """(media kind, its encoder's setting and precision, the decoder's precision) for each kind of media."""
    m, s, precision = result.manifest, dict(p.candidate.settings), dict(p.candidate.precisions)
    return [(kind, s[enc], precision[enc], precision[m.generation.decoder]) for enc, kind in media_encoders(m).items()]


def _judged(
    result: Result,
    parts: dict[Any, Part],
    source: Path,
    asked: dict[str, tuple[Question, ...]],
    points: list[Point],
    scratch: Path,
    progress: Progress | None,
) -> dict[tuple, list]:
    """Each (kind, encoder setting and precision, decoder precision) any of `points` uses: its kind's questions
    answered by a bundle of those parts and judged against the large bundle's answers (`runtimes.cascade.judge`)."""
    from edgemfm.runtimes.cascade import judge
    from edgemfm.runtimes.pipeline import load

    big = _Answers(load(source, threads=1))
    needed: dict[tuple, Point] = {}
    for p in points:
        for key in _keys(p, result):
            needed.setdefault(key, p)
    step, rows = counter(progress, "calibrating candidate cascades", len(needed)), {}
    for i, (key, p) in enumerate(needed.items()):
        kind = key[0]
        small = write_chosen(replace(result, chosen=p), parts, source, scratch / f"cascade-{i}", force=True, link=True)
        pipe = load(small, threads=1)
        rows[key] = [judge(pipe, big, item, MAX_NEW_TOKENS) for item in items_of({kind: asked.get(kind, ())})]
        step()
    return rows
