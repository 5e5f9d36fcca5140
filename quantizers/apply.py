"""Apply a `Recipe` to one component graph: each unit gets the scheme its spec names.

    spec.bits == 16                         -> fp16 (the whole component)
    Gather with bits 4/8                    -> weight_only (an embedding lookup does no arithmetic)
    bits 8, method dynamic                  -> dynamic_int8
    bits 8, method minmax/percentile/entropy -> static_int8 (calibrated QDQ)
    method rtn/k_quant/gptq/hqq             -> weight_only (MatMulNBits); Conv -> conv_weight_only
    method clip_search                      -> clip_search (MatMulNBits with searched scales)
    method gptq_act_order                   -> gptq (edgemfm's GPTQ: act-order, searched static scales)

Passes run weight-only first, then dynamic, then static (calibrating the graph as it will run),
then fp16. Every weighted node left in float is listed with the reason.

Example:
    >>> report = quantize_component(Path("f/text_decoder.onnx"), Path("b/text_decoder.onnx"), "text_decoder", recipe, ctx)  # doctest: +SKIP
    >>> report.quantized_nodes                                                                                             # doctest: +SKIP
    {'MatMulNBits': 29}
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from edgemfm.errors import ConfigError
from edgemfm.quantizers import clip_search, conv_weight_only, dynamic_int8, fp16, gptq, static_int8, weight_only
from edgemfm.quantizers.context import Context
from edgemfm.quantizers.units import Unit, weighted_units
from edgemfm.recipe import QuantSpec, Recipe
from edgemfm.report import Quantization, Scheme

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
PASSES = (weight_only, clip_search, gptq, conv_weight_only, dynamic_int8, static_int8)  # in this order


def scheme_of(unit: Unit, spec: QuantSpec) -> Any:
    """The scheme module that quantizes `unit` with `spec`, or a string saying why none can."""
    if spec.bits == 16:
        return fp16
    if unit.op == "Gather":
        return weight_only
    if spec.method == "dynamic":
        return dynamic_int8
    if spec.method in static_int8.CALIBRATORS:
        if unit.op == "Conv" and conv_weight_only.depthwise(unit):
            # per-tensor int8 activations around depthwise convs cost EfficientNet-Lite0 0.4 of its
            # 1.0-point QDQ loss (BENCHMARKS.md); their weights are a few percent of a CNN's bytes
            return "depthwise Conv: kept float under static QDQ (its per-tensor activations lose the most accuracy)"
        return static_int8
    if spec.method in (*weight_only.ALGORITHMS, *clip_search.METHODS, *gptq.METHODS):
        if unit.op == "MatMul":
            return {**dict.fromkeys(clip_search.METHODS, clip_search), **dict.fromkeys(gptq.METHODS, gptq)}.get(
                spec.method, weight_only
            )
        if unit.op == "Conv":
            return conv_weight_only  # int4 blocks / int8 channels whatever the method: the others are MatMul-only
        return f"{unit.op}: weight-only {spec.method} int{spec.bits} covers MatMul, Gather and Conv"
    known = ["dynamic", *static_int8.CALIBRATORS, *weight_only.ALGORITHMS, *clip_search.METHODS, *gptq.METHODS]
    raise ConfigError(f"quantization method {spec.method!r} is unknown; allowed: {', '.join(known)}")


def _gather_spec(spec: QuantSpec, group: int) -> QuantSpec:
    """The weight-only spec an embedding table gets from any int spec (rows blocked by `group`)."""
    return QuantSpec(bits=spec.bits, group_size=spec.group_size or group, symmetric=spec.symmetric, method="rtn")


def plan_passes(
    units: list[Unit], recipe: Recipe, group: int
) -> tuple[list[tuple[Any, QuantSpec, list[Unit]]], dict[str, str]]:
    """Group the units by (scheme, spec) in pass order; and the float ones with why."""
    groups: dict[tuple[Any, QuantSpec], list[Unit]] = {}
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
        if scheme is weight_only and u.op == "Gather":
            spec = _gather_spec(spec, group)
        groups.setdefault((scheme, spec), []).append(u)
    if any(s is fp16 for s, _ in groups) and len({s for s, _ in groups}) > 1:
        raise ConfigError(f"{units[0].name.split('/')[0]}: fp16 and integer units cannot mix in one component")
    order = {s: i for i, s in enumerate((*PASSES, fp16))}
    passes = sorted(((s, spec, us) for (s, spec), us in groups.items()), key=lambda p: order[p[0]])
    return passes, floats


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
        if scheme is conv_weight_only and spec.bits == 4
        for u in us
        if conv_weight_only.depthwise(u)
    }
    gptq_notes = ctx.cache.get("notes", {})
    notes.update(
        {
            u.name: gptq_notes.get(u.name, "no calibration data reached this component: clip_search scales, no GPTQ")
            for scheme, _, us in passes
            if scheme is gptq
            for u in us
            if not ctx.feeds or u.name in gptq_notes
        }
    )
    return Quantization(
        schemes=tuple(Scheme(bits=b, group_size=g, method=m) for b, g, m in specs),
        quantized_units=sum(len(us) for _, _, us in passes),
        float_units={**floats, **skipped},
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
