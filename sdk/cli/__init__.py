"""The `edgemfm` command line: devices, export, prune, lookahead, finetune, run, chat, tune, inspect, bench.

A user's mistake prints one line (`edgemfm: error: ...`) and exits with code 2; `run` imports
neither torch nor transformers nor onnx. Each verb is a module here that owns its argparse block
(`add_parsers`) and its command function; console.py holds what they share.

Example:
    $ edgemfm devices
    $ edgemfm export --device jetson --out bundles/default-jetson
    $ edgemfm run bundles/default-jetson --prompt "What is in the picture?" --image cat.png
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from rich.markup import escape

from edgemfm import leftovers
from edgemfm.cli import bench, devices, export, finetune, inspect, lookahead, prune, run, signing, tune
from edgemfm.cli.console import err, rich_progress
from edgemfm.errors import EdgemfmError

__all__ = ["main", "parser", "rich_progress"]  # rich_progress: the benchmarks draw their bars with it

# the order of `edgemfm --help`
VERBS = (devices, export, prune, lookahead, run, signing, bench, finetune, tune, inspect)


class Parser(argparse.ArgumentParser):
    """argparse that refuses in one line (`edgemfm: error: ...`, exit 2), as every other user mistake."""

    def error(self, message: str):
        verb = self.prog.removeprefix("edgemfm").strip()  # the top level adds nothing: main prints "edgemfm: error:"
        raise EdgemfmError(f"{verb}: {message}" if verb else message)


def parser() -> argparse.ArgumentParser:
    """Every verb's subcommand, each added by its own module.

    Example:
        >>> parser().parse_args(["devices", "--json"]).json
        True
    """
    p = Parser(prog="edgemfm", description="Deploy multimodal models to edge devices.")
    sub = p.add_subparsers(dest="command", required=True)
    for verb in VERBS:
        verb.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit code: 0, 2 for a user's mistake, 130 on Ctrl-C, 141 when the reader of the
    output goes away, 143 on SIGTERM.

    Example:
        >>> main(["devices", "show", "pi5"])  # doctest: +SKIP
        0
    """
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
    except BrokenPipeError:
        # the reader went away (`edgemfm devices --json | head -1`): stop quietly, as `cat` does; stdout goes to
        # /dev/null so Python's own flush at exit cannot raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    return 0


if __name__ == "__main__":
    sys.exit(main())
