"""Dynamic int8: per-channel int8 weights, activations quantized per tensor at run time (u8s8).

ONNX Runtime's `quantize_dynamic` writes MatMulInteger / ConvInteger with DynamicQuantizeLinear in
front. No calibration data: the fastest int8 on a CPU for prompts (19 ms against 35 ms fp32 at
seq 128 on a 22M decoder here). On AVX2 without VNNI the u8 x s8 products can saturate the 16-bit
intermediate sums (VPMADDUBSW), so weights are kept in 7 bits there (`reduce_range`).

Example:
    >>> model = apply(onnx.load("d.onnx"), units, QuantSpec(bits=8, method="dynamic", activation_bits=8), ctx)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgemfm.errors import ConfigError
from edgemfm.quantizers.registry import Scheme
from edgemfm.quantizers.units import Unit
from edgemfm.recipe import QuantSpec

if TYPE_CHECKING:
    from edgemfm.quantizers.context import Context

OPS = ("MatMul", "Conv", "Gemm")


def check(spec: QuantSpec) -> None:
    """Refuse a spec this scheme cannot honour."""
    if spec.bits != 8 or spec.activation_bits != 8:
        raise ConfigError(
            f"dynamic quantization is int8 weights and activations, not bits={spec.bits} activation_bits={spec.activation_bits}"
        )


def reduce_range(isa: tuple[str, ...]) -> bool:
    """7-bit weights where u8s8 dot products can saturate: x86 AVX2 without any VNNI."""
    return "avx2" in isa and not any("vnni" in f for f in isa)


def apply(model: Any, units: list[Unit], spec: QuantSpec, ctx: Context) -> Any:
    """Quantize `units` (MatMul, Conv, Gemm) of `model` dynamically; returns the new ModelProto."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    check(spec)
    out = ctx.scratch / "dynamic.onnx"
    quantize_dynamic(
        model,
        out,
        op_types_to_quantize=sorted({u.op for u in units}),
        per_channel=True,
        reduce_range=reduce_range(ctx.profile.isa),
        weight_type=QuantType.QInt8,
        nodes_to_quantize=[u.node for u in units],
        # MatMulConstBOnly: attention's activation x activation MatMuls stay float
        extra_options={"MatMulConstBOnly": True, "WeightSymmetric": spec.symmetric},
    )
    return onnx.load(str(out))


SCHEME = Scheme(name="dynamic_int8", family="dynamic", methods=("dynamic",), ops=OPS, order=50, apply=apply)
