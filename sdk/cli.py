"""The `edgemfm` command line: devices, export, prune, finetune, run, chat, tune, inspect, bench.

A user's mistake prints one line (`edgemfm: error: ...`) and exits with code 2; `run` imports
neither torch nor transformers nor onnx.

Example:
    $ edgemfm devices
    $ edgemfm export --device jetson --out bundles/default-jetson
    $ edgemfm run bundles/default-jetson --prompt "What is in the picture?" --image cat.png
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgemfm import arguments as A
from edgemfm import leftovers, speech
from edgemfm.configs import DEFAULT_TOLERANCE_DB, ExportConfig, FinetuneConfig
from edgemfm.errors import EdgemfmError, InputError
from edgemfm.profiles import list_profiles, load_profile
from edgemfm.progress import Progress
from edgemfm.records import to_dict
from edgemfm.report import Pruning, Recovery, Report

# soft_wrap: a line is never broken at the console's width (80 columns when piped), so a message stays
# one line in a log or under grep, and the terminal wraps what it must.
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@contextmanager
def rich_progress() -> Iterator[Progress]:
    """A rich bar, cleared when the block ends, and the callback (`edgemfm.progress`) that drives it:
    the core only reports what it does; drawing it is the command line's business.

    Example:
        >>> with rich_progress() as progress:  # doctest: +SKIP
        ...     export(ExportConfig(device="pi5"), progress)
    """
    from rich.progress import Progress as Bar

    with Bar(transient=True) as bar:
        task = bar.add_task("starting", total=None)

        def report(description: str, fraction: float | None) -> None:
            total = None if fraction is None else 1.0  # None: rich pulses the bar instead of filling it
            bar.update(task, description=description, total=total, completed=fraction or 0.0)

        yield report


def cmd_devices(args: argparse.Namespace) -> None:
    if args.action == "show":
        if not args.name:
            raise EdgemfmError("devices show needs a device NAME; see `edgemfm devices`")
        p = load_profile(args.name)
        out.print_json(json.dumps(to_dict(p)))
        return
    profiles = list_profiles()
    if args.json:
        print(json.dumps([to_dict(p) for p in profiles], indent=2))
        return
    table = Table(title="edgemfm device profiles")
    for col in ("name", "aliases", "memory GB (usable)", "GB/s", "int8 TOPS", "formats"):
        table.add_column(col, no_wrap=col == "name")
    for p in profiles:
        table.add_row(
            p.name,
            ", ".join(p.aliases),
            f"{p.memory_gb:g} ({p.usable_memory_gb:g})",
            f"{p.bandwidth_gbps:g}",
            f"{p.peak_int8_gops / 1000:.2g}",
            ", ".join(p.formats),
        )
    out.print(table)


def cmd_export(args: argparse.Namespace) -> None:
    from edgemfm.exporting import export, resolve

    config = ExportConfig(
        model=args.model,
        device=args.device,
        out=args.out,
        format=args.format,
        precision=args.precision,
        force=args.force,
        fuse=not args.no_fuse,
        calibration=args.calibration,
        memory_budget_mb=args.memory_budget,
        accuracy_tolerance_db=args.accuracy_tolerance,
        max_seq_len=args.max_seq_len,
        prune=tuple(args.prune),
        recover=args.recover,
        revision=args.revision,
        visual_tokens=args.visual_tokens,
    )
    if "," in args.device or args.ray is not None:
        return _export_fleet(config, args)
    if args.dry_run:  # the config export would run, checked against the profile: nothing is built or fetched
        print(json.dumps(to_dict(resolve(config)), indent=2))
        _say_model_source(config)
        return
    assets = _android_assets(args.app, config) if args.app else None  # refused before minutes of export
    with rich_progress() as progress:
        path = export(config, progress)
    _export_summary(path)
    if assets is not None:
        _put_into_app(path, assets)


def _say_model_source(config: ExportConfig) -> None:
    """On stderr (stdout is the JSON): the checkpoint a --dry-run found, or the Hub id it would fetch."""
    if config.model is not None:
        from edgemfm.model_source import fetch_plan

        err.print(fetch_plan(config.model, config.revision), soft_wrap=True, markup=False, highlight=False)


def _put_into_app(path: Path, assets: Path) -> None:
    """Copy a float32-computing bundle into the Android app's assets, checked file by file."""
    from edgemfm.bundle import copy_bundle, read_manifest

    m = read_manifest(path)
    if floats := sorted({c.dtype for c in m.components.values()} - {"float32"}):
        raise InputError(
            f"the Android app feeds float32 tensors; this bundle computes in {floats[0]}; "
            "allowed --precision with --app: fp32, int8, int4, auto"
        )
    copy_bundle(path, assets)
    out.print(f"[green]put[/green] {path} into {assets} (checked: size and sha256 of every file)")


