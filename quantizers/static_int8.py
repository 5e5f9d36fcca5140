"""Static int8 QDQ: per-channel int8 weights, activations with scales calibrated on real inputs.

ONNX Runtime's `quantize_static` writes QuantizeLinear/DequantizeLinear pairs around each chosen
MatMul/Conv: the form TensorRT, QNN, NNAPI and XNNPACK consume. The calibrator is the spec's
method, one row of `CALIBRATORS`. Percentile beat MinMax here (outliers stretch MinMax's range);
Entropy fails on embedding tables ("Too many bins"), which never reach it: only the units chosen
by the recipe (MatMul/Conv/Gemm with weights) are quantized. `symmetric` asks for signed,
zero-point-free activations too (TensorRT takes nothing else).

Example:
    >>> model = apply(onnx.load("v.onnx"), units, QuantSpec(bits=8, method="percentile", activation_bits=8), ctx)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgemfm.errors import ConfigError, InputError
from edgemfm.quantizers.conv_weight_only import depthwise
from edgemfm.quantizers.registry import Scheme
from edgemfm.quantizers.units import Unit
from edgemfm.recipe import QuantSpec

if TYPE_CHECKING:
    from edgemfm.quantizers.context import Context

CALIBRATORS = ("minmax", "percentile", "entropy")  # CalibrationMethod.MinMax, .Percentile, .Entropy
PERCENTILE = 99.99  # of |activation|: clips the rare outliers that would waste int8 levels


def check(spec: QuantSpec) -> None:
    """Refuse a spec this scheme cannot honour."""
    if spec.method not in CALIBRATORS:
        raise ConfigError(f"static calibration method {spec.method!r} is unknown; allowed: {', '.join(CALIBRATORS)}")
    if spec.bits != 8 or spec.activation_bits != 8:
        raise ConfigError(
            f"static QDQ is int8 weights and activations, not bits={spec.bits} activation_bits={spec.activation_bits}"
        )


def apply(model: Any, units: list[Unit], spec: QuantSpec, ctx: Context) -> Any:
    """Quantize `units` of `model` to QDQ int8 with calibrated activations; returns the new ModelProto."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from edgemfm.quantizers.context import FeedReader

    check(spec)
    if not ctx.feeds:
        raise InputError(
            "static int8 needs calibration data and none reached this component; allowed: a --calibration folder "
            "with items of its kind (.wav clips for an audio encoder: the built-in set has none)"
        )
    method = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    out = ctx.scratch / "static.onnx"
    quantize_static(
        model,
        out,
        FeedReader(ctx.feeds),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=sorted({u.op for u in units}),
        nodes_to_quantize=[u.node for u in units],
        per_channel=True,
        activation_type=QuantType.QInt8 if spec.symmetric else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=method[spec.method],
        extra_options={
            "ActivationSymmetric": spec.symmetric,
            "WeightSymmetric": True,
            "CalibPercentile": PERCENTILE,
            "CalibTensorRangeSymmetric": spec.symmetric,
        },
    )
    return onnx.load(str(out))


def refuse(unit: Unit, spec: QuantSpec) -> str | None:
    """Why `unit` stays float under static QDQ, or None.

    Example:
        >>> refuse(Unit("v/blocks.3/_bn1", "c", "Conv", "w", (144, 1, 5, 5)), QuantSpec(bits=8, method="minmax"))[:15]
        'depthwise Conv:'
    """
    if unit.op == "Conv" and depthwise(unit):
        # per-tensor int8 activations around depthwise convs cost EfficientNet-Lite0 most of its QDQ loss
        # (BENCHMARKS.md, result quantization-efficientnet-mnist); their weights are a few percent of a CNN's bytes
        return "depthwise Conv: kept float under static QDQ (its per-tensor activations lose the most accuracy)"
    return None


SCHEME = Scheme(
    name="static_int8",
    family="static",
    methods=CALIBRATORS,
    ops=("MatMul", "Conv", "Gemm"),
    order=60,
    apply=apply,
    refuse=refuse,
)
