"""`edgemfm bench`: a bundle's first-token time, decode rate, encoders, memory, size and perplexity,
or a cascade's time and accuracy per held-out question.

Example:
    $ edgemfm bench bundles/int8 --baselines bundles/fp32 --json bench.json
"""

from __future__ import annotations

import argparse

from edgemfm import arguments as A
from edgemfm.cli.console import out, rich_progress
from edgemfm.errors import InputError
from edgemfm.records import write_json


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add `edgemfm bench BUNDLE [--baselines ...] [--cascade SMALL ...]` to the subcommands."""
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
        help="with --cascade: which held-out questions (test: every other one from the second; the default, "
        "with --calibrate: calibration, every other one from the first)",
    )
    b.add_argument(
        "--calibrate",
        metavar="OUT.json",
        help="with --cascade: choose the self-test and threshold on --data's questions and write them here "
        "(for --escalate-below) instead of measuring",
    )
    b.add_argument(
        "--against",
        choices=("large", "answers"),
        default="large",
        help="with --calibrate: what counts as right: the large bundle's answers (default; the cascade answers "
        "otherwise on at most --tolerance of the questions) or the reference answers (its accuracy within it)",
    )
    b.add_argument(
        "--tolerance", type=A.FRACTION, default=0.01, help="with --calibrate: the fraction allowed (default 0.01)"
    )
    b.add_argument(
        "--on-demand", action="store_true", help="with --cascade: only the small bundle resident (see `run`)"
    )
    b.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> None:
    from edgemfm.bench import BenchConfig, bench, plot, plotting, table, write_report

    if args.cascade:
        (_calibrate_cascade if args.calibrate else _bench_cascade)(args)
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


def _calibrate_cascade(args: argparse.Namespace) -> None:
    from edgemfm.cascade_bench import calibrate_cascade

    if args.data is None:
        raise InputError("bench --cascade --calibrate needs --data; allowed: a data folder with eval.jsonl")
    with rich_progress() as progress:
        c = calibrate_cascade(
            args.bundle,
            args.cascade,
            args.data,
            args.calibrate,
            args.half or "calibration",
            args.against,
            args.tolerance,
            threads=args.threads,
            progress=progress,
        )
    judged = "agreement with the large bundle" if c.against == "large" else "accuracy"
    out.print(
        f"calibrated on {c.questions} questions: escalate below {c.test} {c.threshold:.3f}: {c.escalated:.1%} "
        f"escalated; {judged}: small {c.small_accuracy:.1%}, cascade {c.cascade_accuracy:.1%}, "
        f"large {c.large_accuracy:.1%}",
        highlight=False,
    )
    out.print(f"[green]wrote[/green] {args.calibrate}")


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
            args.half or "test",
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
        write_json(args.json, r)
        out.print(f"[green]wrote[/green] {args.json}")
