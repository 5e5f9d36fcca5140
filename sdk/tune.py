"""`edgemfm tune`: the best-quality point of resolution, tokens, sequence length and precision under a budget.

    float bundle (+ checkpoint) ─► parts: each component at each setting and precision (tune_parts)
        │ candidates = image (size, grid) x audio window x max sequence length x precision per component
        │ latency: cost.predict over the candidate's parts on the device (one question: encoder, prompt
        │          prefill with the media rows, answer tokens decoded); memory: weights + KV cache + activation
        │ quality: held-out exact match through the runtime (--data), else the worst output cosine of
        │          any component against float on calibration inputs (tune_quality)
        ▼ Pareto frontier (latency, memory down; quality up) ─► chosen: best quality within the budgets

Example:
    >>> result = tune(device="pi5", latency_budget_ms=900, bundle="bundles/demo-host", data="work/demo/data")  # doctest: +SKIP
    >>> result.chosen.latency_ms <= 900                                                                         # doctest: +SKIP
    True
"""

from __future__ import annotations

import itertools
import math
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgemfm.bundle import check_output, read_manifest
from edgemfm.cost import kv_bytes, predict
from edgemfm.errors import InputError
from edgemfm.manifest import Manifest
from edgemfm.profiles import DeviceProfile, load_profile
from edgemfm.quantizers import presets
from edgemfm.tune_parts import Part, Space, build_parts, media_encoders, media_rows, settings_of, variant_preprocess
from edgemfm.tune_quality import TaskJob, answer_rate, assemble, read_questions, recipe_of, run_jobs

PROMPT_TOKENS = 32  # a short question in the chat template, before its media rows
ANSWER_TOKENS = 4  # the demo's answers are a word or a digit, and the end token


