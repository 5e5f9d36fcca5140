"""`edgemfm lookahead`: train a lookahead head for a checkpoint on its bundle's answers (`sdk/lookahead.py`).

Example:
    $ edgemfm lookahead --model ckpt --data questions --answers bundles/ckpt-int4 --out ckpt.lookahead.safetensors
    $ edgemfm export --model ckpt --precision int4 --lookahead ckpt.lookahead.safetensors --out bundles/ckpt-int4-la
    $ edgemfm run bundles/ckpt-int4-la --draft lookahead --prompt "Describe it." --image a.png
"""

from __future__ import annotations

import argparse

from edgemfm import arguments as A
from edgemfm.cli.console import REVISION_HELP, out, rich_progress


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add `edgemfm lookahead --model CKPT --data QUESTIONS --answers BUNDLE --out HEAD` to the subcommands."""
    la = sub.add_parser(
        "lookahead",
        help="train a lookahead head: a speculative draft inside the decoder graph (export --lookahead HEAD)",
    )
    la.add_argument("--model", required=True, help="the checkpoint (directory or Hub id) the bundle was exported from")
    la.add_argument("--revision", help=REVISION_HELP)
    la.add_argument("--data", required=True, help="a data folder of questions (finetune's train.jsonl and media)")
    la.add_argument(
        "--answers",
        required=True,
        metavar="BUNDLE",
        help="the bundle whose greedy answers the head learns (what its proposals are checked against)",
    )
    la.add_argument("--out", required=True, metavar="HEAD", help="the head's file to write (.safetensors)")
    la.add_argument(
        "--steps", type=A.AT_LEAST_ONE, default=1400, help="training steps of 256 positions (default: 1400)"
    )
    la.add_argument("--questions", type=A.AT_LEAST_ONE, default=960, help="questions the bundle answers (default: 960)")
    la.add_argument(
        "--continuation",
        type=A.AT_LEAST_ONE,
        default=128,
        metavar="TOKENS",
        help="tokens of each answer (default: 128)",
    )
    la.add_argument(
        "--vocab",
        type=A.AT_LEAST_ONE,
        default=8192,
        metavar="N",
        help="tokens the head proposes: the N lowest ids (BPE's most frequent) and the end tokens (default: 8192)",
    )
    la.add_argument("--force", action="store_true", help="replace an existing head file")
    la.set_defaults(func=cmd_lookahead)


def cmd_lookahead(args: argparse.Namespace) -> None:
    from edgemfm.lookahead import LookaheadConfig, train_lookahead

    config = LookaheadConfig(
        steps=args.steps, questions=args.questions, vocab=args.vocab, continuation=args.continuation
    )
    with rich_progress() as progress:
        report = train_lookahead(
            args.model, args.out, args.data, args.answers, config, args.force, progress, args.revision
        )
    a = report.accuracy
    out.print(
        f"[green]wrote[/green] {args.out}: right proposals on {a.positions} held-out answer positions "
        f"{a.before:.1%} -> {a.after:.1%} (untrained -> trained); loss {report.loss.first:.3f} -> "
        f"{report.loss.last:.3f} ({report.seconds:.0f} s)"
    )
