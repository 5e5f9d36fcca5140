"""`edgemfm export`: a model into a bundle for a device, or one bundle per device of a fleet.

Example:
    $ edgemfm export --device jetson --out bundles/default-jetson
    $ edgemfm export --device pi5,jetson --out bundles/fleet
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from edgemfm import arguments as A
from edgemfm.cli.console import REVISION_HELP, err, out, rich_progress
from edgemfm.cli.prune import pruning_summary
from edgemfm.configs import DEFAULT_TOLERANCE_DB, ExportConfig
from edgemfm.errors import EdgemfmError, InputError
from edgemfm.records import to_dict


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add `edgemfm export --device NAME[,NAME...] [--model ...] [--precision ...]` to the subcommands."""
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
        "--kv-cache",
        default="float",
        metavar="{float,int8}",
        help="the decoder's KV cache: float, or int8 (onnx: static scales calibrated at export, CPU; pte: a scale per "
        "token and head; default: float)",
    )
    e.add_argument(
        "--kernels",
        default="ort",
        metavar="{ort,edgemfm}",
        help="onnx: every op on ONNX Runtime's kernels (any runtime), or int4, int8 and fp32 matmuls and the "
        "decoder's attention on edgemfm's faster ones (built on the device by the edgemfm runtime; CPU devices; default: ort)",
    )
    e.add_argument(
        "--draft-vocab",
        type=A.AT_LEAST_ONE,
        default=None,
        metavar="N",
        help="for a draft bundle: its head scores only N tokens (the lowest ids, BPE's most frequent, and the end tokens); onnx",
    )
    e.add_argument(
        "--lookahead",
        metavar="HEAD",
        help="a lookahead head (`edgemfm lookahead` wrote it) in the decoder graph: a draft that runs inside the "
        "target's own call (`run --draft lookahead`); onnx",
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
        kv_cache=args.kv_cache,
        kernels=args.kernels,
        draft_vocab=args.draft_vocab,
        lookahead=args.lookahead,
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
    kv = m.components[m.generation.decoder].kv_cache
    if kv is not None and kv.dtype == "int8" and kv.scales == "per_token":  # set by the program as it writes each token
        out.print(f"  KV cache: {kv.dtype}, a scale and zero point per token and head, set as each is written")
    elif kv is not None and kv.dtype:  # the scales are the export's, not the stream's: say so
        out.print(f"  KV cache: {kv.dtype}, static {kv.scales.replace('_', '-')} scales calibrated at export")
    if (subset := m.generation.head_subset) is not None:  # a draft's head: it never proposes the other tokens
        out.print(f"  head: {len(subset.ids)} of {subset.vocab_size} tokens (--draft-vocab: a draft bundle's)")
    if "lookahead" in {o.name for o in m.components[m.generation.decoder].outputs}:
        out.print("  lookahead head: each decoder position also proposes the token after next (run --draft lookahead)")
    if m.report.pruning is not None:
        pruning_summary(m.report.pruning)
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
    if config.kv_cache != "float":
        raise InputError(
            f"the Android app feeds float32 KV caches; --kv-cache {config.kv_cache!r} is not allowed with --app; "
            "allowed: float"
        )
    if config.kernels != "ort":
        raise InputError(
            f"the Android app's ONNX Runtime has no edgemfm kernels; --kernels {config.kernels!r} is not allowed "
            "with --app; allowed: ort"
        )
    return manifest.parent / "assets" / "bundle"
