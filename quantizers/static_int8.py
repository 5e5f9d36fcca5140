"""Static int8 QDQ: per-channel int8 weights, activations with scales calibrated on real inputs.

ONNX Runtime's `quantize_static` writes QuantizeLinear/DequantizeLinear pairs around each chosen
MatMul/Conv: the form TensorRT, QNN, NNAPI and XNNPACK consume. The calibrator is the spec's
method, one row of `CALIBRATORS`. Percentile beat MinMax here (outliers stretch MinMax's range);
Entropy fails on embedding tables ("Too many bins"), which never reach it: only the units chosen
by the recipe (MatMul/Conv/Gemm with weights) are quantized. `symmetric` asks for signed,
zero-point-free activations too (TensorRT takes nothing else). `activation_bits` 16 keeps int8
weights and gives the activations 16 bits (w8a16, what Qualcomm's NPU tooling runs LLM decoders
at): a decoder's hidden state has outlier channels that no per-tensor 8-bit scale holds.

Example:
    >>> model = apply(onnx.load("v.onnx"), units, QuantSpec(bits=8, method="percentile", activation_bits=8), ctx)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgemfm.errors import ConfigError
from edgemfm.quantizers.conv_weight_only import depthwise
from edgemfm.quantizers.registry import Scheme
from edgemfm.quantizers.units import Unit
from edgemfm.recipe import QuantSpec

if TYPE_CHECKING:
    from edgemfm.quantizers.context import Context

CALIBRATORS = ("minmax", "percentile", "entropy")  # CalibrationMethod.MinMax, .Percentile, .Entropy
ACTIVATION_BITS = (8, 16)
QDQ16_OPSET = 21  # the first opset whose QuantizeLinear / DequantizeLinear take 16-bit integers
PERCENTILE = 99.99  # of |activation|: clips the rare outliers that would waste int8 levels


def check(spec: QuantSpec) -> None:
    """Refuse a spec this scheme cannot honour."""
    if spec.method not in CALIBRATORS:
        raise ConfigError(f"static calibration method {spec.method!r} is unknown; allowed: {', '.join(CALIBRATORS)}")
    if spec.bits != 8 or spec.activation_bits not in ACTIVATION_BITS:
        raise ConfigError(
            f"static QDQ is int8 weights with int8 or int16 activations, not bits={spec.bits} "
            f"activation_bits={spec.activation_bits}"
        )


def apply(model: Any, units: list[Unit], spec: QuantSpec, ctx: Context) -> Any:
    """Quantize `units` of `model` to QDQ int8 with calibrated activations; returns the new ModelProto."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from edgemfm.quantizers.context import FeedReader

    check(spec)
    method = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    out = ctx.scratch / "static.onnx"
    signed, wide = spec.symmetric, spec.activation_bits == 16
    activations = {(True, False): QuantType.QInt8, (False, False): QuantType.QUInt8}
    activations |= {(True, True): QuantType.QInt16, (False, True): QuantType.QUInt16}
    if wide:
        model = _at_opset(model, QDQ16_OPSET)
    quantize_static(
        model,
        out,
        FeedReader(ctx.feeds),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=sorted({u.op for u in units}),
        nodes_to_quantize=[u.node for u in units],
        per_channel=True,
        activation_type=activations[(signed, wide)],
        weight_type=QuantType.QInt8,
        calibrate_method=method[spec.method],
        extra_options={
            "ActivationSymmetric": spec.symmetric,
            "WeightSymmetric": True,
            "CalibPercentile": PERCENTILE,
            "CalibTensorRangeSymmetric": spec.symmetric,
            **_one_feed_at_a_time(ctx.feeds),
        },
    )
    return onnx.load(str(out))


def _one_feed_at_a_time(feeds: list[dict]) -> dict:
    """ORT's option to collect feeds one at a time and merge their ranges, where the feeds' shapes differ.

    The histogram calibrators (percentile, entropy) stack a collection's activations into one array, and a
    vision encoder's feeds differ in patch count (Qwen2-VL); merging re-bins the histograms, so feeds of one
    shape keep the one-shot collection (its ranges exactly as before).

    Example:
        >>> import numpy as np
        >>> _one_feed_at_a_time([{"x": np.zeros((2, 3))}, {"x": np.zeros((4, 3))}])
        {'CalibStridedMinMax': 1}
    """
    shapes = {tuple((k, v.shape) for k, v in sorted(f.items())) for f in feeds}
    return {"CalibStridedMinMax": 1} if len(shapes) > 1 else {}


def _at_opset(model: Any, version: int) -> Any:
    """`model` declaring at least `version` of the default domain.

    Its operators read the same from opset 18 to 21 (those releases only widened their types). ONNX
    Runtime's quantizer would run onnx's version converter instead, which stops at ONNX Runtime's own
    operators in that domain (SimplifiedLayerNormalization, SkipSimplifiedLayerNormalization).
    """
    out = type(model)()
    out.CopyFrom(model)
    for entry in out.opset_import:
        if entry.domain in ("", "ai.onnx") and entry.version < version:
            entry.version = version
    return out


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
    calibrated=True,
)
