"""int4 and int8 weights on edgemfm's own kernel: MatMulNBits -> edgemfm.MatMulInt4 / MatMulInt8, packed for
dot-product instructions.

ONNX Runtime 1.32's MatMulNBits reads its int4 weights at about 20 GB/s on the x86 host (a SmolLM2 step's 121
calls, 78.8 MB), and its int8 ones slower still, under two thirds of the bandwidth one core has.
`runtimes/kernels/matmul_int4.cpp` streams a layout made for vpdpbusd / sdot instead: per tile of 16 output
columns and block of G inputs, one record of 64-byte groups (one vector: 16 columns' share of 8 int4 inputs, or
of 4 int8 ones) and the block's 16 scales and 16 offsets as float16,

    MatMulNBits(A, B [N, K/G, G·bits/8], scales [N·K/G], zero_points)
        ──►  edgemfm.MatMulInt4(A, W [N/16, K/G, 8G + 64])     bits 4
        ──►  edgemfm.MatMulInt8(A, W [N/16, K/G, 16G + 64])    bits 8
    GatherBlockQuantized(table, ids)  (a tied head's lookup)  ──►  edgemfm.GatherInt4 / GatherInt8(ids, W)

The integers are MatMulNBits' own; each block's scale s and offset -s·zero become float16 (each within 2^-11 of
itself: a weight moves by at most (q + zero)·2^-11 of its step, under 1.5% at int4; a symmetric int8 block's
offset -128·s is exact, leaving |q - 128|·2^-11, under 1/16). Activations round to int8 per row and block, as
MatMulNBits' accuracy_level 4. A graph with these ops runs where runtimes/native.py can build the kernel (a
C++ compiler, the first time): the edgemfm runtime. Stock onnxruntime, onnxruntime-genai and the Android app do
not know the ops, so the rewrite is an export option (`--kernels edgemfm`), not the default. A node the kernel
cannot take (bits other than 4 or 8, a group not a multiple of a record's vector, g_idx, scales not float32)
stays MatMulNBits, and each rewritten node is checked against the float product of the MatMulNBits it
replaces, on random rows.

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
from edgemfm.quantizers.tied_table import drop_unread, external_file, write_external

TILE = 16  # output columns per record
KERNEL = "matmul_int4"  # runtimes/kernels/matmul_int4.cpp
DOMAIN = "edgemfm.int4"  # the ops' domain, the library's own
ROWS = 4  # random rows each rewritten node is checked on
# bits -> inputs per 64-byte vector of a record (a group must be a multiple): the widths the kernel has
VECTOR_INPUTS = {4: 8, 8: 4}
OPS = {4: ("MatMulInt4", "GatherInt4"), 8: ("MatMulInt8", "GatherInt8")}  # bits -> the kernel's matmul and lookup


def apply(stage: Path, manifest: Manifest) -> Manifest:
    """Every int4 or int8 MatMulNBits of the onnx components in `stage` -> edgemfm.MatMulInt4 or MatMulInt8, a tied
    head's lookup -> edgemfm.GatherInt4 or GatherInt8 on the same records; the manifest with the components'
    `kernels`, weight bytes and a note per width. Nothing is built here: the device builds the kernel the first time
    it loads the bundle.

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
            nodes, notes = Counter(q.quantized_nodes), dict(q.notes)
            for bits, (matmul, lookup) in OPS.items():
                nodes.subtract({"MatMulNBits": counts[matmul], "GatherBlockQuantized": counts[lookup]})
                nodes.update({k: counts[k] for k in (matmul, lookup)})
                if made := ", ".join(f"{counts[k]} {k}" for k in (matmul, lookup) if counts[k]):
                    notes[f"int{bits} kernel"] = _note(made, worst.get(bits))
            quantization[name] = replace(
                q,
                quantized_nodes={k: v for k, v in sorted(nodes.items()) if v > 0},
                weight_bytes=stored,
                notes=notes,
            )
    report = replace(manifest.report, quantization=quantization)
    return replace(manifest, components=components, report=report)


