"""Quantize an existing fp32 bundle for a device, without exporting the model again.

`edgemfm export --precision P` exports the float graphs and then calls `quantizers.quantize` on
them; this script makes the second half alone from a float bundle already on disk (the demo
model's fp32 export takes ~17 minutes on 2 loaded cores, its quantization a few), so precisions
and recipes can be compared on the same float graphs. The output is a sealed bundle built in a
staging directory, exactly as `export` writes one.

    python -m benchmarks.quantization.quantize_bundle FLOAT_BUNDLE OUT --device pi5 --precision auto --calibration DIR
    python -m benchmarks.quantization.quantize_bundle FLOAT_BUNDLE OUT --device host --precision int4 --group-size 32   # the preset at another group size
    python -m benchmarks.quantization.quantize_bundle FLOAT_BUNDLE OUT --device pi5 --precision int8 --float audio_encoder   # the preset, one component left float
    python -m benchmarks.runtime.cascade FLOAT_BUNDLE OUT DATA    # its held-out accuracy against the float bundle
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from edgemfm import bundle
from edgemfm.bundle import read_manifest
from edgemfm.cli import rich_progress
from edgemfm.configs import DEFAULT_TOLERANCE_DB, QuantizeConfig
from edgemfm.profiles import load_profile
from edgemfm.quantizers.presets import recipe_for
from edgemfm.quantizers.quantize import quantize
from edgemfm.recipe import Recipe, Rule


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("float_bundle", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--device", required=True, help="device profile name or alias")
    p.add_argument("--precision", default="auto", help="int8, int4, fp16 or auto")
    p.add_argument("--calibration", type=Path, help="folder of images and prompt .txt files (default: built-in)")
    p.add_argument("--memory-budget", type=float, help="MiB the weights must fit in under auto")
    p.add_argument("--accuracy-tolerance", type=float, default=DEFAULT_TOLERANCE_DB, help="dB, under auto")
    p.add_argument(
        "--group-size", type=int, help="int8/int4: the device's preset with this block size instead of its own"
    )
    p.add_argument(
        "--float",
        action="append",
        default=[],
        metavar="COMPONENT",
        help="int8/int4: leave this component float, the rest as the preset (repeatable)",
    )
    p.add_argument("--force", action="store_true")
    args = p.parse_args()
    manifest = read_manifest(args.float_bundle)
    profile = load_profile(args.device)
    recipe = None
    if args.group_size or args.float:
        preset = recipe_for(profile, args.precision).rules
        if args.group_size:
            preset = (Rule("*", replace(preset[-1].spec, group_size=args.group_size)),)
        recipe = Recipe(rules=(*(Rule(f"{name}/*", None) for name in args.float), *preset))
    t = time.time()
    with (
        bundle.staging(args.out, args.force) as stage,
        rich_progress() as progress,
        tempfile.TemporaryDirectory() as scratch,
    ):
        for f in manifest.files:
            shutil.copyfile(args.float_bundle / f, stage / f)
        manifest = replace(manifest, profile=profile.name, files={})
        config = QuantizeConfig(
            precision=args.precision,
            calibration=args.calibration,
            memory_budget_mb=args.memory_budget,
            accuracy_tolerance_db=args.accuracy_tolerance,
            recipe=recipe,
        )
        manifest = quantize(stage, manifest, profile, config, Path(scratch), progress)
        bundle.seal(stage, manifest)
    size = sum(f.stat().st_size for f in args.out.iterdir())
    print(f"wrote {args.out} ({size / 2**20:.1f} MiB) in {time.time() - t:.0f} s")
    for name, q in manifest.report.quantization.items():
        print(f"  {name}: SQNR {q.sqnr_db} dB, {q.quantized_nodes}, {len(q.float_units)} units float")
    if plan := manifest.report.plan:
        bits: dict[int, int] = {}
        for g in plan.groups.values():
            bits[g.bits] = bits.get(g.bits, 0) + g.params
        print(f"  plan: tolerance met {plan.tolerance_met}; parameters by bits {bits}")


if __name__ == "__main__":
    main()