def _export_fleet(config: ExportConfig, args: argparse.Namespace) -> None:
    """One bundle per device under --out; a line per device; exit 2 when any failed."""
    from edgemfm.fleet import export_fleet, parse_devices

    if config.out is None:
        raise InputError("--out is required with several devices: the folder that will hold one bundle per device")
    if args.dry_run:  # each device's resolved config
        from edgemfm.exporting import resolve

        for name in parse_devices(args.device):
            print(json.dumps(to_dict(resolve(replace(config, device=name, out=f"{config.out}/{name}"))), indent=2))
        _say_model_source(config)
        return
    with rich_progress() as progress:
        progress(f"exporting for {args.device}", None)
        report = export_fleet(config, args.device, workers=args.workers, ray_address=args.ray)
    for d in report.devices:
        if d.bundle is not None:
            _export_summary(Path(d.bundle))
        else:
            err.print(f"[red]failed[/red] {d.device}: {d.error}", soft_wrap=True)
    if report.failed:
        raise EdgemfmError(
            f"{len(report.failed)} of {len(report.devices)} devices failed; the others' bundles are in {report.out}"
        )


def _export_summary(path: Path) -> None:
    """What was written: size, delegation, pruning and what was kept float."""
    from edgemfm.bundle import read_manifest

    m = read_manifest(path)
    size = sum(f.bytes for f in m.files.values())
    out.print(f"[green]wrote[/green] {path} ({len(m.components)} components, {size / 2**20:.1f} MiB) for {m.profile}")
    for name, d in m.report.delegation.items():  # never silent about what the backend did not take
        ops = ", ".join(f"{op} x{n}" for op, n in d.non_delegated_ops.items())
        out.print(
            f"  {name}: {d.delegated_nodes} nodes delegated to {d.backend}, {d.non_delegated_nodes} not"
            + (f" ({ops})" if ops else ""),
            soft_wrap=True,
        )
    if m.report.pruning is not None:
        _pruning_summary(m.report.pruning)
    if m.report.quantization and m.report.float_units:
        out.print(f"kept float: {len(m.report.float_units)} weighted units (see `edgemfm inspect {path}`)")


def _android_assets(app: str, config: ExportConfig) -> Path:
    """Where `--app` puts the bundle: the Android project's app/src/main/assets/bundle (BundleAssets.java reads it)."""
    manifest = Path(app) / "app" / "src" / "main" / "AndroidManifest.xml"
    if not manifest.is_file():
        raise InputError(f"--app {app!r} is not an Android project: it has no app/src/main/AndroidManifest.xml")
    if config.format != "onnx":
        raise InputError(
            f"--app runs the bundle with ONNX Runtime; --format {config.format!r} is not allowed; allowed: onnx"
        )
    return manifest.parent / "assets" / "bundle"


def _pruning_summary(report: Pruning) -> None:
    """What was pruned, where and why, one row per stage."""
    table = Table(title=f"pruned {Path(report.source or '-').name}")
    for col in ("component", "granularity", "removed", "where", "importance removed", "why"):
        table.add_column(col)
    for s in report.stages:
        where = list(s.removed) if s.granularity == "blocks" else f"{s.count} in each of {len(s.removed)} layers"
        m = s.summary
        margin = (
            f"{m.removed_share:.1%} of the summed score (mean {m.removed_mean:.3g} vs {m.kept_mean:.3g} kept)"
            if m
            else "-"
        )
        table.add_row(s.component, s.granularity, str(s.count), str(where), margin, s.why)
    out.print(table)
    p = report.parameters
    out.print(f"parameters {p.before:,} -> {p.after:,} (-{p.removed / p.before:.1%}); {report.uniform}")
    if isinstance(rec := report.recovery, Recovery):
        out.print(
            f"recovery: {rec.config['steps']} steps of distillation, KL {rec.loss.first:.3f} -> {rec.loss.last:.3f} ({rec.seconds:.0f} s)"
        )


def cmd_prune(args: argparse.Namespace) -> None:
    from edgemfm.pruners.prune import PruneConfig, prune, read_report

    config = PruneConfig(blocks=args.blocks, heads=args.heads, mlp=args.mlp, component=args.component)
    with rich_progress() as progress:
        path = prune(
            args.model,
            args.out,
            config,
            data=args.data,
            force=args.force,
            progress=progress,
            recover=args.recover,
            revision=args.revision,
        )
    report = read_report(path)
    _pruning_summary(report)
    items = ", ".join(f"{c}: {v}" for c, v in report.calibration.items.items())
    out.print(f"[green]wrote[/green] {path} (calibration from {report.calibration.data}; {items})")


