"""Activation smoothing (SmoothQuant) in front of MatMuls whose activations become int8.

A real LLM's hidden state carries a few channels 10-100x larger than the rest; quantized per
block, each outlier coarsens the grid of its block's other channels. Dividing input channel j
by s_j = max|x_j|^ALPHA / max|W_j|^(1-ALPHA) and multiplying weight row j by it leaves the product
unchanged and moves the outliers' range into the weights, which are quantized per output block.

    x ─► MatMul(W)          becomes          x ─► Mul(1/s) ─► MatMul(diag(s) W)

MatMuls that read the same tensor (q/k/v, gate/up) share one Mul and one s (its weights' rows
are the max over all of them). Where that tensor is a layer norm's output read by nothing else,
1/s goes into the norm's scale and bias instead and there is no Mul (per channel, the norm's
output times 1/s is the norm with scale/s and bias/s): Whisper tiny.en's int8 decoder runs 13
fewer nodes per token (the q/k/v, cross-q and fc1 inputs and the head's; the other 12 Muls read
attention outputs and GELUs).

    LayerNorm(γ, β) ─► Mul(1/s) ─► MatMul(diag(s) W)     becomes     LayerNorm(γ/s, β/s) ─► MatMul(diag(s) W)

Example:
    >>> model = smooth(onnx.load("d.onnx"), units, ctx)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from edgemfm.quantizers.clip_search import activation_stats
from edgemfm.quantizers.units import Unit

if TYPE_CHECKING:
    from edgemfm.quantizers.context import Context

ALPHA = 0.5  # SmoothQuant's migration strength: half the activation range moves into the weights
# Norms whose output 0 is (normalized x) * scale [+ bias], per channel: their scale input, then their bias input.
NORMS = {
    "LayerNormalization": (1, 2),
    "SkipLayerNormalization": (2, 3),
    "SimplifiedLayerNormalization": (1, None),
    "SkipSimplifiedLayerNormalization": (2, None),  # its input 3 is a bias added before the norm: untouched
}


def smooth(model: Any, units: list[Unit], ctx: Context) -> Any:
    """Scale the MatMul `units`' inputs down and their weight rows up by the smoothing factors; returns the model."""
    from onnx import helper, numpy_helper

    if not ctx.feeds:
        return model
    graph = model.graph
    nodes = {n.name: n for n in graph.node}
    inits = {i.name: i for i in graph.initializer}
    readers: dict[str, list[Unit]] = {}
    for u in units:
        if u.op == "MatMul" and len(u.shape) == 2:
            readers.setdefault(nodes[u.node].input[0], []).append(u)
    stats = activation_stats(model, sorted(readers), list(ctx.feeds))
    for x, us in readers.items():
        weights = {u.weight: numpy_helper.to_array(inits[u.weight]) for u in us}
        w_max = np.max([np.abs(w).max(axis=1) for w in weights.values()], axis=0)
        s = np.clip(np.maximum(stats[x][1], 1e-5) ** ALPHA / np.maximum(w_max, 1e-5) ** (1 - ALPHA), 1e-2, 1e2).astype(
            np.float32
        )
        for name, w in weights.items():
            inits[name].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32), name))
        if _fold(graph, x, (1.0 / s).astype(np.float32), {u.node for u in us}):
            continue
        inv = f"{x}_smooth_inv"
        graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inv))
        first = min(list(graph.node).index(nodes[u.node]) for u in us)
        graph.node.insert(first, helper.make_node("Mul", [x, inv], [f"{x}_smoothed"], name=f"{x}_smooth"))
        for u in us:
            nodes[u.node].input[0] = f"{x}_smoothed"
    return model


def _fold(graph: Any, x: str, inv: np.ndarray, readers: set[str]) -> bool:
    """Scale the norm that writes `x` by `inv` per channel, when only the smoothed MatMuls read `x`; whether it did."""
    from onnx import numpy_helper

    producer = next((n for n in graph.node if x in n.output), None)
    if producer is None or producer.op_type not in NORMS or producer.output[0] != x:
        return False
    if x in {o.name for o in graph.output} or any(x in n.input and n.name not in readers for n in graph.node):
        return False
    inits = {i.name: i for i in graph.initializer}
    slots = [i for i in NORMS[producer.op_type] if i is not None and i < len(producer.input) and producer.input[i]]
    if any(producer.input[i] not in inits or tuple(inits[producer.input[i]].dims) != inv.shape for i in slots):
        return False  # a computed or broadcast scale or bias: the Mul stays
    for i in slots:
        name = producer.input[i]
        value = numpy_helper.to_array(inits[name])
        # a fresh initializer (another norm may share this one); the old one goes once nothing reads it
        graph.initializer.append(numpy_helper.from_array((value * inv).astype(value.dtype), f"{name}_smoothed_{x}"))
        producer.input[i] = f"{name}_smoothed_{x}"
        if not any(name in n.input for n in graph.node):
            graph.initializer.remove(inits[name])
    return True
