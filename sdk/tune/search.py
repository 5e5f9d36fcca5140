"""The search of `edgemfm tune`: candidates, their predicted latency and memory, their quality, the frontier.

Example:
    >>> best = choose(pareto(points), latency_budget_ms=900, memory_budget_mb=512)   # doctest: +SKIP
    >>> best.frontier                                                              # doctest: +SKIP
    True
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgemfm.cost import kv_bytes, predict
from edgemfm.errors import InputError
from edgemfm.exporters import family_named
from edgemfm.jobs import run_jobs
from edgemfm.manifest import Manifest
from edgemfm.profiles import DeviceProfile
from edgemfm.progress import Progress
from edgemfm.quantizers import presets
from edgemfm.report import Parity
from edgemfm.tune.parts import (
    Part,
    Space,
    candidate_bundle,
    media_encoders,
    media_rows,
    settings_of,
    token_budget,
    variant_preprocess,
)
from edgemfm.tune.quality import TaskJob, answer_rate, assemble, read_questions, recipe_of

PROMPT_TOKENS = 32  # a short question in the chat template, before its media rows
ANSWER_TOKENS = 4  # the demo's answers are a word or a digit, and the end token


@dataclass(frozen=True)
class Candidate:
    settings: tuple[tuple[str, tuple], ...]  # (component, setting) for every component
    precisions: tuple[tuple[str, str], ...]  # (component, fp32 | int8 | int4)
    seq_len: int  # KV cache positions

    def describe(self, manifest: Manifest) -> dict[str, str]:
        settings, precisions = dict(self.settings), dict(self.precisions)
        images = {spec.encoder for kind, spec in manifest.prompt.media.items() if kind == "image"}
        out = {}
        for name in manifest.components:
            s = settings[name]
            if (
                candidate_bundle(s) is not None
            ):  # a graph of another float bundle (tune --candidates), named by its folder
                out[name] = f"{precisions[name]} ({Path(candidate_bundle(s)).name})"
                continue
            if token_budget(s) is not None:  # the bundle's own image setting, its rows cut to N
                out[name] = f"{precisions[name]} <={token_budget(s)} tokens"
                continue
            if len(s) == 1 and name in images:  # a pixel budget (Qwen2-VL): images within side x side
                out[name] = f"{precisions[name]} <={s[0]}x{s[0]}px"
                continue
            out[name] = precisions[name] + (f" {s[0]}px {s[1]}x{s[1]}" if len(s) == 2 else f" {s[0]:g}s" if s else "")
        return out


@dataclass(frozen=True)
class Point:
    candidate: Candidate
    latency_ms: float  # predicted: the slowest one-media question
    memory_mb: float  # predicted: weights + KV cache at seq_len + the largest activation
    quality: float  # exact match on the held-out questions, or the worst component cosine
    frontier: bool = False


@dataclass(frozen=True)
class Result:
    profile: DeviceProfile
    manifest: Manifest
    points: list[Point]
    chosen: Point
    metric: str  # what `quality` is
    host: HostCheck | None = None  # the chosen point run on this machine
    cascade: Any = None  # tune --cascade: the chosen small bundle's tune.cascade.CascadeChoice


@dataclass(frozen=True)
class HostCheck:
    """The chosen point assembled and run on this machine, beside the cost model's prediction for it here."""

    measured_ms: float  # median wall time of the slowest one-media question through the runtime
    predicted_ms: float  # the cost model's latency of the same questions on the host profile


