"""Block-wise int4/int8 MatMul weights with searched scales: `MatMulNBits` written by edgemfm.

Round-to-nearest takes each block's scale from its largest weight; one outlier then coarsens the
grid for the whole block. Here each block tries its absmax scale shrunk by each of `SHRINK` and
keeps the one with the least squared error, weighted per input channel by the mean square of the
activations that multiply it on calibration data (AWQ's clip search: an error on a channel that
carries large activations costs more). Without calibration data the weights are equal.

Measured on SmolLM2-135M (BENCHMARKS.md, result quantization-smollm2) against ORT's RTN and GPTQ; the packed layout is
MatMulNBits' own: symmetric (no zero points: the kernel's default midpoint) or, with
`symmetric=False`, each block's own [min, max] range with a packed zero point, which the int8
compute path (`accuracy_level=4`) takes as well. With zero points each block's scale and zero point are
then refit by least squares to the codes they give (`REFITS`): the search moves both ends of a range
together, while a few massive activation channels want the grid placed for their weights. SmolLM2-135M
int4 preset (g64, head g32), perplexity on eval_en.txt / 2,047 tokens of WordNet / of the docs: 27.70 /
21.61 / 47.46 without the refit, 26.43 / 20.41 / 44.24 with it, at the same 79.5 MiB (genai's g32 RTN:
27.57 at 82.5 MiB; every MatMul at g32 without the refit: 26.94 / 20.57 / 45.59 at 86.6 MiB).

Example:
    >>> model = apply(onnx.load("d.onnx"), units, QuantSpec(bits=4, group_size=64, method="clip_search"), ctx)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from edgemfm.errors import ConfigError
from edgemfm.quantizers.registry import Scheme
from edgemfm.quantizers.units import Unit
from edgemfm.recipe import QuantSpec

if TYPE_CHECKING:
    from edgemfm.quantizers.context import Context

METHODS = ("clip_search",)
SHRINK = tuple(np.linspace(1.0, 0.6, 9))  # of absmax / qmax tried per block; 1.0 first: plain RTN wins ties
REFITS = 3  # least squares refits of each block's scale and zero point after the search (with zero points only)


def check(spec: QuantSpec) -> None:
    """Refuse a spec this scheme cannot honour."""
    if spec.bits not in (4, 8):
        raise ConfigError(f"method 'clip_search' takes bits 4 or 8, not {spec.bits}")
    g = spec.group_size
    if g < 16 or g & (g - 1):
        raise ConfigError(f"group size {g} must be a power of two >= 16 for MatMulNBits")


def probe(model: Any, inputs: list[str], feeds: list[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
    """Per calibration feed: the rows [tokens, channels] of each tensor in `inputs`, by name."""
    import onnx
    import onnxruntime as ort

    graph = onnx.ModelProto()
    graph.CopyFrom(model)
    known = {o.name for o in graph.graph.output}
    graph.graph.output.extend(onnx.ValueInfoProto(name=n) for n in inputs if n not in known)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    for feed in feeds:
        got = session.run(inputs, {k: v for k, v in feed.items() if k in names})
        yield {n: x.reshape(-1, x.shape[-1]) for n, x in zip(inputs, got)}


def activation_stats(
    model: Any, inputs: list[str], feeds: list[dict[str, np.ndarray]]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(mean square, max |x|) per channel (last axis) of each tensor in `inputs` over the calibration feeds."""
    if not feeds:
        return {}
    sums: dict[str, np.ndarray] = {}
    peaks: dict[str, np.ndarray] = {}
    rows: dict[str, int] = {}
    for got in probe(model, inputs, feeds):
        for n, x in got.items():
            x = x.astype(np.float64)
            sums[n] = sums.get(n, 0.0) + (x**2).sum(axis=0)
            peaks[n] = np.maximum(peaks.get(n, 0.0), np.abs(x).max(axis=0))
            rows[n] = rows.get(n, 0) + x.shape[0]
    return {n: (sums[n] / rows[n], peaks[n]) for n in inputs}


