"""GPTQ with activation order and static, searched block scales: `MatMulNBits` written by edgemfm.

GPTQ (Frantar et al. 2022) quantizes a weight matrix one input channel at a time and spreads each
channel's rounding error over the channels not yet quantized, weighted by the inverse Hessian
H = XᵀX of the layer's calibration inputs X, so the layer's *output* error is what is minimised,
not the weights'. Here:

- activation order: channels go in decreasing order of diag(H) (the loudest inputs first, while
  the most channels are left to absorb their error);
- static groups: each block's scale is fixed before the pass, by `clip_search` on the original
  weights (so act-order cannot scatter one block's scale over several passes, and the blocks keep
  MatMulNBits' contiguous layout, symmetric, `accuracy_level=4` included);
- dampening: DAMP x mean(diag H) on the diagonal, which keeps the inverse stable where the
  calibration tokens span less than every input channel.

Why not ONNX Runtime's GPTQ (`method="gptq"`): measured on SmolLM2-135M at g64 it was worse than
round-to-nearest (BENCHMARKS.md, result quantization-smollm2), and it has neither act-order nor searched
scales. This one is checked against RTN on a synthetic layer (tests) and on the real weights
(BENCHMARKS.md). It needs many calibration tokens: a unit with fewer than MIN_ROWS_PER_CHANNEL
calibration rows per input channel, or a component no calibration data reaches, gets
`clip_search`'s scales instead, and the report says so per unit.

Example:
    >>> model = apply(onnx.load("d.onnx"), units, QuantSpec(bits=4, group_size=64, method="gptq_act_order"), ctx)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from edgemfm.errors import ConfigError
from edgemfm.quantizers import clip_search
from edgemfm.quantizers.registry import Scheme
from edgemfm.quantizers.units import Unit
from edgemfm.recipe import QuantSpec

if TYPE_CHECKING:
    from edgemfm.quantizers.context import Context

METHODS = ("gptq_act_order",)
DAMP = 0.01  # of mean(diag H), GPTQ's default: enough to invert a rank-deficient H, small against real curvature
MIN_ROWS_PER_CHANNEL = 2  # fewer calibration rows per input channel: clip_search's scales instead (noted)
LAZY = 128  # channels whose updates are batched into one matrix product (GPTQ's lazy batch)


def check(spec: QuantSpec) -> None:
    """Refuse a spec this scheme cannot honour."""
    if spec.method not in METHODS:
        raise ConfigError(f"method {spec.method!r} is not one of {', '.join(METHODS)}")
    clip_search.check(
        QuantSpec(bits=spec.bits, group_size=spec.group_size, symmetric=spec.symmetric, method="clip_search")
    )


def hessians(model: Any, inputs: list[str], feeds: list[dict[str, np.ndarray]]) -> dict[str, tuple[np.ndarray, int]]:
    """(XᵀX in float64 [K, K], number of rows) of each tensor in `inputs` over the calibration feeds."""
    sums: dict[str, np.ndarray] = {}
    rows: dict[str, int] = {}
    for got in clip_search.probe(model, inputs, feeds):
        for n, x in got.items():
            x = x.astype(np.float32)  # one window's product in float32 (2x faster), summed in float64
            sums[n] = sums.get(n, 0.0) + (x.T @ x).astype(np.float64)
            rows[n] = rows.get(n, 0) + x.shape[0]
    return {n: (sums[n], rows[n]) for n in inputs}


def quantize_blocks(w: np.ndarray, bits: int, block: int, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """W [K, N] and its inputs' Hessian H [K, K] -> (signed integers [N, blocks, block], scales [N, blocks]).

    Example:
        >>> q, s = quantize_blocks(w, 4, 64, x.T @ x)   # doctest: +SKIP
    """
    k, n = w.shape
    qmax = 2 ** (bits - 1) - 1
    h = h.astype(np.float64).copy()
    dead = np.diag(h) == 0  # channels no calibration token used: nothing to weigh their error by
    h[dead, dead] = 1.0
    _, scales = clip_search.quantize_blocks(w, bits, block, np.diag(h) / max(np.diag(h).max(), 1e-30))
    pad = -k % block
    per_channel = np.repeat(scales, block, axis=1)[:, :k]  # [N, K]: the scale of each weight's block
    order = np.argsort(-np.diag(h), kind="stable")
    h = h[order][:, order]
    h[np.diag_indices(k)] += DAMP * np.mean(np.diag(h))
    hinv = np.linalg.cholesky(np.linalg.inv(h)).T  # upper factor of H⁻¹: row i holds channel i's feedback
    wt = w.T.astype(np.float64)[:, order]  # [N, K] in activation order
    s = per_channel[:, order].astype(np.float64)
    q = np.zeros_like(wt)
    for i1 in range(0, k, LAZY):
        i2 = min(i1 + LAZY, k)
        w1, err = wt[:, i1:i2].copy(), np.zeros((n, i2 - i1))
        block_inv = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            q[:, i1 + i] = np.clip(np.round(w1[:, i] / s[:, i1 + i]), -qmax - 1, qmax)
            err[:, i] = (w1[:, i] - q[:, i1 + i] * s[:, i1 + i]) / block_inv[i, i]
            w1[:, i:] -= np.outer(err[:, i], block_inv[i, i:])
        wt[:, i2:] -= err @ hinv[i1:i2, i2:]
    codes = np.zeros((n, k + pad), np.int16)
    codes[:, order] = q
    return codes.reshape(n, -1, block), scales


def apply(model: Any, units: list[Unit], spec: QuantSpec, ctx: Context) -> Any:
    """Replace the MatMul `units` of `model` by MatMulNBits quantized by GPTQ; returns the model."""
    from onnx import numpy_helper

    check(spec)
    if not ctx.feeds:  # no Hessian to use (an audio encoder without calibration audio): the report notes it
        return clip_search.apply(model, units, replace(spec, method="clip_search"), ctx)
    nodes = {n.name: n for n in model.graph.node}
    inits = {i.name: i for i in model.graph.initializer}
    assert all(u.op == "MatMul" and len(u.shape) == 2 for u in units), (
        "gptq quantizes 2-D MatMul weights only (apply.scheme_of routes the rest)"
    )
    wanted = sorted({nodes[u.node].input[0] for u in units})
    missing = [n for n in wanted if f"hessian:{n}" not in ctx.cache]
    if (
        missing
    ):  # cached: the float graph's statistics (a mixed recipe's int8 pass runs first; its error is not fed back)
        ctx.cache.update({f"hessian:{n}": h for n, h in hessians(model, missing, list(ctx.feeds)).items()})
    hs = {n: ctx.cache[f"hessian:{n}"] for n in wanted}
    codes, notes = {}, ctx.cache.setdefault("notes", {})
    for u in units:
        h, rows = hs[nodes[u.node].input[0]]
        w = numpy_helper.to_array(inits[u.weight])
        if (
            rows < MIN_ROWS_PER_CHANNEL * u.shape[0]
        ):  # H far from full rank: GPTQ would fit the calibration tokens' noise
            notes[u.name] = f"{rows} calibration rows for {u.shape[0]} input channels: clip_search scales, no GPTQ"
            codes[u.node] = clip_search.quantize_blocks(w, spec.bits, spec.group_size, np.diag(h) / rows)
        else:
            codes[u.node] = quantize_blocks(w, spec.bits, spec.group_size, h)
    return clip_search.write_nbits(model, units, spec, codes)


SCHEME = Scheme(name="gptq", family="weight-only", methods=METHODS, ops=("MatMul",), order=30, apply=apply)