def _note(made: str, worst: float | None) -> str:
    """The report's note on one width's nodes: what was made, and the worst SQNR of a rewritten matmul."""
    note = f"{made} on edgemfm's kernel (runtimes/kernels/{KERNEL}.cpp)"
    if worst is not None:
        note += f"; worst SQNR {worst:.1f} dB against the float product of the MatMulNBits each replaced"
    return note


def _rewrite(path: Path, tied: Any) -> tuple[Any, Counter, dict[int, float], int]:
    """One graph's MatMulNBits (and a tied lookup, given the head's records) rewritten and saved in place: the
    tied head's records (a TensorProto in tied_table.bin), the nodes made, the worst SQNR per bit width of a
    rewritten node on random rows against its float product, and the graph's initializer bytes."""
    import onnx
    from onnx import helper, numpy_helper

    from edgemfm.quantizers.metrics import sqnr_db

    model = onnx.load(str(path), load_external_data=False)
    graph, base = model.graph, str(path.parent)  # onnx reads external data from a str folder
    inits = {i.name: i for i in graph.initializer}
    counts: Counter = Counter()
    worst: dict[int, float] = {}
    rng = np.random.default_rng(0)
    for at, node in enumerate(list(graph.node)):
        if node.op_type == "MatMulNBits" and node.domain == "com.microsoft":
            attrs = {a.name: a.i for a in node.attribute}
            K, N, G, bits = attrs["K"], attrs["N"], attrs["block_size"], attrs.get("bits", 4)
            inputs = [*node.input, "", "", "", ""][:6]
            if not supports(bits, G) or inputs[4] or inits[inputs[2]].data_type != onnx.TensorProto.FLOAT:
                continue
            B, scales = (numpy_helper.to_array(inits[n], base) for n in inputs[1:3])
            zero_points = numpy_helper.to_array(inits[inputs[3]], base) if inputs[3] else None
            records = pack(B, scales, zero_points, K, N, G, bits)
            a = rng.standard_normal((ROWS, K), dtype=np.float32)
            q, s, z = unpack(B, scales, zero_points, K, N, G, bits)
            exact = a @ ((q - np.repeat(z, G, axis=1)) * np.repeat(s, G, axis=1))[:, :K].T  # MatMulNBits', in float
            db = sqnr_db(exact, matmul_int4_reference(a, records, K, N, G, bits=bits))
            worst[bits] = min(worst.get(bits, db), db)
            proto = numpy_helper.from_array(records, f"{node.name or node.output[0]}.int{bits}_records")
            if external_file(inits[inputs[1]]) == TIED_FILE:  # the tied head: the lookup will read these records
                tied = proto
            graph.initializer.append(proto)
            extra = [inputs[5]] if inputs[5] else []
            new = _node(OPS[bits][0], [inputs[0], proto.name, *extra], node, K=K, N=N, block_size=G)
            graph.node.remove(node)
            graph.node.insert(at, new)
            counts[OPS[bits][0]] += 1
        elif node.op_type == "GatherBlockQuantized" and node.name == "tied_lookup" and tied is not None:
            attrs = {a.name: a.i for a in node.attribute}
            V, width = (int(d) for d in inits[node.input[0]].dims[:2])
            bits = attrs.get("bits", 4)  # the head's: the table is its weights
            K = width * 8 // bits
            new = _node(OPS[bits][1], [node.input[1], tied.name], node, K=K, N=V, block_size=attrs["block_size"])
            graph.node.remove(node)
            graph.node.insert(at, new)
            lookup = onnx.TensorProto()
            lookup.CopyFrom(tied)  # the same bytes of tied_table.bin (the decoder, rewritten first, placed them)
            graph.initializer.append(lookup)
            counts[OPS[bits][1]] += 1
    if not counts:
        return tied, counts, worst, 0
    read = drop_unread(graph)
    if tied is not None and tied.name in read and any(counts[matmul] for matmul, _ in OPS.values()):
        _place_tied(base, tied, graph)
    model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    stored = sum(numpy_helper.to_array(i, base).nbytes for i in graph.initializer)
    onnx.save(model, str(path))  # inside export's staging folder: a failed export leaves nothing
    return tied, counts, worst, stored


