"""`edgemfm prune`: remove decoder blocks, attention heads or MLP channels; and the pruning table
`export --prune` prints too.

Example:
    $ edgemfm prune --model ckpt --out ckpt-pruned --mlp 0.2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from edgemfm import arguments as A
from edgemfm.cli.console import REVISION_HELP, out, rich_progress
from edgemfm.report import Pruning, Recovery


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add `edgemfm prune --model CKPT --out DIR [--blocks N] [--heads F] [--mlp F]` to the subcommands."""
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
        help="folder of .txt files (one sample a line), images and WAV files (default: built-in English, drawings, "
        "synthetic clips); or a data folder of questions (finetune's train.jsonl): the decoder is calibrated and "
        "recovered on them with their media",
    )
    pr.add_argument(
        "--recover",
        type=A.COUNT,
        default=0,
        metavar="STEPS",
        help="distil the pruned text decoder from the unpruned model for STEPS steps (default: 0, none)",
    )
    pr.add_argument(
        "--continuation",
        type=A.COUNT,
        default=32,
        metavar="TOKENS",
        help="tokens written after each calibration text or question for recovery (default: 32)",
    )
    pr.add_argument(
        "--answers",
        metavar="BUNDLE",
        help="with --data QUESTIONS and --recover: continue the questions with this bundle's greedy answers "
        "(a speculative draft for that bundle is distilled on what it will be scored on; ~10x faster than the "
        "unpruned model's samples)",
    )
    pr.add_argument("--force", action="store_true", help="replace an existing output directory")
    pr.set_defaults(func=cmd_prune)


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
            answers=args.answers,
            continuation=args.continuation,
        )
    report = read_report(path)
    pruning_summary(report)
    items = ", ".join(f"{c}: {v}" for c, v in report.calibration.items.items())
    out.print(f"[green]wrote[/green] {path} (calibration from {report.calibration.data}; {items})")


def pruning_summary(report: Pruning) -> None:
    """What was pruned, where and why, one row per stage (`prune` and `export --prune` print it).

    Example:
        >>> pruning_summary(read_report("ckpt-pruned"))  # doctest: +SKIP
    """
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