def default_space(profile: DeviceProfile, manifest: Manifest, media: bool) -> Space:
    """Small by default: each knob at the model's own value and one cheaper one."""
    available = [
        p for p in ("fp32", "int8", "int4") if p == "fp32" or {"int8": 8, "int4": 4}[p] in presets.specs(profile)
    ]
    decoder = manifest.components.get(manifest.generation.decoder)
    table = decoder.kv_cache.rotary_table if decoder is not None and decoder.kv_cache else 0
    # a rotation inside GroupQueryAttention reads a table row per cached entry: no longer cache than its rows
    limit = min(profile.streaming.max_seq_len, table or profile.streaming.max_seq_len)
    knobs = family_named(manifest.family).media_knobs if media else None  # None: the family has no media knobs
    return Space(
        image=knobs.image if knobs else (),
        audio=knobs.audio if knobs else (),
        seq_lens=tuple(sorted({min(256, limit), min(512, limit), limit})),
        encoder_precisions=tuple(
            p for p in available if p != "int4"
        ),  # small towers: int4 would save little, and the space stays small
        decoder_precisions=tuple(available),
    )


def candidates(space: Space, manifest: Manifest) -> list[Candidate]:
    """Every combination: each component's settings x its precisions x sequence lengths."""
    names = list(manifest.components)
    per_component = [
        [(name, s, p) for s in settings_of(space, manifest, name) for p in space.precisions_of(name, manifest)]
        for name in names
        if name in media_encoders(manifest)
    ]
    others = [n for n in names if n not in media_encoders(manifest)]
    out = []
    for combo in itertools.product(*per_component, space.decoder_precisions, space.seq_lens):
        *encoders, decoder_precision, seq_len = combo
        settings = {n: s for n, s, _ in encoders} | {n: () for n in others}
        precisions = {n: p for n, _, p in encoders} | {n: decoder_precision for n in others}
        out.append(Candidate(tuple((n, settings[n]) for n in names), tuple((n, precisions[n]) for n in names), seq_len))
    return out


def chosen_parts(c: Candidate, parts: dict[Any, Part]) -> dict[str, Part]:
    precisions = dict(c.precisions)
    return {name: parts[(name, setting, precisions[name])] for name, setting in c.settings}


def predicted(
    c: Candidate,
    parts: dict[Any, Part],
    manifest: Manifest,
    profile: DeviceProfile,
    model_dir: Path | None,
    prompt_tokens: int,
    answer_tokens: int,
    only: tuple[str, ...] | None = None,
) -> tuple[float, float, int]:
    """(latency ms of the slowest one-media question, memory MiB, longest question's tokens); `only`: these media kinds alone."""
    chosen = chosen_parts(c, parts)
    m = replace(
        manifest,
        components={n: p.record for n, p in chosen.items()},
        recipe=recipe_of(dict(c.precisions), precision_specs(profile)),
        report=replace(manifest.report, parity={n: Parity(nodes=p.nodes) for n, p in chosen.items()}),
    )
    kinds = {
        kind: (encoder, media_rows(manifest, kind, dict(c.settings)[encoder], model_dir))
        for encoder, kind in media_encoders(manifest).items()
        if only is None or kind in only
    } or {"text": (None, 0)}
    decoder = manifest.generation.decoder
    latency, longest = 0.0, 0
    for kind, (encoder, rows) in kinds.items():  # noqa: B007
        tokens = prompt_tokens + rows
        calls = {
            (e.component, e.work.split()[0]): e.latency_ms for e in predict(m, profile, context=tokens, prefill=tokens)
        }
        total = calls[(decoder, "prefill")] + answer_tokens * calls[(decoder, "decode")]
        total += calls.get((encoder, "one"), 0.0) + calls.get((manifest.generation.embedding, "1"), 0.0)
        latency, longest = max(latency, total), max(longest, tokens + answer_tokens)
    weights = sum(p.record.weight_bytes for p in chosen.values())
    activation = max(p.record.peak_activation_bytes for p in chosen.values())
    memory = weights + kv_bytes(m.components[decoder], c.seq_len) + activation
    return latency, memory / 2**20, longest


def pareto(points: list[Point]) -> list[Point]:
    """`points` with `frontier` set on those no other point beats or equals in all of latency, memory and quality."""

    def dominates(a: Point, b: Point) -> bool:
        no_worse = a.latency_ms <= b.latency_ms and a.memory_mb <= b.memory_mb and a.quality >= b.quality
        better = a.latency_ms < b.latency_ms or a.memory_mb < b.memory_mb or a.quality > b.quality
        return no_worse and better

    return [replace(p, frontier=not any(dominates(q, p) for q in points)) for p in points]