def _node(op: str, inputs: list[str], old: Any, **attributes: int) -> Any:
    """A node of the kernel's domain in place of `old`: its name and outputs."""
    from onnx import helper

    return helper.make_node(op, inputs, list(old.output), name=old.name, domain=DOMAIN, **attributes)


def _place_tied(base: str, tied: Any, graph: Any) -> None:
    """tied_table.bin rewritten to hold the head's records alone; the graph's copy of the proto points there."""
    write_external(Path(base) / TIED_FILE, [tied])
    for init in graph.initializer:
        if init.name == tied.name:
            init.CopyFrom(tied)


def supports(bits: int, block: int) -> bool:
    """Whether a MatMulNBits of these bits and group can run on the kernel (else it stays MatMulNBits).

    Example:
        >>> supports(4, 32), supports(4, 4), supports(8, 32), supports(8, 4), supports(2, 32)
        (True, False, True, True, False)
    """
    return bits in VECTOR_INPUTS and block >= VECTOR_INPUTS[bits] and block % VECTOR_INPUTS[bits] == 0


def unpack(
    B: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, K: int, N: int, block: int, bits: int = 4
):
    """MatMulNBits' inputs as q [N, ceil(K/G) G] (0 .. 2^bits - 1), scales [N, ceil(K/G)] and zero points
    [N, ceil(K/G)] as float32 (2^(bits-1) where absent; uint8 ones are packed 8/bits to a byte, float ones
    (HQQ's) are one per block).

    Example:
        >>> q, s, z = unpack(np.zeros((16, 2, 16), np.uint8), np.ones(32, np.float32), None, K=64, N=16, block=32)
        >>> q.shape, s.shape, float(z[0, 0])
        ((16, 64), (16, 2), 8.0)
        >>> float(unpack(np.zeros((16, 2, 32), np.uint8), np.ones(32, np.float32), None, 64, 16, 32, bits=8)[2][0, 0])
        128.0
    """
    blocks = -(-K // block)
    packed = np.asarray(B, np.uint8).reshape(N, blocks, block * bits // 8)
    s = np.asarray(scales, np.float32).reshape(N, blocks)
    if zero_points is None:
        z = np.full((N, blocks), 2 ** (bits - 1), np.float32)
    elif zero_points.dtype == np.uint8:
        z = _integers(zero_points.reshape(N, -1), bits)[:, :blocks].astype(np.float32)
    else:
        z = np.asarray(zero_points, np.float32).reshape(N, blocks)
    return _integers(packed, bits).reshape(N, blocks * block), s, z


def _integers(packed: np.ndarray, bits: int) -> np.ndarray:
    """uint8 [..., n] holding 8/bits integers a byte, low bits first, as uint8 [..., n·8/bits]."""
    if bits == 8:
        return packed
    return np.stack([packed & 15, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)


def pack(B: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, K: int, N: int, block: int, bits: int = 4):
    """A MatMulNBits node's weights as the kernel's records, uint8 [ceil(N/16), ceil(K/G), 16G·bits/8 + 64] (layout
    in the kernel's header; the columns past N are zeros).

    Example:
        >>> pack(np.zeros((960, 18, 16), np.uint8), np.ones(960 * 18, np.float32), None, K=576, N=960, block=32).shape
        (60, 18, 320)
        >>> pack(np.zeros((960, 18, 32), np.uint8), np.ones(960 * 18, np.float32), None, 576, 960, 32, bits=8).shape
        (60, 18, 576)
    """
    q, s, z = unpack(B, scales, zero_points, K, N, block, bits)
    tiles, blocks = -(-N // TILE), -(-K // block)
    padding = ((0, tiles * TILE - N), (0, 0))
    q, s, z = (np.pad(x, padding) for x in (q, s, z))
    if bits == 8:  # [tile, column, block, group, j] -> [tile, block, group, column, j]
        q = q.reshape(tiles, TILE, blocks, block // 4, 4).transpose(0, 2, 3, 1, 4)
        integers = q.astype(np.uint8).reshape(tiles, blocks, TILE * block)
    else:  # [tile, column, block, group, half (inputs 0-3 or 4-7 of the group), j] -> [.., group, column, j, half]
        q = q.reshape(tiles, TILE, blocks, block // 8, 2, 4).transpose(0, 2, 3, 1, 5, 4)
        integers = (q[..., 0] | (q[..., 1] << 4)).astype(np.uint8).reshape(tiles, blocks, 8 * block)
    s16 = s.astype(np.float16)
    m16 = (-s * z).astype(np.float16)
    halves = np.concatenate([s16, m16], axis=1)  # [N, 2 blocks]: scales, then offsets
    halves = halves.reshape(tiles, TILE, 2, blocks).transpose(0, 3, 2, 1).reshape(tiles, blocks, 2 * TILE)
    return np.concatenate([integers, np.ascontiguousarray(halves).view(np.uint8)], axis=2)


def weights(records: np.ndarray, K: int, N: int, block: int, bits: int = 4) -> np.ndarray:
    """The float [N, K] weights the records hold (s·q + m, as the kernel reads them).

    Example:
        >>> records = pack(np.zeros((16, 2, 16), np.uint8), np.ones(32, np.float32), None, 64, 16, 32)
        >>> weights(records, 64, 16, 32)[0, :3]  # q 0 less the zero point 8, times the scale 1
        array([-8., -8., -8.], dtype=float32)
    """
    q, s, m = _columns(records, block, bits)
    return (s.astype(np.float32)[:, :, None] * q + m.astype(np.float32)[:, :, None]).reshape(len(q), -1)[:N, :K]


def matmul_int4_reference(
    a: np.ndarray, records: np.ndarray, K: int, N: int, block: int, bias=None, bits: int = 4
) -> np.ndarray:
    """edgemfm.MatMulInt4's (bits 4) or MatMulInt8's (bits 8) arithmetic in numpy: a [..., K] rounded to int8 per
    row and block, exact integer dot products per block, float sums of the blocks.

    Example:
        >>> records = pack(np.zeros((16, 2, 16), np.uint8), np.ones(32, np.float32), None, 64, 16, 32)
        >>> matmul_int4_reference(np.ones((1, 64), np.float32), records, 64, 16, 32)[0, :2]  # 64 x (1 x -8)
        array([-512., -512.], dtype=float32)
    """
    q, s, m = _columns(records, block, bits)
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


def _columns(records: np.ndarray, block: int, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The records as q [columns, blocks, G] (uint8), s and m [columns, blocks] (float64), padding included."""
    tiles, blocks, width = records.shape
    packed = TILE * block * bits // 8
    assert width == packed + 4 * TILE, f"records of width {width} are not {bits}-bit ones in blocks of {block}"
    if bits == 8:  # [tile, block, group, column, j]
        q = records[..., :packed].reshape(tiles, blocks, block // 4, TILE, 4).transpose(0, 3, 1, 2, 4)
    else:  # [tile, block, group, column, half, j]
        nibbles = records[..., :packed].reshape(tiles, blocks, block // 8, TILE, 4)
        q = np.stack([nibbles & 15, nibbles >> 4], axis=-2).transpose(0, 3, 1, 2, 4, 5)
    q = q.reshape(tiles * TILE, blocks, block)
    halves = np.ascontiguousarray(records[..., packed:]).view(np.float16).astype(np.float64)
    halves = halves.reshape(tiles, blocks, 2, TILE).transpose(0, 3, 2, 1).reshape(tiles * TILE, 2, blocks)
    return q, halves[:, 0], halves[:, 1]


def gather_int4_reference(
    ids: np.ndarray, records: np.ndarray, K: int, N: int, block: int, bits: int = 4
) -> np.ndarray:
    """edgemfm.GatherInt4 (bits 4) or GatherInt8 (bits 8) in numpy: the rows `ids` of the [N, K] table the records
    hold.

    Example:
        >>> records = pack(np.zeros((16, 2, 16), np.uint8), np.ones(32, np.float32), None, 64, 16, 32)
        >>> gather_int4_reference(np.array([[3, 7]]), records, 64, 16, 32).shape
        (1, 2, 64)
    """
    return weights(records, K, N, block, bits)[np.asarray(ids)]