def _blocked(w: np.ndarray, block: int, weight: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """W [K, N] as blocks along K, [N, blocks, block] (K zero-padded to a whole block), and the
    error weights [1, blocks, block] of their input channels (equal without `weight`)."""
    k, n = w.shape
    pad = -k % block
    wt = np.pad(w.T.astype(np.float32), ((0, 0), (0, pad))).reshape(n, -1, block)
    h = np.ones(k + pad, np.float32) if weight is None else np.pad(weight.astype(np.float32) + 1e-12, (0, pad))
    return wt, h.reshape(1, -1, block)


def quantize_blocks(w: np.ndarray, bits: int, block: int, weight: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """W [K, N] -> (signed integers [N, blocks, block], scales [N, blocks]) with searched scales.

    `weight` [K]: the error weight of each input channel (None: equal).
    """
    qmax = 2 ** (bits - 1) - 1
    wt, h = _blocked(w, block, weight)
    base = np.maximum(np.abs(wt).max(axis=2), 1e-12) / qmax
    best, best_err = base, np.full(base.shape, np.inf, np.float32)
    for shrink in SHRINK:
        s = (base * shrink)[:, :, None]
        err = (h * (np.clip(np.round(wt / s), -qmax - 1, qmax) * s - wt) ** 2).sum(axis=2)
        better = err < best_err
        best, best_err = np.where(better, base * shrink, best), np.where(better, err, best_err)
    q = np.clip(np.round(wt / best[:, :, None]), -qmax - 1, qmax).astype(np.int16)
    return q, best.astype(np.float32)


def quantize_blocks_asymmetric(
    w: np.ndarray, bits: int, block: int, weight: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """W [K, N] -> (integers [N, blocks, block] less the kernel's midpoint, scales [N, blocks], zero
    points [N, blocks]) with each block's range [min, max] shrunk by the best of `SHRINK`, then refit.

    A block's values rarely straddle zero evenly; its own range wastes none of the 2^bits levels on
    the side it does not reach (llama.cpp's Q4_1 and K-quants keep a minimum per block for this).

    Example:
        >>> q, scales, zeros = quantize_blocks_asymmetric(np.ones((64, 2), np.float32) + 0.5, 4, 64, None)   # doctest: +SKIP
    """
    top, mid = 2**bits - 1, 2 ** (bits - 1)
    wt, h = _blocked(w, block, weight)
    lo, hi = np.minimum(wt.min(axis=2), 0.0), np.maximum(wt.max(axis=2), 0.0)  # zero stays on the grid (padding is 0)
    best_s, best_z, best_err = None, None, np.full(lo.shape, np.inf, np.float32)
    for shrink in SHRINK:
        s = np.maximum((hi - lo) * shrink / top, 1e-12)
        z = np.clip(np.round(-lo * shrink / s), 0, top)
        err = _asymmetric_error(wt, h, s, z, top)
        better = err < best_err
        best_s = s if best_s is None else np.where(better, s, best_s)
        best_z = z if best_z is None else np.where(better, z, best_z)
        best_err = np.where(better, err, best_err)
    best_s, best_z = _refit(wt, h, best_s, best_z, best_err, top)
    q = _codes(wt, best_s, best_z, top).astype(np.int16) - mid
    return q, best_s.astype(np.float32), best_z.astype(np.uint8)


def _codes(wt: np.ndarray, s: np.ndarray, z: np.ndarray, top: int) -> np.ndarray:
    """The unsigned codes [N, blocks, block] of blocks `wt` on the grids (scale `s`, zero point `z`)."""
    return np.clip(np.round(wt / s[:, :, None]) + z[:, :, None], 0, top)


def _asymmetric_error(wt: np.ndarray, h: np.ndarray, s: np.ndarray, z: np.ndarray, top: int) -> np.ndarray:
    """Each block's squared error on its grid (scale `s`, zero point `z`), weighted per input channel by `h`."""
    return (h * ((_codes(wt, s, z, top) - z[:, :, None]) * s[:, :, None] - wt) ** 2).sum(axis=2)


def _refit(
    wt: np.ndarray, h: np.ndarray, s: np.ndarray, z: np.ndarray, err: np.ndarray, top: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each block's (scale, zero point) refit `REFITS` times to the codes its grid gives: the weighted least
    squares line w ~ scale x code + offset, the zero point rounded from its offset, the scale refit to that
    integer zero point; a refit is kept only where it lowers the block's error `err`.

    The shrink search moves both ends of a range together and keeps the grid's end points; the codes
    say where the weights fall, and the best grid through them is a least squares fit (llama.cpp's
    make_qkx quants refit their min and scale the same way).
    """
    hb = np.broadcast_to(h, wt.shape)
    weights, weighted_w = hb.sum(axis=2), (hb * wt).sum(axis=2)
    for _ in range(REFITS):
        c = _codes(wt, s, z, top)
        sc, scc, scw = (hb * c).sum(axis=2), (hb * c * c).sum(axis=2), (hb * c * wt).sum(axis=2)
        det = weights * scc - sc**2
        fits = det > 1e-12 * np.maximum(weights * scc, 1e-30)  # a block whose codes are all one value has no line
        det = np.where(fits, det, 1.0)
        slope = np.where(fits, (weights * scw - sc * weighted_w) / det, s)
        offset = (scc * weighted_w - sc * scw) / det
        slope = np.where(slope > 1e-12, slope, s)
        z2 = np.where(fits, np.clip(np.round(-offset / slope), 0, top), z)
        cz = c - z2[:, :, None]
        den = (hb * cz * cz).sum(axis=2)
        s2 = np.where(den > 0, (hb * cz * wt).sum(axis=2) / np.where(den > 0, den, 1.0), slope)
        s2 = np.where(s2 > 1e-12, s2, s)
        err2 = _asymmetric_error(wt, h, s2, z2, top)
        better = err2 < err
        s, z, err = np.where(better, s2, s), np.where(better, z2, z), np.where(better, err2, err)
    return s, z


def pack(q: np.ndarray, bits: int) -> np.ndarray:
    """Signed integers [N, blocks, block] -> MatMulNBits' uint8 blobs (offset by the default zero point)."""
    u = (q + 2 ** (bits - 1)).astype(np.uint8)
    if bits == 8:
        return u
    return (u[:, :, 0::2] | (u[:, :, 1::2] << 4)).astype(np.uint8)  # element 2j in the low nibble


def apply(model: Any, units: list[Unit], spec: QuantSpec, ctx: Context) -> Any:
    """Replace the MatMul `units` of `model` by MatMulNBits with searched scales; returns the model."""
    from onnx import numpy_helper

    check(spec)
    nodes = {n.name: n for n in model.graph.node}
    inits = {i.name: i for i in model.graph.initializer}
    assert all(u.op == "MatMul" and len(u.shape) == 2 for u in units), (
        "clip_search quantizes 2-D MatMul weights only (apply.scheme_of routes the rest)"
    )
    stats = activation_stats(model, sorted({nodes[u.node].input[0] for u in units}), list(ctx.feeds))
    search = quantize_blocks if spec.symmetric else quantize_blocks_asymmetric
    codes = {
        u.node: search(
            numpy_helper.to_array(inits[u.weight]),
            spec.bits,
            spec.group_size,
            stats[nodes[u.node].input[0]][0] if stats else None,
        )
        for u in units
    }
    return write_nbits(model, units, spec, codes)


def pack_zero_points(zeros: np.ndarray, bits: int) -> np.ndarray:
    """Zero points [N, blocks] -> MatMulNBits' layout: bytes (8 bits) or two to a byte, low nibble first (4 bits)."""
    if bits == 8:
        return zeros.astype(np.uint8)
    z = np.pad(zeros.astype(np.uint8), ((0, 0), (0, zeros.shape[1] % 2)))
    return (z[:, 0::2] | (z[:, 1::2] << 4)).astype(np.uint8)


def write_nbits(model: Any, units: list[Unit], spec: QuantSpec, codes: dict[str, tuple[np.ndarray, ...]]) -> Any:
    """Replace each MatMul unit by a MatMulNBits holding its (integers [N, blocks, block], scales [N, blocks]
    [, zero points [N, blocks]]) from `codes`."""
    from onnx import helper, numpy_helper

    graph = model.graph
    nodes = {n.name: n for n in graph.node}
    inits = {i.name: i for i in graph.initializer}
    level = 4 if spec.activation_bits == 8 else 0
    for u in units:
        node = nodes[u.node]
        q, scales, *zeros = codes[u.node]
        k, n = u.shape
        base = f"{u.weight}_{u.node}"
        graph.initializer.extend(
            [
                numpy_helper.from_array(pack(q, spec.bits), f"{base}_Q{spec.bits}"),
                numpy_helper.from_array(scales.reshape(-1).astype(np.float32), f"{base}_scales"),
                *(
                    numpy_helper.from_array(pack_zero_points(z, spec.bits).reshape(-1), f"{base}_zero_points")
                    for z in zeros
                ),
            ]
        )
        inputs = [node.input[0], f"{base}_Q{spec.bits}", f"{base}_scales", *(f"{base}_zero_points" for _ in zeros)]
        attrs = {
            "K": k,
            "N": n,
            "bits": spec.bits,
            "block_size": spec.group_size,
            **({"accuracy_level": level} if level else {}),
        }
        new = helper.make_node(
            "MatMulNBits", inputs, list(node.output), name=f"{u.node}_Q{spec.bits}", domain="com.microsoft", **attrs
        )
        at = list(graph.node).index(node)
        graph.node.remove(node)
        graph.node.insert(at, new)
    used = {i for n in graph.node for i in n.input}
    for u in units:
        if u.weight not in used and inits[u.weight] in graph.initializer:
            graph.initializer.remove(inits[u.weight])
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


SCHEME = Scheme(name="clip_search", family="weight-only", methods=METHODS, ops=("MatMul",), order=20, apply=apply)
