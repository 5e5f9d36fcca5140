"""`edgemfm tune`: resolution, tokens, sequence length and precision searched for the best quality under
a latency and memory budget, for one device or several.

Example:
    $ edgemfm tune --device pi5 --latency-budget 2000 --apply bundles/tuned
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgemfm import arguments as A
from edgemfm.cli.console import REVISION_HELP, err, out, rich_progress
from edgemfm.errors import EdgemfmError, InputError
from edgemfm.records import write_text


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add `edgemfm tune --device NAME[,NAME...] --latency-budget MS` to the subcommands."""
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
    t.add_argument(
        "--candidates",
        nargs="+",
        metavar="BUNDLE",
        help="other fp32 bundles of the model (`edgemfm prune` checkpoints, exported) searched beside it at each"
        " precision and sequence length (needs --data)",
    )
    t.add_argument(
        "--cascade",
        metavar="JSON",
        help="choose the cheapest small bundle of a cascade in front of the float bundle (needs --data);"
        " write its calibration here",
    )
    t.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        help="--cascade: the fraction of held-out answers that may differ from the float bundle's (default: 0.01)",
    )
    t.set_defaults(func=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> None:
    from edgemfm.tune import tune

    if "," in args.device:
        if args.cascade:
            raise InputError("--cascade tunes one device; allowed: one --device name with --cascade")
        return _tune_fleet(args)
    with rich_progress() as progress:
        result = tune(
            args.device,
            args.latency_budget,
            args.memory_budget,
            workers=args.workers or 1,
            progress=progress,
            cascade=args.cascade is not None,
            tolerance=args.tolerance,
            **_options(args),
        )
    _tune_summary(result, args.latency_budget, args.plot, args.json, args.apply)
    if result.cascade is not None:
        c = result.cascade
        c.calibration.save(args.cascade)
        out.print(
            f"cascade: {c.cost_ms:.1f} ms per question predicted ({c.calibration.escalated:.1%} escalated to the"
            f" {c.large_ms:.1f} ms float bundle); calibration: {args.cascade}"
        )


def _options(args: argparse.Namespace) -> dict:
    """The options one device's tuning and a fleet's share: what to tune, on which data, and where to apply it."""
    return dict(
        model=args.model,
        bundle=args.bundle,
        revision=args.revision,
        data=args.data,
        questions=args.questions,
        visual_tokens=tuple(args.visual_tokens or ()),
        candidate_bundles=tuple(args.candidates or ()),
        ray_address=args.ray,
        apply=args.apply,
        force=args.force,
    )


def _tune_fleet(args: argparse.Namespace) -> None:
    """One tuning per device; --plot, --json and --apply gain the device's name; exit 2 when any failed."""
    from edgemfm.fleet import tune_fleet

    with rich_progress() as progress:
        report = tune_fleet(
            args.device,
            args.latency_budget,
            args.memory_budget,
            workers=args.workers,
            progress=progress,
            **_options(args),
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
        write_text(json_path, to_json(result))
    if applied:
        out.print(f"[green]wrote[/green] {applied}")