def choose(points: list[Point], latency_budget_ms: float, memory_budget_mb: float) -> Point:
    """The best quality within both budgets (then the fastest, then the smallest); refuses when none fits."""
    fits = [p for p in points if p.latency_ms <= latency_budget_ms and p.memory_mb <= memory_budget_mb]
    if not fits:
        fastest = min(points, key=lambda p: (p.latency_ms, p.memory_mb))
        smallest = min(points, key=lambda p: (p.memory_mb, p.latency_ms))
        raise InputError(
            f"no candidate meets the budget: the fastest needs {fastest.latency_ms:.1f} ms and the smallest "
            f"{smallest.memory_mb:.0f} MB; allowed: {latency_budget_ms:g} ms and {memory_budget_mb:g} MB"
        )
    return max(fits, key=lambda p: (p.quality, -p.latency_ms, -p.memory_mb))


def precision_specs(profile: DeviceProfile) -> dict[str, Any]:
    """fp32 / int8 / int4 -> the spec the device's preset gives it (None: float)."""
    bits = presets.specs(profile)
    return {"fp32": None, **{p: bits[b] for p, b in (("int8", 8), ("int4", 4)) if b in bits}}


def score(
    cands: list[Candidate],
    parts: dict[Any, Part],
    manifest: Manifest,
    profile: DeviceProfile,
    source: Path,
    data: Path | None,
    questions: int,
    scratch: Path,
    workers: int,
    ray_address: str | None,
    progress: Progress | None,
) -> tuple[dict[Candidate, float], str]:
    """Each candidate's quality: held-out exact match (with `data`), else the worst component cosine."""
    if data is None:
        worst = {
            c: min((p.cosine for p in chosen_parts(c, parts).values() if p.cosine is not None), default=1.0)
            for c in cands
        }
        return worst, "worst output cosine vs float"
    asked = read_questions(data, questions)
    encoders = media_encoders(manifest)
    kinds = {kind: encoder for encoder, kind in encoders.items() if kind in asked}
    # one job per (media kind, its encoder part, the decoder precision): the rest of the candidate does not touch its questions
    keys = sorted(
        {
            (kind, dict(c.settings)[enc], dict(c.precisions)[enc], dict(c.precisions)[manifest.generation.decoder])
            for c in cands
            for kind, enc in kinds.items()
        },
        key=str,
    )
    jobs, specs = [], precision_specs(profile)
    for i, (kind, setting, enc_precision, dec_precision) in enumerate(keys):
        enc = kinds[kind]
        c = next(
            c
            for c in cands
            if dict(c.settings)[enc] == setting
            and dict(c.precisions)[enc] == enc_precision
            and dict(c.precisions)[manifest.generation.decoder] == dec_precision
        )
        chosen = chosen_parts(c, parts)
        preprocess = variant_preprocess(manifest, kind, setting, chosen[enc])
        out = assemble(
            chosen, manifest, preprocess, c.seq_len, recipe_of(dict(c.precisions), specs), source, scratch / f"eval-{i}"
        )
        jobs.append(TaskJob(str(out), asked[kind]))
    rates = dict(zip(keys, run_jobs(answer_rate, jobs, workers, ray_address, progress, "measuring quality")))
    total = sum(len(asked[k]) for k in kinds)
    scores = {}
    for c in cands:
        s, p = dict(c.settings), dict(c.precisions)
        dec = p[manifest.generation.decoder]
        scores[c] = sum(rates[(k, s[e], p[e], dec)] * len(asked[k]) for k, e in kinds.items()) / total
    return scores, f"held-out exact match ({total} questions: " + ", ".join(f"{len(asked[k])} {k}" for k in kinds) + ")"
