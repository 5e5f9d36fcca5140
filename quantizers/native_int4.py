"""int4 weights on edgemfm's own kernel: MatMulNBits -> edgemfm.MatMulInt4, packed for dot-product instructions.

ONNX Runtime 1.32's MatMulNBits reads its int4 weights at about 20 GB/s on the x86 host (a SmolLM2 step's 121
calls, 78.8 MB), under two thirds of the bandwidth one core has. `runtimes/kernels/matmul_int4.cpp`
streams a layout made for vpdpbusd / sdot instead: per tile of 16 output columns and block of G inputs, one
record of G/8 64-byte groups (one vector: 16 columns' share of 8 inputs) and the block's 16 scales and 16
offsets as float16,

    MatMulNBits(A, B [N, K/G, G/2], scales [N·K/G], zero_points)  ──►  edgemfm.MatMulInt4(A, W [N/16, K/G, 8G + 64])
    GatherBlockQuantized(table, ids)  (a tied head's lookup)       ──►  edgemfm.GatherInt4(ids, W)

The integers are MatMulNBits' own; each block's scale s and offset -s·zero become float16 (relative error
under 2^-11, against int4's 1/16 step). Activations round to int8 per row and block, as MatMulNBits'
accuracy_level 4. A graph with these ops runs where runtimes/native.py can build the kernel (a C++
compiler, the first time): the edgemfm runtime. Stock onnxruntime, onnxruntime-genai and the Android app do
not know the ops, so the rewrite is an export option (`--kernels edgemfm`), not the default. A node the kernel
cannot take (bits other than 4, a group not a multiple of 8, g_idx, scales not float32) stays MatMulNBits, and
each rewritten node is checked against the float product of the MatMulNBits it replaces, on random rows.

Example:
    >>> manifest = apply(stage, manifest)  # doctest: +SKIP
    >>> manifest.components["text_decoder"].kernels  # doctest: +SKIP
    ('matmul_int4',)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgemfm.manifest import Manifest
from edgemfm.quantizers.tied_table import FILE as TIED_FILE

TILE = 16  # output columns per record
KERNEL = "matmul_int4"  # runtimes/kernels/matmul_int4.cpp
DOMAIN = "edgemfm.int4"  # the ops' domain, the library's own
ROWS = 4  # random rows each rewritten node is checked on


def apply(stage: Path, manifest: Manifest) -> Manifest:
    """Every int4 MatMulNBits of the onnx components in `stage` -> edgemfm.MatMulInt4, a tied head's lookup ->
    edgemfm.GatherInt4 on the same records; the manifest with the components' `kernels`, weight bytes and notes.
    Nothing is built here: the device builds the kernel the first time it loads the bundle.

    Example:
        >>> apply(stage, manifest).report.quantization["text_decoder"].quantized_nodes  # doctest: +SKIP
        {'MatMulInt4': 121}
    """
    components, quantization = dict(manifest.components), dict(manifest.report.quantization)
    decoder = manifest.generation.decoder
    names = sorted((n for n, c in components.items() if c.format == "onnx"), key=lambda n: n != decoder)
    tied: Any = None  # the head's records where the head is the tied table: the lookup reads them
    for name in names:
        path = stage / components[name].file
        tied, counts, worst, stored = _rewrite(path, tied)
        if not counts:
            continue
        c = components[name]
        components[name] = replace(c, kernels=(*c.kernels, KERNEL), weight_bytes=stored)
        if (q := quantization.get(name)) is not None:
            nodes = Counter(q.quantized_nodes)
            nodes.subtract({"MatMulNBits": counts["MatMulInt4"], "GatherBlockQuantized": counts["GatherInt4"]})
            nodes.update({k: counts[k] for k in ("MatMulInt4", "GatherInt4")})
            made = ", ".join(f"{counts[k]} {k}" for k in ("MatMulInt4", "GatherInt4") if counts[k])
            note = f"{made} on edgemfm's kernel (runtimes/kernels/{KERNEL}.cpp)"
            if worst is not None:
                note += f"; worst SQNR {worst:.1f} dB against the float product of the MatMulNBits each replaced"
            quantization[name] = replace(
                q,
                quantized_nodes={k: v for k, v in sorted(nodes.items()) if v > 0},
                weight_bytes=stored,
                notes={**q.notes, "int4 kernel": note},
            )
    report = replace(manifest.report, quantization=quantization)
    return replace(manifest, components=components, report=report)


def _rewrite(path: Path, tied: Any) -> tuple[Any, Counter, float | None, int]:
    """One graph's MatMulNBits (and a tied lookup, given the head's records) rewritten and saved in place: the
    tied head's records (a TensorProto in tied_table.bin), the nodes made, the worst SQNR of a rewritten node on
    random rows against its float product, and the graph's initializer bytes."""
    import onnx
    from onnx import helper, numpy_helper

    from edgemfm.quantizers.metrics import sqnr_db

    model = onnx.load(str(path), load_external_data=False)
    graph, base = model.graph, str(path.parent)  # onnx reads external data from a str folder
    inits = {i.name: i for i in graph.initializer}
    counts: Counter = Counter()
    worst, rng = None, np.random.default_rng(0)
    for at, node in enumerate(list(graph.node)):
        if node.op_type == "MatMulNBits" and node.domain == "com.microsoft":
            attrs = {a.name: a.i for a in node.attribute}
            K, N, G, bits = attrs["K"], attrs["N"], attrs["block_size"], attrs.get("bits", 4)
            inputs = [*node.input, "", "", "", ""][:6]
            if not supports(bits, G) or inputs[4] or inits[inputs[2]].data_type != onnx.TensorProto.FLOAT:
                continue
            B, scales = (numpy_helper.to_array(inits[n], base) for n in inputs[1:3])
            zero_points = numpy_helper.to_array(inits[inputs[3]], base) if inputs[3] else None
            records = pack(B, scales, zero_points, K, N, G)
            a = rng.standard_normal((ROWS, K), dtype=np.float32)
            q, s, z = unpack(B, scales, zero_points, K, N, G)
            exact = a @ ((q - np.repeat(z, G, axis=1)) * np.repeat(s, G, axis=1))[:, :K].T  # MatMulNBits', in float
            db = sqnr_db(exact, matmul_int4_reference(a, records, K, N, G))
            worst = db if worst is None else min(worst, db)
            proto = numpy_helper.from_array(records, f"{node.name or node.output[0]}.int4_records")
            if _external(inits[inputs[1]]) == TIED_FILE:  # the tied head: the lookup will read these records
                tied = proto
            graph.initializer.append(proto)
            extra = [inputs[5]] if inputs[5] else []
            new = _node("MatMulInt4", [inputs[0], proto.name, *extra], node, K=K, N=N, block_size=G)
            graph.node.remove(node)
            graph.node.insert(at, new)
            counts["MatMulInt4"] += 1
        elif node.op_type == "GatherBlockQuantized" and node.name == "tied_lookup" and tied is not None:
            attrs = {a.name: a.i for a in node.attribute}
            V, width = (int(d) for d in inits[node.input[0]].dims[:2])
            K = width * 8 // attrs.get("bits", 4)
            new = _node("GatherInt4", [node.input[1], tied.name], node, K=K, N=V, block_size=attrs["block_size"])
            graph.node.remove(node)
            graph.node.insert(at, new)
            lookup = onnx.TensorProto()
            lookup.CopyFrom(tied)  # the same bytes of tied_table.bin (the decoder, rewritten first, placed them)
            graph.initializer.append(lookup)
            counts["GatherInt4"] += 1
    if not counts:
        return tied, counts, None, 0
    read = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name not in read]:
        graph.initializer.remove(init)
    if counts["MatMulInt4"] and tied is not None and tied.name in read:
        _place_tied(base, tied, graph)
    model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    stored = sum(numpy_helper.to_array(i, base).nbytes for i in graph.initializer)
    onnx.save(model, str(path))  # inside export's staging folder: a failed export leaves nothing
    return tied, counts, worst, stored


