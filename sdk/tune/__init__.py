"""`edgemfm tune`: the best-quality point of resolution, tokens, sequence length and precision under a budget.

    float bundle (+ checkpoint) ─► parts: each component at each setting and precision (parts.py)
        │ candidates = image (size, grid) or visual-token budget x audio window x max sequence length
        │              x precision per component; with --candidates, also each other float bundle of the
        │              model (a pruned one) x precision per component x max sequence length (sources.py)
        │ latency: cost.predict over the candidate's parts on the device (one question: encoder, prompt
        │          prefill with the media rows, answer tokens decoded); memory: weights + KV cache + activation
        │ quality: held-out exact match through the runtime (--data), else the worst output cosine of
        │          any component against float on calibration inputs (quality.py)
        ▼ Pareto frontier (latency, memory down; quality up) ─► chosen: best quality within the budgets

The modules, each importing only those before it: parts.py (the component graphs), quality.py
(a bundle assembled from parts, its answers; edgemfm.jobs fans them out on a pool or Ray), search.py (candidates, their
predicted cost and quality, the frontier, the choice), host.py (the chosen point written and timed
on this host), sources.py (`--candidates`: other float bundles of the model searched beside it), cascade.py (`--cascade`: each point scored as a cascade's small bundle in front of the float one,
at its predicted cost per question), render.py (JSON, table, PNG). This file is the verb that strings them together.

Example:
    >>> result = tune(device="pi5", latency_budget_ms=900, bundle="bundles/demo-host", data="work/demo/data")  # doctest: +SKIP
    >>> result.chosen.latency_ms <= 900                                                                         # doctest: +SKIP
    True
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from edgemfm import leftovers
from edgemfm.bundle import check_output, read_manifest
from edgemfm.errors import InputError
from edgemfm.profiles import load_profile
from edgemfm.progress import Progress
from edgemfm.tune.cascade import CascadeChoice, cascade_choice
from edgemfm.tune.host import float_source, host_check, write_chosen
from edgemfm.tune.parts import Space, build_parts, candidate_bundle
from edgemfm.tune.quality import read_questions
from edgemfm.tune.render import plot, table, to_json
from edgemfm.tune.search import (
    ANSWER_TOKENS,
    PROMPT_TOKENS,
    Candidate,
    HostCheck,
    Point,
    Result,
    candidates,
    choose,
    default_space,
    pareto,
    predicted,
    score,
)
from edgemfm.tune.sources import candidate_source, candidate_space

__all__ = [
    "CascadeChoice",
    "Candidate",
    "HostCheck",
    "Point",
    "Result",
    "Space",
    "choose",
    "plot",
    "table",
    "to_json",
    "tune",
]


def tune(
    device: str,
    latency_budget_ms: float,
    memory_budget_mb: float | None = None,
    model: str | Path | None = None,
    bundle: str | Path | None = None,
    data: str | Path | None = None,
    questions: int = 12,
    space: Space | None = None,
    workers: int = 1,
    ray_address: str | None = None,
    scratch: str | Path | None = None,
    prompt_tokens: int = PROMPT_TOKENS,
    answer_tokens: int = ANSWER_TOKENS,
    progress: Progress | None = None,
    apply: str | Path | None = None,
    force: bool = False,
    revision: str | None = None,
    visual_tokens: tuple[int, ...] = (),
    cascade: bool = False,
    tolerance: float = 0.01,
    candidate_bundles: tuple[str | Path, ...] = (),
) -> Result:
    """Search the space for `device`; returns every point, the frontier flags and the chosen point.

    `bundle` is a float bundle to start from (default: export `model`, the demo model when None);
    `model` (a checkpoint directory, or a Hub id at `revision`) is also what media knobs re-export encoders from. `data` holds eval.jsonl for a
    held-out task; without it quality is each component's fidelity to float. `apply` writes the
    chosen point as a bundle there (an existing one only with `force`). `visual_tokens`: budgets of rows
    per image (tile) searched beside the image settings (`export --visual-tokens`; the family's
    `visual_tokens` capability, from `model`). `cascade`: choose instead the cheapest small bundle of a
    cascade in front of the float bundle, per question, at `tolerance` (needs `data`; see tune/cascade.py;
    `result.cascade` holds its calibration). `candidate_bundles`: other fp32 bundles of the model (`edgemfm prune`
    checkpoints exported) searched beside it, each at every precision mix and sequence length (needs `data`;
    see tune/sources.py). `progress` hears each
    step (see `edgemfm.progress`); without it nothing is printed.

    Example:
        >>> r = tune("pi5", 900, bundle="bundles/demo-host", model=demo_dir, data="/tmp/demo-data")  # doctest: +SKIP
        >>> r.chosen.candidate.describe(r.manifest)["text_decoder"]                                 # doctest: +SKIP
        'int8'
    """
    profile = load_profile(device)
    memory_budget_mb = profile.default_memory_budget_mb if memory_budget_mb is None else memory_budget_mb
    if not 0 < latency_budget_ms < math.inf or not 0 < memory_budget_mb < math.inf:
        raise InputError(
            f"budgets must be positive; got latency {latency_budget_ms!r} ms, memory {memory_budget_mb!r} MB"
        )
    if cascade and data is None:
        raise InputError("--cascade needs held-out questions; allowed: --cascade with --data DIR (an eval.jsonl)")
    if candidate_bundles and data is None:  # a pruned graph's fidelity to its own float graph says nothing
        raise InputError("--candidates needs held-out questions; allowed: --candidates with --data DIR (an eval.jsonl)")
    if not 0 <= tolerance < 1:
        raise InputError(f"cascade tolerance {tolerance!r} is not allowed; allowed: 0 <= tolerance < 1")
    if workers < 1:
        raise InputError(f"--workers {workers} is not allowed; allowed: 1 or more")
    if apply is not None:
        check_output(apply, force, inputs=(model, bundle, data, *candidate_bundles))  # before the slow part
        leftovers.sweep_for(Path(apply))  # a killed run's staging folder beside it
    with leftovers.scratch(leftovers.TUNE_SCRATCH_PREFIX, scratch) as tmp:
        from edgemfm.toolchain import quiet

        with quiet():  # the toolchain's own warnings and bars; ours tells the story
            source, model_dir = float_source(
                model, revision, bundle, data is not None or bool(visual_tokens), tmp, progress
            )
            manifest = read_manifest(source)
            extras = [candidate_source(b, Path(source), manifest) for b in candidate_bundles]  # before the slow part
            space = space or default_space(profile, manifest, media=data is not None and model_dir is not None)
            if visual_tokens:
                space = replace(space, visual_tokens=tuple(visual_tokens))
            parts = build_parts(space, source, manifest, profile, model_dir, tmp / "parts", progress)
            cands = candidates(space, manifest)
            for i, extra in enumerate(extras):
                more_parts, more = candidate_space(extra, space, profile, tmp / f"candidate-{i}", progress)
                parts, cands = parts | more_parts, cands + more
        quality, metric = score(
            cands,
            parts,
            manifest,
            profile,
            source,
            Path(data) if data else None,
            questions,
            tmp,
            workers,
            ray_address,
            progress,
        )
        points = []
        for c in cands:
            latency, memory, longest = predicted(c, parts, manifest, profile, model_dir, prompt_tokens, answer_tokens)
            if longest <= c.seq_len:  # a question that does not fit the cache is no candidate
                points.append(Point(c, latency, memory, quality[c]))
        points = pareto(points)
        if cascade:
            result = _cascade(
                points,
                parts,
                manifest,
                profile,
                metric,
                source,
                data,
                questions,
                tolerance,
                tmp,
                progress,
                memory_budget_mb,
            )
            result = _within(result, latency_budget_ms, memory_budget_mb)
        else:
            result = Result(profile, manifest, points, choose(points, latency_budget_ms, memory_budget_mb), metric)
        if apply is not None:
            write_chosen(result, parts, source, Path(apply), force)
        check = host_check(result, parts, source, tmp / "chosen", model_dir, answer_tokens)
    return replace(result, host=check)


def _cascade(points, parts, manifest, profile, metric, source, data, questions, tolerance, tmp, progress, memory_mb):
    """The cascade objective: the large bundle is the float source (its slowest all-fp32 point stands for its cost)."""
    floats = [
        p
        for p in points
        if all(v == "fp32" for _, v in p.candidate.precisions)
        and not any(candidate_bundle(s) for _, s in p.candidate.settings)  # a candidate bundle is no large one
    ]
    if not floats:
        raise InputError("--cascade needs the float bundle among the candidates; allowed: a space with fp32")
    large = max(floats, key=lambda p: p.latency_ms)
    draft = Result(profile, manifest, points, large, metric)
    asked = read_questions(data, questions)
    choice = cascade_choice(draft, parts, source, asked, large, tolerance, tmp, progress, memory_mb)
    return replace(draft, chosen=choice.point, cascade=choice)


def _within(result: Result, latency_budget_ms: float, memory_budget_mb: float) -> Result:
    """The cascade's choice (its small bundle within the memory budget), refused (one line) when its cost per
    question is over the latency budget."""
    c = result.cascade
    if c.cost_ms > latency_budget_ms:
        raise InputError(
            f"the cheapest cascade costs {c.cost_ms:.1f} ms per question and its small bundle {c.point.memory_mb:.0f} MB;"
            f" allowed: {latency_budget_ms:g} ms and {memory_budget_mb:g} MB"
        )
    return result
