"""Apply a `Recipe` to one component graph: each unit gets the scheme its spec names.

The routing is the registered schemes' data (`registry.Scheme`, one per scheme module); first match wins:

    a scheme whose `bits` hold spec.bits and whose `any_method_ops` hold the unit's op
        -> that scheme (bits 16: fp16, the whole component; a Gather: weight_only rows)
    a scheme providing spec.method (or, providing none, every method of its family) that takes the op
        -> that scheme, unless its `refuse` says why the unit stays float (static_int8: depthwise Conv)
    a known method that no scheme takes the op under -> float, naming the ops its family covers

Passes run in the schemes' `order`: weight-only first, then dynamic, then static (calibrating the
graph as it will run), then fp16. Every weighted node left in float is listed with the reason.

Example:
    >>> report = quantize_component(Path("f/text_decoder.onnx"), Path("b/text_decoder.onnx"), "text_decoder", recipe, ctx)  # doctest: +SKIP
    >>> report.quantized_nodes                                                                                             # doctest: +SKIP
    {'MatMulNBits': 29}
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from edgemfm.errors import ConfigError, InputError
from edgemfm.quantizers import conv_weight_only, gptq
from edgemfm.quantizers.context import Context
from edgemfm.quantizers.registry import Scheme, check_method, schemes
from edgemfm.quantizers.units import Unit, weighted_units
from edgemfm.recipe import QuantSpec, Recipe
from edgemfm.report import AppliedScheme, Quantization

# what a --calibration folder holds, by kind of data (calibration.read_folder reads these)
FOLDER_LAYOUT = "images .png/.jpg/.jpeg/.bmp/.webp, audio clips .wav, prompts .txt (one per line)"
# op types written by the schemes: counted per component in the report
QUANT_OPS = (
    "MatMulNBits",
    "GatherBlockQuantized",
    "MatMulInteger",
    "ConvInteger",
    "DynamicQuantizeLinear",
    "QuantizeLinear",
    "DequantizeLinear",
    "Gather(int8 rows)",
)


def scheme_of(unit: Unit, spec: QuantSpec) -> Scheme | str:
    """The registered scheme that quantizes `unit` with `spec`, or a string saying why none can.

    Example:
        >>> scheme_of(Unit("d/layers.0/fc", "n", "MatMul", "w", (64, 64)), QuantSpec(bits=4, method="rtn")).name
        'weight_only'
    """
    table = schemes()
    for s in table:
        if spec.bits in s.bits and unit.op in s.any_method_ops:
            return s
    check_method(spec.method)
    family = next(s.family for s in table if spec.method in s.methods)
    takers = [s for s in table if spec.method in s.methods or (not s.methods and s.family == family)]
    if not any(spec.bits in s.bits for s in takers):
        bits = sorted({b for s in takers for b in s.bits})
        raise ConfigError(f"method {spec.method!r} takes bits {', '.join(map(str, bits))}, not {spec.bits}")
    for s in takers:
        if unit.op in s.ops:
            return (s.refuse and s.refuse(unit, spec)) or s
    *head, last = dict.fromkeys(op for s in table if s.family == family for op in s.ops) or ["no op"]
    covered = f"{', '.join(head)} and {last}" if head else last
    return f"{unit.op}: {family} {spec.method} int{spec.bits} covers {covered}"


def plan_passes(
    units: list[Unit], recipe: Recipe, group: int
) -> tuple[list[tuple[Scheme, QuantSpec, list[Unit]]], dict[str, str]]:
    """Group the units by (scheme, spec) in pass order; and the float ones with why."""
    groups: dict[tuple[Scheme, QuantSpec], list[Unit]] = {}
    floats: dict[str, str] = {}
    for u in units:
        spec = recipe.spec_for(u.name)
        if spec is None:
            floats[u.name] = "the recipe keeps it float"
            continue
        scheme = scheme_of(u, spec)
        if isinstance(scheme, str):
            floats[u.name] = scheme
            continue
        if scheme.respec and u.op in scheme.any_method_ops:
            spec = scheme.respec(spec, group)
        groups.setdefault((scheme, spec), []).append(u)
    alone = [s for s, _ in groups if s.alone]
    if alone and len({s for s, _ in groups}) > 1:
        raise ConfigError(
            f"{units[0].name.split('/')[0]}: {alone[0].name} and integer units cannot mix in one component"
        )
    passes = sorted(((s, spec, us) for (s, spec), us in groups.items()), key=lambda p: p[0].order)
    return passes, floats


def check_calibrated(component: str, passes: list, feeds: list, kind: str = "data") -> None:
    """Refuse, in one line naming `component` and how to give data, a pass that needs calibration
    feeds (static int8) when none reach the component; `kind` is what it is fed (audio, images, prompts).

    Example:
        >>> check_calibrated("audio_encoder", [(static_int8.SCHEME, spec, units)], [], "audio")  # doctest: +SKIP
        InputError: audio_encoder: static_int8 needs calibration audio and none reached it; ...
    """
    needy = [s.name for s, _, _ in passes if s.calibrated]
    if needy and not feeds:
        raise InputError(
            f"{component}: {needy[0]} needs calibration {kind} and none reached it; "
            f"give --calibration DIR holding {kind} (DIR: {FOLDER_LAYOUT}) or choose another precision"
        )


def quantize_component(
    src: Path, dst: Path, component: str, recipe: Recipe, ctx: Context, group: int = 32
) -> Quantization:
    """Quantize the graph at `src` into `dst` per `recipe`; returns the component's report entry (its
    SQNR and cosine left for the caller, who holds the float outputs).

    `group` is the block size given to embedding tables whose spec has none (per-channel int8).
    """
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(src))
    units, skipped = weighted_units(model, component)
    passes, floats = plan_passes(units, recipe, group)
    check_calibrated(component, passes, ctx.feeds)
    for scheme, spec, chosen in passes:
        model = scheme.apply(model, chosen, spec, ctx)
    onnx.save(model, str(dst))
    ops = Counter(n.op_type for n in model.graph.node)
    int8 = {i.name for i in model.graph.initializer if i.data_type == TensorProto.INT8}
    ops["Gather(int8 rows)"] = sum(n.op_type == "Gather" and n.input[0] in int8 for n in model.graph.node)
    specs = sorted({(spec.bits, spec.group_size, spec.method) for _, spec, _ in passes})
    notes = {
        u.name: "depthwise Conv: int8 per channel (a 1-wide input axis has no int4 blocks)"
        for scheme, spec, us in passes
        if scheme is conv_weight_only.SCHEME and spec.bits == 4
        for u in us
        if conv_weight_only.depthwise(u)
    }
    gptq_notes = ctx.cache.get("notes", {})
    notes.update(
        {
            u.name: gptq_notes.get(u.name, "no calibration data reached this component: clip_search scales, no GPTQ")
            for scheme, _, us in passes
            if scheme is gptq.SCHEME
            for u in us
            if not ctx.feeds or u.name in gptq_notes
        }
    )
    smoothing = ctx.cache.get("smoothing", {})  # int8 MatMuls whose smoothing lost: left unsmoothed
    notes.update({u.name: smoothing[u.name] for _, _, us in passes for u in us if u.name in smoothing})
    joined = ctx.cache.get("qlinear", {})  # small convs conv_qlinear took into its int8 chain: not float
    kept = ctx.cache.get("qlinear_float", {})  # convs conv_qlinear measured too sensitive for int8: float
    notes.update(joined)
    return Quantization(
        schemes=tuple(AppliedScheme(bits=b, group_size=g, method=m) for b, g, m in specs),
        quantized_units=sum(u.name not in kept for _, _, us in passes for u in us),
        float_units={k: v for k, v in {**floats, **skipped, **kept}.items() if k not in joined},
        notes=notes,
        quantized_nodes={op: ops[op] for op in QUANT_OPS if ops[op]},
        weight_bytes=weight_bytes(model),
    )


def weight_bytes(model: Any) -> int:
    """Bytes of the graph's initializers as stored (int4 packed two to a byte)."""
    from onnx import numpy_helper

    total = 0
    for init in model.graph.initializer:
        total += len(init.raw_data) if init.raw_data else numpy_helper.to_array(init).nbytes
    return total
