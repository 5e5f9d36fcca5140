"""Weight-only block-wise int4 / int8: MatMul -> MatMulNBits, Gather -> GatherBlockQuantized.

ONNX Runtime's `MatMulNBitsQuantizer` does the work; the algorithm is one row of `ALGORITHMS`:

- `rtn`: round-to-nearest per block (ORT's own C++ quantizer, seconds on a 135M model);
- `k_quant`: llama.cpp-style search of each block's scale and offset for the least squared error
  (blocks of 32 only);
- `gptq`: GPTQ's Hessian-ordered error feedback on calibration activations (needs feeds; on the
  random-weight default model it is 1 dB worse than rtn and 80x slower: judge it on real weights);
- `hqq`: half-quadratic optimisation of the zero points (no data; decodes ~40x slower, measured).

int8 weights with int8 activations are smoothed first where that brings the output nearer the float
graph's (`smoothing`: SmoothQuant's channel scales).
The result's `accuracy_level` is 4 when the spec asks for int8 activations (`activation_bits=8`):
the CPU kernel then quantizes activations per block and uses dot-product int8 instructions, the
only fast int4 path (decode step 1.5 ms against 7.6-9.6 ms without, on a 22M decoder here).

An int8 embedding table (ORT's Gather quantizer is int4 only, quantize_dynamic's is per tensor)
is written here as a per-row int8 table: Gather(int8 rows) * Gather(row scales).

Example:
    >>> model = apply(onnx.load("d.onnx"), units, QuantSpec(bits=4, group_size=64, activation_bits=8), ctx)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from edgemfm.errors import ConfigError, InputError
from edgemfm.quantizers.registry import Scheme
from edgemfm.quantizers.smoothing import where_it_helps
from edgemfm.quantizers.units import Unit
from edgemfm.recipe import QuantSpec

if TYPE_CHECKING:
    from edgemfm.quantizers.context import Context


def _rtn(spec: QuantSpec, ctx: Context) -> Any:
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig

    return DefaultWeightOnlyQuantConfig(block_size=spec.group_size, is_symmetric=spec.symmetric, bits=spec.bits)


def _k_quant(spec: QuantSpec, ctx: Context) -> Any:
    from onnxruntime.quantization.matmul_nbits_quantizer import KQuantWeightOnlyQuantConfig

    return KQuantWeightOnlyQuantConfig()


def _hqq(spec: QuantSpec, ctx: Context) -> Any:
    from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig

    return HQQWeightOnlyQuantConfig(block_size=spec.group_size, bits=spec.bits)


# method -> (ORT algorithm config factory, bits it takes); gptq has none: `_gptq_apply` calls its quantizer
ALGORITHMS: dict[str, tuple[Callable[[QuantSpec, Context], Any] | None, tuple[int, ...]]] = {
    "rtn": (_rtn, (4, 8)),
    "k_quant": (_k_quant, (4,)),
    "gptq": (None, (4,)),
    "hqq": (_hqq, (4,)),
}


def check(spec: QuantSpec) -> None:
    """Refuse a spec this scheme cannot honour, naming the allowed values."""
    if spec.method not in ALGORITHMS:
        raise ConfigError(f"weight-only method {spec.method!r} is unknown; allowed: {', '.join(ALGORITHMS)}")
    if spec.bits not in ALGORITHMS[spec.method][1]:
        raise ConfigError(f"method {spec.method!r} takes bits {ALGORITHMS[spec.method][1]}, not {spec.bits}")
    g = spec.group_size
    if spec.method == "k_quant" and g != 32:
        # ORT's k-quant (from neural-compressor) always writes blocks of 32 (measured: a 64 request breaks the reshape)
        raise ConfigError(f"method 'k_quant' takes group size 32 only, not {g}")
    if spec.method == "gptq" and not spec.symmetric:
        # ORT's GPTQ packs a column's zero points as if its blocks were even in number (measured: K 150 in blocks
        # of 64 breaks its reshape; SmolLM2's 576 in blocks of 64 is 9 blocks too)
        raise ConfigError(
            "method 'gptq' (ONNX Runtime's) is symmetric only; allowed: symmetric=True, or 'gptq_act_order'"
        )
    if g < 16 or g & (g - 1):
        raise ConfigError(f"group size {g} must be a power of two >= 16 for MatMulNBits")


def apply(model: Any, units: list[Unit], spec: QuantSpec, ctx: Context) -> Any:
    """Quantize the MatMul and Gather `units` of `model` (a ModelProto) with `spec`; returns the new model."""
    check(spec)
    matmuls = [u for u in units if u.op == "MatMul"]
    if matmuls and spec.bits == 8 and spec.activation_bits == 8:
        # int8 activations: move their outlier channels into the weights, where the output says it helps
        return where_it_helps(model, matmuls, ctx, lambda m: _quantize(m, units, spec, ctx))
    return _quantize(model, units, spec, ctx)


def _quantize(model: Any, units: list[Unit], spec: QuantSpec, ctx: Context) -> Any:
    """`apply` past the smoothing."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    chosen = {u.node for u in units}
    others = [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gather") and n.name not in chosen]
    matmuls = [u for u in units if u.op == "MatMul"]
    gathers = [u for u in units if u.op == "Gather"]
    if matmuls and spec.method == "gptq":
        model = _gptq_apply(model, matmuls, spec, ctx)
    elif matmuls:
        factory, _ = ALGORITHMS[spec.method]
        q = MatMulNBitsQuantizer(
            model,
            bits=spec.bits,
            block_size=spec.group_size,
            is_symmetric=spec.symmetric,
            nodes_to_exclude=others + [u.node for u in gathers],
            algo_config=factory(spec, ctx),
        )
        q.process()
        model = q.model.model if hasattr(q.model, "model") else q.model
    if gathers and spec.bits == 4:
        q = MatMulNBitsQuantizer(
            model,
            bits=4,
            block_size=spec.group_size,
            is_symmetric=spec.symmetric,
            nodes_to_exclude=others + [u.node for u in matmuls],
            op_types_to_quantize=("Gather",),
            quant_axes=(("Gather", 1),),
        )
        q.process()
        model = q.model.model
    elif gathers:
        for u in gathers:
            _int8_rows(model, u)
    level = 4 if spec.activation_bits == 8 else 0  # 4: int8 compute on dot-product instructions
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            _set_accuracy_level(node, level)
    return model


def _gptq_apply(model: Any, matmuls: list[Unit], spec: QuantSpec, ctx: Context) -> Any:
    """GPTQ on the chosen MatMuls only, through the quantizer ORT's GPTQ config calls.

    Called directly because `MatMulNBitsQuantizer` passes its `nodes_to_exclude` to RTN but not to
    GPTQ, which would then quantize every MatMul of the graph, whatever the recipe says.
    """
    from onnxruntime.quantization.neural_compressor import gptq_quantize

    if not ctx.feeds:
        raise InputError("GPTQ needs calibration data and none reached this component")
    chosen = {u.node for u in matmuls}
    config = {
        n.name: {
            "bits": spec.bits,
            "group_size": spec.group_size,
            "scheme": "sym" if spec.symmetric else "asym",
            "algorithm": "GPTQ",
        }
        if n.name in chosen
        else "fp32"
        for n in model.graph.node
        if n.op_type == "MatMul"
    }
    feeds = ((f, None) for f in ctx.feeds)  # its loader protocol: (inputs, label)
    out = gptq_quantize(
        model,
        feeds,
        weight_config=config,
        num_bits=spec.bits,
        group_size=spec.group_size,
        scheme="sym" if spec.symmetric else "asym",
        n_samples=-1,
        percdamp=0.01,
        blocksize=128,
    )
    return out.model


def _set_accuracy_level(node: Any, level: int) -> None:
    from onnx import helper

    kept = [a for a in node.attribute if a.name != "accuracy_level"]
    del node.attribute[:]
    node.attribute.extend(kept + ([helper.make_attribute("accuracy_level", level)] if level else []))


def _int8_rows(model: Any, unit: Unit) -> None:
    """Gather(W, ids) -> Mul(Cast(Gather(W_int8, ids)), Gather(scale, ids)): symmetric int8 per row."""
    from onnx import helper, numpy_helper

    graph = model.graph
    init = next(i for i in graph.initializer if i.name == unit.weight)
    w = numpy_helper.to_array(init).astype(np.float32)
    scale = np.maximum(np.abs(w).max(axis=1, keepdims=True), 1e-12) / 127.0
    q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
    node = next(n for n in graph.node if n.name == unit.node)
    base, ids, out = unit.weight, node.input[1], node.output[0]
    graph.initializer.remove(init)
    graph.initializer.extend(
        [numpy_helper.from_array(q, f"{base}_int8"), numpy_helper.from_array(scale.astype(np.float32), f"{base}_scale")]
    )
    axis = [a.i for a in node.attribute if a.name == "axis"]
    assert not axis or axis[0] == 0, "embedding Gathers index rows"
    new = [
        helper.make_node("Gather", [f"{base}_int8", ids], [f"{out}_q"], name=f"{unit.node}_int8"),
        helper.make_node("Gather", [f"{base}_scale", ids], [f"{out}_s"], name=f"{unit.node}_scale"),
        helper.make_node("Cast", [f"{out}_q"], [f"{out}_f"], to=1, name=f"{unit.node}_cast"),
        helper.make_node("Mul", [f"{out}_f", f"{out}_s"], [out], name=f"{unit.node}_dequant"),
    ]
    at = list(graph.node).index(node)
    graph.node.remove(node)
    for i, n in enumerate(new):
        graph.node.insert(at + i, n)


def _gather_spec(spec: QuantSpec, group: int) -> QuantSpec:
    """The weight-only spec an embedding table gets from any int spec (rows blocked by `group`)."""
    return QuantSpec(bits=spec.bits, group_size=spec.group_size or group, symmetric=spec.symmetric, method="rtn")


SCHEME = Scheme(
    name="weight_only",
    family="weight-only",
    methods=tuple(ALGORITHMS),
    ops=("MatMul", "Gather"),
    order=10,
    apply=apply,
    any_method_ops=("Gather",),  # an embedding lookup does no arithmetic: any int spec makes it a weight-only table
    respec=_gather_spec,
)