@dataclass(frozen=True)
class Candidate:
    settings: tuple[tuple[str, tuple], ...]  # (component, setting) for every component
    precisions: tuple[tuple[str, str], ...]  # (component, fp32 | int8 | int4)
    seq_len: int  # KV cache positions

    def describe(self, manifest: Manifest) -> dict[str, str]:
        settings, precisions = dict(self.settings), dict(self.precisions)
        out = {}
        for name in manifest.components:
            s = settings[name]
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
    limit = profile.streaming.max_seq_len
    demo_media = media and manifest.family == "edgemfm-demo"
    return Space(
        image=((160, 1), (160, 2), (224, 1), (224, 2)) if demo_media else (),
        audio=(1.2, 2.0) if demo_media else (),
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
        report={**manifest.report, "parity": {n: {"nodes": p.nodes} for n, p in chosen.items()}},
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


def _quality(
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
    progress: Any,
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
        preprocess = variant_preprocess(manifest, kind, setting)
        out = assemble(
            chosen, manifest, preprocess, c.seq_len, recipe_of(dict(c.precisions), specs), source, scratch / f"eval-{i}"
        )
        jobs.append(TaskJob(str(out), asked[kind]))
    rates = dict(zip(keys, run_jobs(answer_rate, jobs, workers, ray_address, progress)))
    total = sum(len(asked[k]) for k in kinds)
    scores = {}
    for c in cands:
        s, p = dict(c.settings), dict(c.precisions)
        dec = p[manifest.generation.decoder]
        scores[c] = sum(rates[(k, s[e], p[e], dec)] * len(asked[k]) for k, e in kinds.items()) / total
    return scores, f"held-out exact match ({total} questions: " + ", ".join(f"{len(asked[k])} {k}" for k in kinds) + ")"


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
    progress: bool = True,
    apply: str | Path | None = None,
    force: bool = False,
) -> Result:
    """Search the space for `device`; returns every point, the frontier flags and the chosen point.

    `bundle` is a float bundle to start from (default: export `model`, the demo model when None);
    `model` is also what media knobs re-export encoders from. `data` holds eval.jsonl for a
    held-out task; without it quality is each component's fidelity to float. `apply` writes the
    chosen point as a bundle there (an existing one only with `force`).

    Example:
        >>> r = tune("pi5", 900, bundle="bundles/demo-host", model=demo_dir, data="/tmp/demo-data")  # doctest: +SKIP
        >>> r.chosen.candidate.describe(r.manifest)["text_decoder"]                                 # doctest: +SKIP
        'int8'
    """
    from rich.progress import Progress

    profile = load_profile(device)
    memory_budget_mb = profile.default_memory_budget_mb if memory_budget_mb is None else memory_budget_mb
    if not 0 < latency_budget_ms < math.inf or not 0 < memory_budget_mb < math.inf:
        raise InputError(
            f"budgets must be positive; got latency {latency_budget_ms!r} ms, memory {memory_budget_mb!r} MB"
        )
    if workers < 1:
        raise InputError(f"--workers {workers} is not allowed; allowed: 1 or more")
    if apply is not None:
        check_output(apply, force, inputs=(model, bundle, data))  # before the slow part
    with (
        tempfile.TemporaryDirectory(prefix="edgemfm-tune-", dir=scratch) as tmp,
        Progress(transient=True, disable=not progress) as bar,
    ):
        tmp = Path(tmp)
        from edgemfm.toolchain import quiet

        with quiet():  # the toolchain's own warnings and bars; ours tells the story
            source, model_dir = _sources(model, bundle, data is not None, tmp, bar)
            manifest = read_manifest(source)
            space = space or default_space(profile, manifest, media=data is not None and model_dir is not None)
            parts = build_parts(space, source, manifest, profile, model_dir, tmp / "parts", bar)
        cands = candidates(space, manifest)
        quality, metric = _quality(
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
            bar,
        )
        points = []
        for c in cands:
            latency, memory, longest = predicted(c, parts, manifest, profile, model_dir, prompt_tokens, answer_tokens)
            if longest <= c.seq_len:  # a question that does not fit the cache is no candidate
                points.append(Point(c, latency, memory, quality[c]))
        points = pareto(points)
        chosen = choose(points, latency_budget_ms, memory_budget_mb)
        result = Result(profile, manifest, points, chosen, metric)
        if apply is not None:
            _apply(result, parts, source, Path(apply), force)
        check = host_check(result, parts, source, tmp / "chosen", model_dir, answer_tokens)
    return replace(result, host=check)


def host_check(
    result: Result,
    parts: dict[Any, Part],
    source: Path,
    out: Path,
    model_dir: Path | None,
    answer_tokens: int,
    repeats: int = 3,
) -> HostCheck:
    """Assemble the chosen point at `out` and time one question per media kind on this machine.

    A question is what the prediction counts: the media item encoded, the templated prompt with
    its media rows prefilled, `answer_tokens` decoded (never stopping early); the median of
    `repeats` runs after a warm-up. The prediction is the cost model's for the host profile, with
    the prompt's real token count.

    Example:
        >>> check = host_check(result, parts, Path("bundles/demo-host"), Path("/tmp/chosen"), None, 4)  # doctest: +SKIP
        >>> round(check.measured_ms / check.predicted_ms, 1)                                            # doctest: +SKIP
        1.1
    """
    import statistics
    import time

    from edgemfm.bench import media_item
    from edgemfm.runtimes.decoding import Sampler
    from edgemfm.runtimes.generation import decode
    from edgemfm.runtimes.pipeline import load

    c, m = result.chosen.candidate, result.manifest
    pipe = load(_apply(result, parts, source, out, force=True, link=True), threads=1)
    kinds = {kind: encoder for encoder, kind in media_encoders(m).items()} or {"text": None}
    measured, predicted_ms = 0.0, 0.0
    for kind, encoder in kinds.items():
        media = {} if encoder is None else {kind: [media_item(pipe.manifest, kind)]}

        def question() -> tuple[float, int]:
            start, cache = time.perf_counter(), pipe.decoder.new_cache()
            # an encoder-decoder's audio is attended to, not prefilled
            left, cache.fixed = pipe.attend(media)  # noqa: B023 (called inside this iteration)
            logits = pipe.prefill(cache, "What is this?", left)
            prompt = cache.length
            for _ in decode(pipe.decoder, cache, logits, Sampler(), eos=(), limit=answer_tokens):
                pass
            return time.perf_counter() - start, prompt

        question()
        runs = [question() for _ in range(repeats)]
        measured = max(measured, 1000 * statistics.median(t for t, _ in runs))
        rows = 0 if encoder is None else media_rows(m, kind, dict(c.settings)[encoder], model_dir)
        prompt_tokens = runs[0][1] - rows
        host = predicted(c, parts, m, load_profile("host"), model_dir, prompt_tokens, answer_tokens, only=(kind,))[0]
        predicted_ms = max(predicted_ms, host)
    return HostCheck(measured, predicted_ms)


def _apply(result: Result, parts: dict[Any, Part], source: Path, out: Path, force: bool, link: bool = False) -> Path:
    """Write the chosen point as a bundle for the tuned device at `out` (hard links to the parts with `link`)."""
    m, c = result.manifest, result.chosen.candidate
    kind_of, preprocess = media_encoders(m), m.preprocess
    for name, setting in c.settings:
        if name in kind_of:
            preprocess = variant_preprocess(replace(m, preprocess=preprocess), kind_of[name], setting)
    report = {
        "device": result.profile.name,
        "latency_ms": result.chosen.latency_ms,
        "memory_mb": result.chosen.memory_mb,
        "quality": result.chosen.quality,
        "metric": result.metric,
        "components": c.describe(m),
    }
    target = replace(m, profile=result.profile.name, streaming=replace(m.streaming, **vars(result.profile.streaming)))
    return assemble(
        chosen_parts(c, parts),
        target,
        preprocess,
        c.seq_len,
        recipe_of(dict(c.precisions), precision_specs(result.profile)),
        source,
        out,
        link=link,
        report=report,
        force=force,
    )


def _sources(
    model: str | Path | None, bundle: str | Path | None, media: bool, tmp: Path, bar: Any
) -> tuple[Path, Path | None]:
    """The float bundle to start from, and the checkpoint (None when a bundle alone will do)."""
    from edgemfm.exporting import export

    model_dir = None
    if model is not None:
        model_dir = Path(model)
        if not (model_dir / "config.json").is_file():
            raise InputError(f"model {str(model)!r} is not a checkpoint directory (no config.json)")
    elif bundle is None or (media and read_manifest(bundle).family == "edgemfm-demo"):
        from edgemfm.exporters import demo_sources

        task = bar.add_task("building the demo model", total=None)
        model_dir = demo_sources.build_default(tmp / demo_sources.MODEL_ID)
        bar.update(task, visible=False)
    if bundle is None:
        task = bar.add_task("exporting the float bundle", total=None)
        out = export(model_dir, device="host", out=tmp / "float", progress=False)
        bar.update(task, visible=False)
        return out, model_dir
    m = read_manifest(bundle)
    if m.report.get("precision", "fp32") != "fp32":
        raise InputError(
            f"bundle {str(bundle)!r} is {m.report['precision']}; allowed: an fp32 bundle (tune quantizes it)"
        )
    return Path(bundle), model_dir


def to_json(result: Result) -> str:
    """Every candidate with its predicted latency and memory, quality and frontier flag, as JSON.

    Example:
        >>> json.loads(to_json(result))["points"][0]["latency_ms"]   # doctest: +SKIP
        61.1
    """
    import json

    def row(p: Point) -> dict[str, Any]:
        return {
            "components": p.candidate.describe(result.manifest),
            "max_seq_len": p.candidate.seq_len,
            "latency_ms": round(p.latency_ms, 3),
            "memory_mb": round(p.memory_mb, 1),
            "quality": p.quality,
            "frontier": p.frontier,
            "chosen": p is result.chosen,
        }

    host = (
        {"measured_ms": round(result.host.measured_ms, 3), "predicted_ms": round(result.host.predicted_ms, 3)}
        if result.host
        else None
    )
    return (
        json.dumps(
            {
                "device": result.profile.name,
                "model": result.manifest.model_id,
                "metric": result.metric,
                "host": host,
                "points": [row(p) for p in sorted(result.points, key=lambda p: p.latency_ms)],
            },
            indent=1,
        )
        + "\n"
    )


def table(result: Result) -> Any:
    """The frontier as a rich table, fastest first; the chosen point starred."""
    from rich.table import Table

    m = result.manifest
    t = Table(
        title=f"Pareto frontier on {result.profile.name} (predicted latency and memory; quality: {result.metric})"
    )
    t.add_column("")
    for name in m.components:
        t.add_column(name, overflow="fold")  # a setting wraps; the numbers never do
    for col in ("max seq", "latency ms", "memory MB", "quality"):
        t.add_column(col, no_wrap=True, justify="right")
    for p in sorted((p for p in result.points if p.frontier), key=lambda p: (p.latency_ms, p.memory_mb)):
        parts = p.candidate.describe(m)
        t.add_row(
            "*" if p is result.chosen else "",
            *(parts[n] for n in m.components),
            str(p.candidate.seq_len),
            f"{p.latency_ms:.1f}",
            f"{p.memory_mb:.0f}",
            f"{p.quality:.3f}",
        )
    return t


def plot(result: Result, path: str | Path, latency_budget_ms: float) -> Path:
    """Quality against predicted latency: every point, the frontier, the budget and the chosen point, as PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.scatter(
        [p.latency_ms for p in result.points], [p.quality for p in result.points], s=10, c="0.75", label="candidates"
    )
    front = sorted((p for p in result.points if p.frontier), key=lambda p: p.latency_ms)
    ax.scatter(
        [p.latency_ms for p in front],
        [p.quality for p in front],
        s=24,
        c="tab:blue",
        label="Pareto frontier (latency, memory, quality)",
    )
    best = []  # the latency-quality staircase of the frontier
    for p in front:
        if not best or p.quality > best[-1].quality:
            best.append(p)
    ax.step([p.latency_ms for p in best], [p.quality for p in best], where="post", c="tab:blue", lw=1)
    ax.axvline(latency_budget_ms, c="tab:red", ls="--", lw=1, label=f"budget {latency_budget_ms:g} ms")
    ax.scatter(
        [result.chosen.latency_ms], [result.chosen.quality], s=120, marker="*", c="tab:orange", zorder=3, label="chosen"
    )
    ax.set_xlabel(f"predicted latency of one question on {result.profile.name} (ms)")
    ax.set_ylabel(result.metric)
    ax.set_xscale("log")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"edgemfm tune: {result.manifest.model_id} on {result.profile.name}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