def cmd_run(args: argparse.Namespace) -> None:
    from edgemfm.runtimes import cascade, pipeline

    options = dict(
        device=args.device,
        threads=args.threads,
        memory_budget=args.memory_budget,
        draft=args.draft,
        draft_k=args.draft_k,
        trusted_keys=args.trusted_key or None,
    )
    if args.cascade:
        pipe = cascade.load(
            args.bundle,
            args.cascade,
            args.escalate_below,
            on_demand=args.on_demand,
            self_test=args.self_test,
            **options,
        )
    else:
        pipe = pipeline.load(args.bundle, **options)
    err.print(f"edgemfm: running on {pipe.provider}", highlight=False)
    if speech.wants_longform(pipe, args):
        speech.run(pipe, args)
        return
    pieces = pipe.generate(
        args.prompt,
        images=args.image,
        audio=args.audio,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop=args.stop,
    )
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if args.cascade:
        err.print(
            f"edgemfm: answered by the {pipe.answered_by} bundle "
            f"(self-test {pipe.test} {pipe.score:.3f}, escalate below {pipe.threshold:.3f})"
        )
    if args.draft:
        s = pipe.speculation
        err.print(
            f"edgemfm: draft accepted {s['accepted']} of {s['proposed']} proposed tokens in {s['target_calls']} target calls"
            f" (draft {s.get('draft_ms')} ms per token; target ms per call by tokens checked: {s.get('target_ms')})"
        )


def cmd_keygen(args: argparse.Namespace) -> None:
    from edgemfm.signing import keygen

    private, public = keygen(args.out, force=args.force)
    out.print(f"[green]wrote[/green] {private} (private: keep it secret) and {public} (give it to `run --trusted-key`)")


def cmd_sign(args: argparse.Namespace) -> None:
    from edgemfm.signing import sign

    out.print(f"[green]wrote[/green] {sign(args.bundle, args.key)}")


def cmd_chat(args: argparse.Namespace) -> None:
    from edgemfm.runtimes import pipeline

    pipe = pipeline.load(
        args.bundle, args.device, args.threads, args.memory_budget, encoder_cache_mb=args.encoder_cache
    )
    err.print(f"edgemfm: chatting on {pipe.provider} (/image PATH, /reset; end of input ends)", soft_wrap=True)
    session, images = pipe.chat(), list(args.image)
    for line in sys.stdin:
        line = line.strip()
        if line == "/reset":
            session.reset()
            err.print("edgemfm: conversation reset")
        elif line.startswith("/image "):
            images.append(line.removeprefix("/image ").strip())
        elif line:
            for piece in session.ask(line, images=images, max_new_tokens=args.max_new_tokens):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            images = []


def cmd_bench(args: argparse.Namespace) -> None:
    from edgemfm.bench import BenchConfig, bench, plot, plotting, table, write_report

    if args.cascade:
        _bench_cascade(args)
        return
    config = BenchConfig(
        prompt=args.prompt,
        tokens=args.tokens,
        repeats=args.repeats,
        warmup=args.warmup,
        threads=args.threads,
        text=args.text,
        device=args.device,
    )
    if args.plot:
        plotting(args.plot)  # a bad path or a missing matplotlib fails before minutes of measuring
    with rich_progress() as progress:
        report = bench([args.bundle, *args.baselines], config, progress)
    out.print(table(report))
    if args.json:
        write_report(report, args.json)
        out.print(f"[green]wrote[/green] {args.json}")
    if args.plot:
        out.print(f"[green]wrote[/green] {plot(report, args.plot)}")


def _bench_cascade(args: argparse.Namespace) -> None:
    from edgemfm.cascade_bench import bench_cascade

    if args.escalate_below is None or args.data is None:
        raise InputError("bench --cascade needs --escalate-below and --data; allowed: a score or JSON, a data folder")
    with rich_progress() as progress:
        r = bench_cascade(
            args.bundle,
            args.cascade,
            args.escalate_below,
            args.data,
            args.half,
            args.on_demand,
            threads=args.threads,
            progress=progress,
        )
    large = "not measured (on demand)" if r.large_s is None else f"{r.large_s * 1e3:.0f} ms, {r.large_accuracy:.1%}"
    out.print(
        f"cascade ({r.mode}, {r.test} < {r.threshold:.3f} escalates): {r.questions} questions, "
        f"{r.escalated:.1%} escalated, {r.cascade_accuracy:.1%} right, {r.cascade_s * 1e3:.0f} ms "
        f"({r.cascade_cpu_s * 1e3:.0f} CPU ms) per question; large alone: {large}; "
        f"peak RSS {r.peak_rss_mib:.0f} MiB, {r.rss_after_mib:.0f} MiB after the last answer",
        highlight=False,
    )
    if args.json:
        Path(args.json).write_text(json.dumps(to_dict(r), indent=1) + "\n")
        out.print(f"[green]wrote[/green] {args.json}")


