"""`edgemfm inspect`: a bundle's components, sizes, precisions and report, and its predicted latency on a device.

Example:
    $ edgemfm inspect bundles/default-jetson --device pi5
"""

from __future__ import annotations

import argparse

from rich.table import Table

from edgemfm import arguments as A
from edgemfm.cli.console import out
from edgemfm.profiles import load_profile
from edgemfm.report import Report


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add `edgemfm inspect BUNDLE [--json] [--device NAME]` to the subcommands."""
    i = sub.add_parser("inspect", help="show a bundle's components, sizes, precisions and report")
    i.add_argument("bundle", help="bundle directory")
    i.add_argument("--json", action="store_true", help="print the manifest")
    i.add_argument("--device", type=A.name, help="also predict each component's latency on this device (roofline)")
    i.set_defaults(func=cmd_inspect)


def cmd_inspect(args: argparse.Namespace) -> None:
    from edgemfm.bundle import read_manifest

    m = read_manifest(args.bundle)
    if args.json:
        print(m.to_json(), end="")
        return
    out.print(f"[bold]{m.model_id}[/bold] ({m.family}) for [bold]{m.profile}[/bold], schema v{m.schema_version}")
    table = Table()
    for col in ("component", "size", "precision", "peak activation", "parity (max abs)"):
        table.add_column(col, no_wrap=True)
    parity = m.report.parity
    for name, c in m.components.items():
        spec = m.recipe.spec_for(name)
        q = m.report.quantization.get(name)
        bits = sorted({s.bits for s in q.schemes}) if q else []
        precision = (
            "+".join(f"int{b}" if b < 16 else "fp16" for b in bits) if bits else f"int{spec.bits}" if spec else c.dtype
        )
        table.add_row(
            name,
            # the weights, not the file's size: pte methods share one file, and a graph's weights may lie in
            # external data (tied_table.bin, an fp32 decoder's text_decoder.weights)
            f"{c.weight_bytes / 2**20:.2f} MiB",
            precision,
            f"{c.peak_activation_bytes / 2**20:.2f} MiB",
            f"{parity[name].max_abs_diff:.1e}" if name in parity and parity[name].max_abs_diff is not None else "-",
        )
    out.print(table)
    for name, c in m.components.items():  # a bundle exported with --kernels edgemfm: what the runtime builds
        if c.kernels:
            out.print(f"  {name}: edgemfm kernels {', '.join(c.kernels)} (built on the device, runtimes/kernels/)")
    for key, note in m.report.notes.items():
        if key.endswith((" attention", " matmuls")):
            out.print(f"  {key}: {note}")
    if m.report.quantization:
        _quantization_table(m.report)
    if args.device:
        _print_predictions(m, load_profile(args.device))


def _quantization_table(report: Report) -> None:
    """Per component: how it was quantized, how close it stays to float, what stayed float and why."""
    table = Table(title=f"quantization ({report.precision}): outputs vs float on calibration data")
    for col in ("component", "schemes", "SQNR dB", "cosine", "float units"):
        table.add_column(col, no_wrap=True)
    for name, q in report.quantization.items():
        schemes = ", ".join(
            f"int{s.bits}/{s.method}" + (f"/g{s.group_size}" if s.group_size else "") for s in q.schemes
        )
        measured = q.sqnr_db is not None
        sqnr, cos = (f"{q.sqnr_db:.1f}", f"{q.cosine:.4f}") if measured else ("not measured", "-")
        table.add_row(name, schemes or "float", sqnr, cos, str(len(q.float_units)))
    out.print(table)
    for name, q in report.quantization.items():
        out.print(f"  nodes: {name}: " + (", ".join(f"{op} {n}" for op, n in q.quantized_nodes.items()) or "-"))
        if judged := q.judged:
            out.print(f"  judged: {name}: SQNR {judged.sqnr_db:.1f} dB on {judged.by}'s next-token distribution")
        for unit, note in q.notes.items():
            out.print(f"  note: {unit}: {note}")
    for unit, why in report.float_units.items():
        out.print(f"  float: {unit}: {why}")
    if plan := report.plan:
        met = "met" if plan.tolerance_met else "[red]NOT met[/red]"
        bits = [g.bits for g in plan.groups.values()]
        counts = ", ".join(f"{b if b < 32 else 'float'}: {bits.count(b)}" for b in sorted(set(bits)))
        out.print(
            f"auto plan: tolerance {plan.tolerance_db:g} dB {met}, budget {plan.memory_budget_mb:g} MiB; groups by bits: {counts}"
        )


def _print_predictions(manifest, profile) -> None:
    from edgemfm.cost import predict

    table = Table(title=f"predicted on {profile.name} (roofline)")
    for col in ("component", "one call", "GFLOP", "MB moved", "ms", "bound"):
        table.add_column(col)
    for e in predict(manifest, profile):
        table.add_row(
            e.component, e.work, f"{e.flops / 1e9:.3g}", f"{e.bytes / 1e6:.3g}", f"{e.latency_ms:.3g}", e.bound
        )
    out.print(table)
    for figure in ("bandwidth_gbps", "peak_fp32_gflops", "peak_int8_gops"):
        out.print(f"  {figure} = {getattr(profile, figure):g}: {profile.sources[figure]}", soft_wrap=True)
    for figure, value in vars(profile.cost).items():
        out.print(f"  cost.{figure} = {value:g}: {profile.sources['cost.' + figure]}", soft_wrap=True)
