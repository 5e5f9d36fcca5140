"""`edgemfm devices`: the device profiles, as a table, as JSON, or one in full.

Example:
    $ edgemfm devices
    $ edgemfm devices show jetson
"""

from __future__ import annotations

import argparse
import json

from rich.table import Table

from edgemfm.cli.console import out
from edgemfm.errors import EdgemfmError
from edgemfm.profiles import list_profiles, load_profile
from edgemfm.records import to_dict


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add `edgemfm devices [show NAME] [--json]` to the subcommands."""
    d = sub.add_parser("devices", help="list device profiles, or show one")
    d.add_argument("action", nargs="?", choices=["show"], help="show one profile in full")
    d.add_argument("name", nargs="?", help="device name or alias (with show)")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=cmd_devices)


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