def cmd_finetune(args: argparse.Namespace) -> None:
    from edgemfm.finetune import finetune

    config = FinetuneConfig(
        model=args.model,
        data=args.data,
        eval=args.eval,
        out=args.out,
        steps=args.steps,
        align_steps=args.align_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        force=args.force,
        cache=args.cache,
        revision=args.revision,
        lora_rank=args.lora_rank,
    )
    with rich_progress() as progress:
        report = finetune(config, progress)
    acc = ", ".join(
        f"{kind} {a:.1%} of {report.questions[kind]} (base {report.accuracy_before.get(kind, 0):.1%})"
        for kind, a in report.accuracy.items()
    )
    out.print(f"[green]wrote[/green] {args.out}: held-out exact match {acc} ({report.seconds:.0f} s)")


def cmd_tune(args: argparse.Namespace) -> None:
    from edgemfm.tune import tune

    if "," in args.device:
        return _tune_fleet(args)
    with rich_progress() as progress:
        result = tune(
            args.device,
            args.latency_budget,
            args.memory_budget,
            model=args.model,
            bundle=args.bundle,
            data=args.data,
            questions=args.questions,
            workers=args.workers or 1,
            ray_address=args.ray,
            apply=args.apply,
            force=args.force,
            progress=progress,
            revision=args.revision,
            visual_tokens=tuple(args.visual_tokens or ()),
        )
    _tune_summary(result, args.latency_budget, args.plot, args.json, args.apply)


def _tune_fleet(args: argparse.Namespace) -> None:
    """One tuning per device; --plot, --json and --apply gain the device's name; exit 2 when any failed."""
    from edgemfm.fleet import tune_fleet

    with rich_progress() as progress:
        report = tune_fleet(
            args.device,
            args.latency_budget,
            args.memory_budget,
            model=args.model,
            bundle=args.bundle,
            revision=args.revision,
            apply=args.apply,
            force=args.force,
            workers=args.workers,
            ray_address=args.ray,
            progress=progress,
            data=args.data,
            questions=args.questions,
            visual_tokens=tuple(args.visual_tokens or ()),
        )
    for d in report.devices:
        if d.result is None:
            err.print(f"[red]failed[/red] {d.device}: {d.error}", soft_wrap=True)
            continue
        out.print(f"[bold]{d.device}[/bold]")
        plot, json_path = (None if p is None else _suffixed(p, d.device) for p in (args.plot, args.json))
        _tune_summary(d.result, args.latency_budget, plot, json_path, d.bundle)
    if report.failed:
        raise EdgemfmError(
            f"{len(report.failed)} of {len(report.devices)} devices failed; the others' results are above"
        )


def _suffixed(path: str, device: str) -> str:
    """`tune-frontier.png` for one device of several: `tune-frontier-<device>.png`."""
    p = Path(path)
    return str(p.with_name(f"{p.stem}-{device}{p.suffix}"))


def _tune_summary(result, budget_ms: float, plot_path: str, json_path: str | None, applied: str | None) -> None:
    """The frontier table, the chosen point, its host check; the plot and JSON written."""
    from edgemfm.tune import plot, table, to_json

    out.print(table(result))
    c = result.chosen
    out.print(
        f"chosen: {', '.join(f'{k} {v}' for k, v in c.candidate.describe(result.manifest).items())}, max seq {c.candidate.seq_len}: "
        f"{c.latency_ms:.1f} ms (budget {budget_ms:g}), {c.memory_mb:.0f} MB, quality {c.quality:.3f}",
        soft_wrap=True,
    )
    h = result.host
    out.print(
        f"chosen point on this host: {h.measured_ms:.1f} ms measured, {h.predicted_ms:.1f} ms predicted for the host profile"
    )
    out.print(
        f"{len(result.points)} candidates, {sum(p.frontier for p in result.points)} on the frontier; plot: {plot(result, plot_path, budget_ms)}"
    )
    if json_path:
        Path(json_path).write_text(to_json(result))
    if applied:
        out.print(f"[green]wrote[/green] {applied}")


def cmd_inspect(args: argparse.Namespace) -> None:
    from edgemfm.bundle import read_manifest

    m = read_manifest(args.bundle)
    if args.json:
        print(m.to_json(), end="")
        return
    out.print(f"[bold]{m.model_id}[/bold] ({m.family}) for [bold]{m.profile}[/bold], schema v{m.schema_version}")
    table = Table()
    for col in ("component", "size", "precision", "peak activation", "parity (max abs)"):
        table.add_column(col, no_wrap=True)
    parity = m.report.parity
    for name, c in m.components.items():
        spec = m.recipe.spec_for(name)
        q = m.report.quantization.get(name)
        bits = sorted({s.bits for s in q.schemes}) if q else []
        precision = (
            "+".join(f"int{b}" if b < 16 else "fp16" for b in bits) if bits else f"int{spec.bits}" if spec else c.dtype
        )
        table.add_row(
            name,
            f"{(c.weight_bytes if c.method else m.files[c.file].bytes) / 2**20:.2f} MiB",
            precision,  # a pte method: its own weights
            f"{c.peak_activation_bytes / 2**20:.2f} MiB",
            f"{parity[name].max_abs_diff:.1e}" if name in parity and parity[name].max_abs_diff is not None else "-",
        )
    out.print(table)
    if m.report.quantization:
        _quantization_table(m.report)
    if args.device:
        _print_predictions(m, load_profile(args.device))


