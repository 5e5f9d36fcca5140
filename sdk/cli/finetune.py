"""`edgemfm finetune`: a model's projectors fine-tuned on domain questions (JSONL).

Example:
    $ edgemfm finetune --model ckpt --data questions/ --out ckpt-tuned
"""

from __future__ import annotations

import argparse

from edgemfm import arguments as A
from edgemfm.cli.console import REVISION_HELP, out, rich_progress
from edgemfm.configs import FinetuneConfig


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add `edgemfm finetune --model CKPT --data DATA --out DIR` to the subcommands."""
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
