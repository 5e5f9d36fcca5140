"""Activation smoothing (SmoothQuant) in front of MatMuls whose activations become int8.

A real LLM's hidden state carries a few channels 10-100x larger than the rest; quantized per
block, each outlier coarsens the grid of its block's other channels. Dividing input channel j
by s_j = max|x_j|^ALPHA / max|W_j|^(1-ALPHA) and multiplying weight row j by it leaves the product
unchanged and moves the outliers' range into the weights, which are quantized per output block.

    x ─► MatMul(W)          becomes          x ─► Mul(1/s) ─► MatMul(diag(s) W)

MatMuls that read the same tensor (q/k/v, gate/up) share one Mul and one s (its weights' rows
are the max over all of them). The Mul is one elementwise op per shared input.

Smoothing is kept only where it helps (`where_it_helps`): the component is quantized both ways and
the one whose output is nearer the float graph's on the calibration feeds wins. It does not always:
real Whisper tiny.en's encoder, smoothed, lost 3.5 dB on the built-in speech clips and 6-9 dB on
long speech (its int8 bundle's next-token KL against fp32, teacher-forced over 605 s: 0.021 smoothed,
0.0004 plain, where the whole int8 decoder adds 0.0007).

Example:
    >>> model = smooth(onnx.load("d.onnx"), units, ctx)  # doctest: +SKIP
    >>> model = where_it_helps(onnx.load("d.onnx"), units, ctx, quantize)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from edgemfm.quantizers.clip_search import activation_stats
from edgemfm.quantizers.metrics import outputs, sqnr_db
from edgemfm.quantizers.units import Unit

if TYPE_CHECKING:
    from edgemfm.quantizers.context import Context

ALPHA = 0.5  # SmoothQuant's migration strength: half the activation range moves into the weights


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
        inv = f"{x}_smooth_inv"
        graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inv))
        first = min(list(graph.node).index(nodes[u.node]) for u in us)
        graph.node.insert(first, helper.make_node("Mul", [x, inv], [f"{x}_smoothed"], name=f"{x}_smooth"))
        for u in us:
            nodes[u.node].input[0] = f"{x}_smoothed"
    return model


def where_it_helps(model: Any, units: list[Unit], ctx: Context, quantize: Callable[[Any], Any]) -> Any:
    """`quantize(model)` with the `units` smoothed or not, whichever's first output (a decoder's logits, an
    encoder's first cross-attention key) is nearer the float graph's on the calibration feeds; the units
    left unsmoothed get a note in `ctx.cache["smoothing"]` saying by how much smoothing lost.

    Example:
        >>> where_it_helps(model, units, ctx, lambda m: weight_only_pass(m))   # doctest: +SKIP
        <ModelProto with no `_smooth` Mul where smoothing lost>
    """
    import copy

    if not ctx.feeds:
        return quantize(model)
    name = model.graph.output[0].name
    ref = outputs(model.SerializeToString(), ctx.feeds, name)
    plain = quantize(copy.deepcopy(model))
    smoothed = quantize(smooth(model, units, ctx))
    db_plain, db_smoothed = (sqnr_db(ref, outputs(m.SerializeToString(), ctx.feeds, name)) for m in (plain, smoothed))
    notes = ctx.cache.setdefault("smoothing", {})
    if db_smoothed >= db_plain:
        for u in units:
            notes.pop(u.name, None)
        return smoothed
    note = (
        f"int8 activations unsmoothed: smoothing lost on the calibration feeds ({db_smoothed:.1f} vs {db_plain:.1f} dB)"
    )
    notes.update({u.name: note for u in units})
    return plain