def _quantization_table(report: Report) -> None:
    """Per component: how it was quantized, how close it stays to float, what stayed float and why."""
    table = Table(title=f"quantization ({report.precision}): outputs vs float on calibration data")
    for col in ("component", "schemes", "SQNR dB", "cosine", "float units"):
        table.add_column(col, no_wrap=True)
    for name, q in report.quantization.items():
        schemes = ", ".join(
            f"int{s.bits}/{s.method}" + (f"/g{s.group_size}" if s.group_size else "") for s in q.schemes
        )
        measured = q.sqnr_db is not None
        sqnr, cos = (f"{q.sqnr_db:.1f}", f"{q.cosine:.4f}") if measured else ("not measured", "-")
        table.add_row(name, schemes or "float", sqnr, cos, str(len(q.float_units)))
    out.print(table)
    for name, q in report.quantization.items():
        out.print(f"  nodes: {name}: " + (", ".join(f"{op} {n}" for op, n in q.quantized_nodes.items()) or "-"))
        if judged := q.judged:
            out.print(f"  judged: {name}: SQNR {judged.sqnr_db:.1f} dB on {judged.by}'s next-token distribution")
        for unit, note in q.notes.items():
            out.print(f"  note: {unit}: {note}")
    for unit, why in report.float_units.items():
        out.print(f"  float: {unit}: {why}")
    if plan := report.plan:
        met = "met" if plan.tolerance_met else "[red]NOT met[/red]"
        bits = [g.bits for g in plan.groups.values()]
        counts = ", ".join(f"{b if b < 32 else 'float'}: {bits.count(b)}" for b in sorted(set(bits)))
        out.print(
            f"auto plan: tolerance {plan.tolerance_db:g} dB {met}, budget {plan.memory_budget_mb:g} MiB; groups by bits: {counts}"
        )


def _print_predictions(manifest, profile) -> None:
    from edgemfm.cost import predict

    table = Table(title=f"predicted on {profile.name} (roofline)")
    for col in ("component", "one call", "GFLOP", "MB moved", "ms", "bound"):
        table.add_column(col)
    for e in predict(manifest, profile):
        table.add_row(
            e.component, e.work, f"{e.flops / 1e9:.3g}", f"{e.bytes / 1e6:.3g}", f"{e.latency_ms:.3g}", e.bound
        )
    out.print(table)
    for figure in ("bandwidth_gbps", "peak_fp32_gflops", "peak_int8_gops"):
        out.print(f"  {figure} = {getattr(profile, figure):g}: {profile.sources[figure]}", soft_wrap=True)
    for figure, value in vars(profile.cost).items():
        out.print(f"  cost.{figure} = {value:g}: {profile.sources['cost.' + figure]}", soft_wrap=True)


# --model as a Hub id: resolved through the Hugging Face cache (HF_HOME, HF_HUB_OFFLINE)
REVISION_HELP = "with a Hub id: branch, tag or commit (default: main)"


class Parser(argparse.ArgumentParser):
    """argparse that refuses in one line (`edgemfm: error: ...`, exit 2), as every other user mistake."""

    def error(self, message: str):
        raise EdgemfmError(f"{self.prog.removeprefix('edgemfm ')}: {message}")


def _prompt(raw: str) -> str:
    return A.utf8("prompt", raw)


def _runtime_arguments(p: argparse.ArgumentParser) -> None:
    """The bundle and how to run it: shared by run and chat."""
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("--image", action="append", default=[], help="image file (repeat for several)")
    p.add_argument("--max-new-tokens", type=A.COUNT, default=None, help="per answer (default: the bundle's setting)")
    p.add_argument("--device", type=A.name, help="profile whose execution providers to use (default: the bundle's)")
    p.add_argument("--threads", type=A.THREADS, default=0, help="threads per session (0: one per core)")
    p.add_argument(
        "--memory-budget", type=A.POSITIVE, metavar="MB", help="MiB the run may use (default: the profile's)"
    )


