"""Weight-only int4 for convolutions: int4 blocks along the input channels, DequantizeLinear in front.

ORT's MatMulNBits covers MatMul only, so a CNN's int4 is written here as the standard ONNX form:
`DequantizeLinear(int4 weight, scales, axis=1, block_size=B) -> Conv` (opset 21 blocked
quantization). Each block of B input channels at one kernel position shares a symmetric scale,
like MatMulNBits' groups, chosen for the least squared error rather than plain absmax: the
per-channel int4 that collapsed EfficientNet-Lite0 to 26% on MNIST is what this avoids. A depthwise conv has one input channel per group, so no block to share: it
gets int8 per output channel instead, and the report says so. int8 specs give every conv int8
weights per output channel, the activations staying float (weight-only int8), except on a CPU whose
profile says `int8_conv = "qlinear"`: there a CNN's chained convs with int8 activations in the spec
run on int8 kernels (quantizers/conv_qlinear.py) when calibration data reached the component.

Example:
    >>> model = apply(onnx.load("effnet.onnx"), units, QuantSpec(bits=4, group_size=64), ctx)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from edgemfm.quantizers import conv_qlinear
from edgemfm.quantizers.registry import Scheme
from edgemfm.quantizers.units import Unit
from edgemfm.recipe import QuantSpec

if TYPE_CHECKING:
    from edgemfm.quantizers.context import Context

OPSET = 21  # DequantizeLinear with int4 and block_size
SHRINK = tuple(np.linspace(1.0, 0.6, 9))  # of absmax/7 tried per block; 1.0 first: plain round-to-nearest wins ties


def depthwise(unit: Unit) -> bool:
    return unit.shape[1] == 1


def apply(model: Any, units: list[Unit], spec: QuantSpec, ctx: Context) -> Any:
    """Quantize the Conv `units` of `model` to int4 blocks (int8 per channel when depthwise or the spec is int8)."""
    from onnx import TensorProto, helper, numpy_helper

    if spec.bits == 8 and spec.activation_bits == 8 and ctx.profile.int8_conv == "qlinear" and ctx.feeds:
        on_int8, small, kept_float = conv_qlinear.select(model, units, ctx)
        if on_int8:
            model = conv_qlinear.apply(model, on_int8, small, ctx)
        units = [u for u in units if u not in on_int8 and u not in kept_float]
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    for u in units:
        w = numpy_helper.to_array(inits[u.weight]).astype(np.float32)
        if depthwise(u) or spec.bits == 8:
            scale = np.maximum(np.abs(w).max(axis=tuple(range(1, w.ndim))), 1e-12) / 127.0
            q = np.clip(np.round(w / scale.reshape(-1, *[1] * (w.ndim - 1))), -127, 127).astype(np.int8)
            qt, attrs = numpy_helper.from_array(q, f"{u.weight}_q"), {"axis": 0}
        else:
            block = min(spec.group_size, w.shape[1])
            scale = _least_squares_scale(w, block)
            q = np.clip(np.round(w / np.repeat(scale, block, axis=1)[:, : w.shape[1]]), -8, 7).astype(np.int8)
            qt = helper.make_tensor(f"{u.weight}_q", TensorProto.INT4, q.shape, q.ravel().tolist())
            attrs = {"axis": 1, "block_size": block}
        graph.initializer.remove(inits[u.weight])
        graph.initializer.extend([qt, numpy_helper.from_array(scale.astype(np.float32), f"{u.weight}_scale")])
        graph.node.insert(
            0,
            helper.make_node(
                "DequantizeLinear",
                [f"{u.weight}_q", f"{u.weight}_scale"],
                [u.weight],
                name=f"{u.node}_dequant",
                **attrs,
            ),
        )
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx") and op.version < OPSET:
            op.version = OPSET
    model.ir_version = max(model.ir_version, 10)  # int4 tensors need IR 10
    return model


def _least_squares_scale(w: np.ndarray, block: int) -> np.ndarray:
    """Each block's scale: of absmax/7 shrunk by one of SHRINK, the one with the least squared error.

    Clipping a block's few largest weights buys a finer grid for all the others; which shrink wins
    depends on the block, so each block tries them all (the data-free half of AWQ's clip search).
    Shape [Cout, ceil(Cin / block), *kernel] (Conv1d and Conv2d weights alike).
    """
    cin = w.shape[1]
    pad = -cin % block
    padded = np.pad(w, ((0, 0), (0, pad), *[(0, 0)] * (w.ndim - 2)))
    blocks = padded.reshape(w.shape[0], (cin + pad) // block, block, *w.shape[2:])
    absmax = np.maximum(np.abs(blocks).max(axis=2), 1e-12) / 7.0
    best, best_err = absmax, np.full(absmax.shape, np.inf)
    for shrink in SHRINK:
        s = absmax * shrink
        err = ((np.clip(np.round(blocks / s[:, :, None]), -8, 7) * s[:, :, None] - blocks) ** 2).sum(axis=2)
        better = err < best_err
        best, best_err = np.where(better, s, best), np.where(better, err, best_err)
    return best


# int4 blocks / int8 channels whatever the weight-only method: the schemes that provide them are MatMul-only
SCHEME = Scheme(name="conv_weight_only", family="weight-only", methods=(), ops=("Conv",), order=40, apply=apply)