def _node(op: str, inputs: list[str], old: Any, **attributes: int) -> Any:
    """A node of the kernel's domain in place of `old`: its name and outputs."""
    from onnx import helper

    return helper.make_node(op, inputs, list(old.output), name=old.name, domain=DOMAIN, **attributes)


def _external(init: Any) -> str:
    """The file an initializer's bytes live in ('' where they are in the graph)."""
    return next((e.value for e in init.external_data if e.key == "location"), "")


def _place_tied(base: str, tied: Any, graph: Any) -> None:
    """tied_table.bin rewritten to hold the head's records alone; the graph's copy of the proto points there."""
    from edgemfm.quantizers.tied_table import write_external

    write_external(Path(base) / TIED_FILE, [tied])
    for init in graph.initializer:
        if init.name == tied.name:
            init.CopyFrom(tied)


def supports(bits: int, block: int) -> bool:
    """Whether a MatMulNBits of these bits and group can run on the kernel (else it stays MatMulNBits).

    Example:
        >>> supports(4, 32), supports(4, 4), supports(8, 32)
        (True, False, False)
    """
    return bits == 4 and block >= 8 and block % 8 == 0


def unpack(B: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, K: int, N: int, block: int):
    """MatMulNBits' int4 inputs as q [N, ceil(K/G) G] (0..15), scales [N, ceil(K/G)] and zero points [N, ceil(K/G)]
    as float32 (8 where absent; uint8 ones are packed two to a byte, float ones (HQQ's) are one per block).

    Example:
        >>> q, s, z = unpack(np.zeros((16, 2, 16), np.uint8), np.ones(32, np.float32), None, K=64, N=16, block=32)
        >>> q.shape, s.shape, float(z[0, 0])
        ((16, 64), (16, 2), 8.0)
    """
    blocks = -(-K // block)
    packed = np.asarray(B, np.uint8).reshape(N, blocks, block // 2)
    q = np.stack([packed & 15, packed >> 4], axis=-1).reshape(N, blocks * block)
    s = np.asarray(scales, np.float32).reshape(N, blocks)
    if zero_points is None:
        z = np.full((N, blocks), 8, np.float32)
    elif zero_points.dtype == np.uint8:
        zp = zero_points.reshape(N, -1)
        z = np.stack([zp & 15, zp >> 4], axis=-1).reshape(N, -1)[:, :blocks].astype(np.float32)
    else:
        z = np.asarray(zero_points, np.float32).reshape(N, blocks)
    return q, s, z


def pack(B: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, K: int, N: int, block: int) -> np.ndarray:
    """A MatMulNBits node's weights as the kernel's records, uint8 [ceil(N/16), ceil(K/G), 8G + 64] (layout in the
    kernel's header; the columns past N are zeros).

    Example:
        >>> pack(np.zeros((960, 18, 16), np.uint8), np.ones(960 * 18, np.float32), None, K=576, N=960, block=32).shape
        (60, 18, 320)
    """
    q, s, z = unpack(B, scales, zero_points, K, N, block)
    tiles, blocks = -(-N // TILE), -(-K // block)
    padding = ((0, tiles * TILE - N), (0, 0))
    q, s, z = (np.pad(x, padding) for x in (q, s, z))
    # [tile, column, block, group, half (inputs 0-3 or 4-7 of the group), j] -> [tile, block, group, column, j, half]
    q = q.reshape(tiles, TILE, blocks, block // 8, 2, 4).transpose(0, 2, 3, 1, 5, 4)
    nibbles = (q[..., 0] | (q[..., 1] << 4)).astype(np.uint8).reshape(tiles, blocks, 8 * block)
    s16 = s.astype(np.float16)
    m16 = (-s * z).astype(np.float16)
    halves = np.concatenate([s16, m16], axis=1)  # [N, 2 blocks]: scales, then offsets
    halves = halves.reshape(tiles, TILE, 2, blocks).transpose(0, 3, 2, 1).reshape(tiles, blocks, 2 * TILE)
    return np.concatenate([nibbles, np.ascontiguousarray(halves).view(np.uint8)], axis=2)


def weights(records: np.ndarray, K: int, N: int, block: int) -> np.ndarray:
    """The float [N, K] weights the records hold (s·q + m, as the kernel reads them).

    Example:
        >>> records = pack(np.zeros((16, 2, 16), np.uint8), np.ones(32, np.float32), None, 64, 16, 32)
        >>> weights(records, 64, 16, 32)[0, :3]  # q 0 less the zero point 8, times the scale 1
        array([-8., -8., -8.], dtype=float32)
    """
    q, s, m = _columns(records, block)
    return (s.astype(np.float32)[:, :, None] * q + m.astype(np.float32)[:, :, None]).reshape(len(q), -1)[:N, :K]


def matmul_int4_reference(a: np.ndarray, records: np.ndarray, K: int, N: int, block: int, bias=None) -> np.ndarray:
    """edgemfm.MatMulInt4's arithmetic in numpy: a [..., K] rounded to int8 per row and block, exact integer dot
    products per block, float sums of the blocks.

    Example:
        >>> records = pack(np.zeros((16, 2, 16), np.uint8), np.ones(32, np.float32), None, 64, 16, 32)
        >>> matmul_int4_reference(np.ones((1, 64), np.float32), records, 64, 16, 32)[0, :2]  # 64 x (1 x -8)
        array([-512., -512.], dtype=float32)
    """
    q, s, m = _columns(records, block)
    blocks = q.shape[1]
    rows = np.asarray(a, np.float32).reshape(-1, K)
    x = np.pad(rows, ((0, 0), (0, blocks * block - K))).reshape(-1, blocks, block)
    amax = np.abs(x).max(axis=2, keepdims=True)
    with np.errstate(divide="ignore"):
        inverse = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q8 = np.rint(x * inverse).astype(np.int64)
    sa = (amax[..., 0] / np.float32(127)).astype(np.float64)  # [M, blocks]
    dots = np.einsum("mbk,nbk->mnb", q8, q.astype(np.int64))  # exact
    y = (s[None] * (sa[:, None, :] * dots) + m[None] * (sa * q8.sum(axis=2))[:, None, :]).sum(axis=2)[:, :N]
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return y.astype(np.float32).reshape(*np.shape(a)[:-1], N)


def _columns(records: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The records as q [columns, blocks, G] (uint8), s and m [columns, blocks] (float64), padding included."""
    tiles, blocks = records.shape[:2]
    nibbles = records[..., : 8 * block].reshape(tiles, blocks, block // 8, TILE, 4)
    q = np.stack([nibbles & 15, nibbles >> 4], axis=-2)  # [tile, block, group, column, half, j]
    q = q.transpose(0, 3, 1, 2, 4, 5).reshape(tiles * TILE, blocks, block)
    halves = np.ascontiguousarray(records[..., 8 * block :]).view(np.float16).astype(np.float64)
    halves = halves.reshape(tiles, blocks, 2, TILE).transpose(0, 3, 2, 1).reshape(tiles * TILE, 2, blocks)
    return q, halves[:, 0], halves[:, 1]


def gather_int4_reference(ids: np.ndarray, records: np.ndarray, K: int, N: int, block: int) -> np.ndarray:
    """edgemfm.GatherInt4 in numpy: the rows `ids` of the [N, K] table the records hold.

    Example:
        >>> records = pack(np.zeros((16, 2, 16), np.uint8), np.ones(32, np.float32), None, 64, 16, 32)
        >>> gather_int4_reference(np.array([[3, 7]]), records, 64, 16, 32).shape
        (1, 2, 64)
    """
    return weights(records, K, N, block)[np.asarray(ids)]
