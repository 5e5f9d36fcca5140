"""`edgemfm keygen` and `edgemfm sign`: an Ed25519 key pair, and a bundle's manifest signed with it.

Example:
    $ edgemfm keygen fleet-key
    $ edgemfm sign bundles/default-jetson --key fleet-key
"""

from __future__ import annotations

import argparse

from edgemfm import arguments as A
from edgemfm.cli.console import out


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add `edgemfm keygen OUT` and `edgemfm sign BUNDLE --key KEY` to the subcommands."""
    k = sub.add_parser("keygen", help="write an Ed25519 key pair for signing bundles (needs edgemfm[sign])")
    k.add_argument("out", type=A.name, help="private key file to write; the public key goes to OUT.pub")
    k.add_argument("--force", action="store_true", help="replace existing key files")
    k.set_defaults(func=cmd_keygen)

    s = sub.add_parser("sign", help="sign a bundle's manifest (writes manifest.sig; needs edgemfm[sign])")
    s.add_argument("bundle", help="bundle directory")
    s.add_argument("--key", required=True, type=A.name, help="private key file from `edgemfm keygen`")
    s.set_defaults(func=cmd_sign)


def cmd_keygen(args: argparse.Namespace) -> None:
    from edgemfm.signing import keygen

    private, public = keygen(args.out, force=args.force)
    out.print(f"[green]wrote[/green] {private} (private: keep it secret) and {public} (give it to `run --trusted-key`)")


def cmd_sign(args: argparse.Namespace) -> None:
    from edgemfm.signing import sign

    out.print(f"[green]wrote[/green] {sign(args.bundle, args.key)}")