def parser() -> argparse.ArgumentParser:
    from edgemfm.runtimes.selftests import TESTS  # numpy only: the cascade's self-test names for --self-test

    p = Parser(prog="edgemfm", description="Deploy multimodal models to edge devices.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("devices", help="list device profiles, or show one")
    d.add_argument("action", nargs="?", choices=["show"], help="show one profile in full")
    d.add_argument("name", nargs="?", help="device name or alias (with show)")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=cmd_devices)

    e = sub.add_parser("export", help="export a model into a bundle for a device")
    e.add_argument(
        "--model", type=A.name, help="checkpoint directory or Hugging Face Hub id org/name (default: the demo model)"
    )
    e.add_argument("--revision", type=A.name, help=REVISION_HELP)
    e.add_argument(
        "--device", required=True, type=A.name, help="device name or alias (`edgemfm devices`), or several: pi5,jetson"
    )
    e.add_argument(
        "--out", type=A.name, help="bundle directory (default: MODEL-DEVICE); with several devices OUT/<profile name>/"
    )
    e.add_argument(
        "--workers",
        type=A.AT_LEAST_ONE,
        help="with several devices: processes (default: one per device, up to the CPUs)",
    )
    e.add_argument(
        "--ray", metavar="ADDRESS", type=A.name, help="export each device on this Ray cluster ('auto', or host:port)"
    )
    e.add_argument("--format", default="onnx", help="bundle format (default: onnx)")
    e.add_argument("--precision", default="fp32", help="fp32, fp16, int8, int4 or auto (default: fp32)")
    e.add_argument("--calibration", help="folder of images, .wav clips and prompt .txt files (default: a built-in set)")
    e.add_argument(
        "--memory-budget", type=A.POSITIVE, help="MB the weights must fit in under auto (default: the profile's)"
    )
    e.add_argument(
        "--accuracy-tolerance",
        type=A.FINITE,
        default=DEFAULT_TOLERANCE_DB,
        help=f"least SQNR in dB of each component's output under auto (default: {DEFAULT_TOLERANCE_DB:g})",
    )
    e.add_argument("--force", action="store_true", help="replace an existing output directory")
    e.add_argument(
        "--no-fuse", action="store_true", help="keep the exported graphs unfused (for runtimes without contrib ops)"
    )
    e.add_argument(
        "--max-seq-len",
        type=A.AT_LEAST_ONE,
        default=None,
        help="positions the KV cache holds: a pte program's static cache, an onnx decoder's rotary table (default: the profile's)",
    )
    e.add_argument(
        "--prune",
        action="append",
        default=[],
        metavar="[COMPONENT:]KEY=VALUE,...",
        help="prune first, e.g. mlp=0.2 or vision_encoder:blocks=1,mlp=0.3 (keys: blocks, heads, mlp); repeat per component",
    )
    e.add_argument(
        "--recover",
        type=A.COUNT,
        default=0,
        metavar="STEPS",
        help="with --prune: distil from the unpruned model for STEPS steps",
    )
    e.add_argument(
        "--visual-tokens",
        type=A.AT_LEAST_ONE,
        default=None,
        metavar="N",
        help="at most N decoder rows per image (per tile), cut inside the encoder graph (default: the family's own)",
    )
    e.add_argument(
        "--dry-run", action="store_true", help="print the resolved export config as JSON and stop (nothing is built)"
    )
    e.add_argument(
        "--app",
        metavar="ANDROID_PROJECT",
        help="also put the bundle, checked, into an Android project's assets (e.g. samples/android)",
    )
    e.set_defaults(func=cmd_export)

    pr = sub.add_parser(
        "prune", help="remove decoder blocks, attention heads or MLP channels; writes a smaller checkpoint"
    )
    pr.add_argument(
        "--model",
        required=True,
        help="Hugging Face checkpoint directory or Hub id (Llama-style decoder, LLaVA, Idefics3, Qwen2-Audio, Whisper)",
    )
    pr.add_argument("--revision", help=REVISION_HELP)
    pr.add_argument(
        "--component", default="text_decoder", help="text_decoder (default), vision_encoder or audio_encoder"
    )
    pr.add_argument("--out", required=True, help="checkpoint directory to write")
    pr.add_argument("--blocks", type=A.COUNT, default=0, help="number of whole blocks to remove")
    pr.add_argument(
        "--heads",
        type=A.FINITE,
        default=0.0,
        help="fraction of KV head groups (with their query heads) to remove per layer",
    )
    pr.add_argument("--mlp", type=A.FINITE, default=0.0, help="fraction of MLP channels to remove per layer")
    pr.add_argument(
        "--data",
        help="folder of .txt files (one sample a line), images and WAV files (default: built-in English, drawings, synthetic clips)",
    )
    pr.add_argument(
        "--recover",
        type=A.COUNT,
        default=0,
        metavar="STEPS",
        help="distil the pruned text decoder from the unpruned model for STEPS steps (default: 0, none)",
    )
    pr.add_argument("--force", action="store_true", help="replace an existing output directory")
    pr.set_defaults(func=cmd_prune)

    r = sub.add_parser("run", help="run a bundle on a prompt, streaming the answer")
    _runtime_arguments(r)
    r.add_argument(
        "--prompt", default="", type=_prompt, help="the question or instruction (default: none, e.g. to transcribe)"
    )
    r.add_argument(
        "--audio", action="append", default=[], help="audio file (repeat for several; -: raw PCM from stdin)"
    )
    r.add_argument(
        "--temperature", type=A.arg(A.number, float, low=0), default=0.0, help="0 (default): greedy; above 0: sampling"
    )
    r.add_argument("--top-k", type=A.COUNT, default=0, help="sample among the k most likely tokens (0: all)")
    r.add_argument("--top-p", type=A.PROBABILITY, default=1.0, help="sample within this probability mass (1: all)")
    r.add_argument("--seed", type=A.SEED, help="sampling seed: the same seed gives the same answer")
    r.add_argument("--stop", action="append", default=[], help="end the answer before this text (repeat for several)")
    r.add_argument(
        "--draft",
        metavar="BUNDLE|prompt",
        help="speculative decoding: a small bundle proposes tokens, or 'prompt': n-gram lookup in the prompt",
    )
    r.add_argument(
        "--draft-k",
        type=A.AT_LEAST_ONE,
        metavar="K",
        help="tokens the draft proposes per target call (default: the k that pays by measured costs)",
    )
    r.add_argument(
        "--cascade",
        metavar="SMALL_BUNDLE",
        help="a small bundle that answers first; the given bundle only when it fails its self-test",
    )
    r.add_argument(
        "--escalate-below",
        metavar="LOGPROB_OR_JSON",
        help="with --cascade: a self-test score, or a calibration JSON (it names its self-test)",
    )
    r.add_argument(
        "--self-test",
        choices=TESTS,
        help="with --cascade: the self-test (default: the calibration JSON's, else mean_logprob)",
    )
    r.add_argument(
        "--on-demand",
        action="store_true",
        help="with --cascade: keep only the small bundle loaded; open the given one for each escalated question",
    )
    r.add_argument(
        "--trusted-key",
        action="append",
        default=[],
        type=A.name,
        metavar="KEY.pub",
        help="refuse bundles not signed by this public key (repeat for several; see `edgemfm sign`)",
    )
    speech.add_arguments(r)
    r.set_defaults(func=cmd_run)

    k = sub.add_parser("keygen", help="write an Ed25519 key pair for signing bundles (needs edgemfm[sign])")
    k.add_argument("out", type=A.name, help="private key file to write; the public key goes to OUT.pub")
    k.add_argument("--force", action="store_true", help="replace existing key files")
    k.set_defaults(func=cmd_keygen)

    s = sub.add_parser("sign", help="sign a bundle's manifest (writes manifest.sig; needs edgemfm[sign])")
    s.add_argument("bundle", help="bundle directory")
    s.add_argument("--key", required=True, type=A.name, help="private key file from `edgemfm keygen`")
    s.set_defaults(func=cmd_sign)

    c = sub.add_parser("chat", help="chat with a bundle: a question per line of stdin, the KV cache kept across turns")
    _runtime_arguments(c)
    c.add_argument(
        "--encoder-cache",
        type=A.arg(A.number, float, low=0),
        metavar="MB",
        help="MiB of encoder rows kept for media seen again",
    )
    c.set_defaults(func=cmd_chat)

    b = sub.add_parser(
        "bench", help="measure a bundle's first-token time, decode rate, encoders, memory, size and perplexity"
    )
    b.add_argument("bundle", help="bundle directory")
    b.add_argument(
        "--baselines",
        nargs="*",
        default=[],
        metavar="BUNDLE",
        help="more bundles measured in the same run, one row each",
    )
    b.add_argument("--json", metavar="OUT", help="write every figure and the machine to this JSON file")
    b.add_argument("--plot", metavar="OUT.png", help="write a chart (needs matplotlib: the export extra)")
    b.add_argument("--text", help="perplexity of the decoder on this text file (default: not measured)")
    b.add_argument(
        "--prompt", default="Write a short story about a lighthouse keeper.", help="prompt prefilled before decoding"
    )
    b.add_argument("--tokens", type=A.AT_LEAST_ONE, default=64, help="tokens generated per run (default 64)")
    b.add_argument("--repeats", type=A.AT_LEAST_ONE, default=5, help="timed runs; medians are reported (default 5)")
    b.add_argument("--warmup", type=A.COUNT, default=1, help="untimed runs first (default 1)")
    b.add_argument("--threads", type=A.THREADS, default=1, help="threads per session (default 1; 0: one per core)")
    b.add_argument("--device", type=A.name, help="profile whose execution providers to use (default: the bundle's)")
    b.add_argument(
        "--cascade",
        metavar="SMALL_BUNDLE",
        help="measure the cascade SMALL_BUNDLE -> BUNDLE on --data's held-out questions instead (per question)",
    )
    b.add_argument("--escalate-below", metavar="SCORE_OR_JSON", help="with --cascade: as `edgemfm run`'s")
    b.add_argument("--data", help="with --cascade: a data folder with eval.jsonl (edgemfm finetune's format)")
    b.add_argument(
        "--half",
        choices=("all", "test", "calibration"),
        default="test",
        help="with --cascade: which held-out questions (test: every other one from the second; default)",
    )
    b.add_argument(
        "--on-demand", action="store_true", help="with --cascade: only the small bundle resident (see `run`)"
    )
    b.set_defaults(func=cmd_bench)

    f = sub.add_parser("finetune", help="fine-tune a model's projectors on domain questions (JSONL)")
    f.add_argument("--model", required=True, help="checkpoint directory or Hub id to start from")
    f.add_argument("--revision", help=REVISION_HELP)
    f.add_argument(
        "--data",
        required=True,
        help="training JSONL file, or a folder with train.jsonl and eval.jsonl (see edgemfm.finetune)",
    )
    f.add_argument(
        "--eval", help="held-out JSONL file (default: the folder's eval.jsonl, or every fifth of --data's questions)"
    )
    f.add_argument("--out", required=True, help="checkpoint directory to write")
    f.add_argument("--steps", type=A.COUNT, default=240, help="end-to-end steps through the decoder (default: 240)")
    f.add_argument("--align-steps", type=A.COUNT, default=100, help="projector alignment steps (default: 100)")
    f.add_argument("--batch-size", type=A.AT_LEAST_ONE, default=8)
    f.add_argument("--lr", type=A.POSITIVE, default=1e-3, help="learning rate of the end-to-end stage (default: 1e-3)")
    f.add_argument("--seed", type=A.SEED, default=0)
    f.add_argument(
        "--lora-rank", type=A.COUNT, default=0, help="LoRA rank on the decoder, merged on save (default: 0, none)"
    )
    f.add_argument(
        "--cache", help="folder keeping the frozen towers' features by file content, so reruns skip encoding"
    )
    f.add_argument("--force", action="store_true", help="replace an existing output directory")
    f.set_defaults(func=cmd_finetune)

    t = sub.add_parser(
        "tune", help="search resolution, tokens, sequence length and precision for the best quality under a budget"
    )
    t.add_argument(
        "--device",
        required=True,
        type=A.name,
        help="device profile name or alias (see `edgemfm devices`); several, comma-separated, tune each (pi5,jetson)",
    )
    t.add_argument(
        "--latency-budget", type=A.POSITIVE, required=True, metavar="MS", help="predicted latency of one question, ms"
    )
    t.add_argument(
        "--memory-budget",
        type=A.POSITIVE,
        metavar="MB",
        help="weights + KV cache + activation, MiB (default: the profile's)",
    )
    t.add_argument("--model", help="checkpoint directory or Hub id (default: the built-in demo model)")
    t.add_argument("--revision", help=REVISION_HELP)
    t.add_argument("--bundle", help="an fp32 bundle of the model to start from (default: export one)")
    t.add_argument(
        "--data", help="folder with eval.jsonl: quality is held-out exact match (default: fidelity to float)"
    )
    t.add_argument(
        "--questions", type=A.AT_LEAST_ONE, default=12, help="held-out questions per media kind (default: 12)"
    )
    t.add_argument(
        "--workers",
        type=A.AT_LEAST_ONE,
        help="processes evaluating candidates (default: 1); with several devices: devices tuned at once",
    )
    t.add_argument(
        "--ray", metavar="ADDRESS", help="evaluate (and tune each device) on this Ray cluster ('auto', or host:port)"
    )
    t.add_argument(
        "--plot", default="tune-frontier.png", help="PNG of the frontier to write (default: tune-frontier.png)"
    )
    t.add_argument("--json", metavar="PATH", help="also write every candidate, with its numbers, as JSON")
    t.add_argument(
        "--apply",
        metavar="OUT",
        help="export the chosen point as a bundle here; with several devices OUT/<profile name>/",
    )
    t.add_argument("--force", action="store_true", help="replace an existing --apply directory")
    t.add_argument(
        "--visual-tokens",
        type=A.AT_LEAST_ONE,
        nargs="+",
        metavar="N",
        help="visual-token budgets (rows per image or tile, as export --visual-tokens) searched beside the image settings",
    )
    t.set_defaults(func=cmd_tune)

    i = sub.add_parser("inspect", help="show a bundle's components, sizes, precisions and report")
    i.add_argument("bundle", help="bundle directory")
    i.add_argument("--json", action="store_true", help="print the manifest")
    i.add_argument("--device", type=A.name, help="also predict each component's latency on this device (roofline)")
    i.set_defaults(func=cmd_inspect)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        with leftovers.terminating_unwinds():  # SIGTERM cleans up like Ctrl-C
            args.func(args)
    except EdgemfmError as e:
        # escaped: a message quoting `edgemfm[sign]` or a file named `x[1].png` is not rich markup
        err.print(f"[red]edgemfm: error:[/red] {escape(str(e))}", soft_wrap=True)
        return 2
    except leftovers.Terminated:
        err.print("edgemfm: terminated")
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        err.print("edgemfm: interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
