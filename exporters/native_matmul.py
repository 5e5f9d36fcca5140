"""fp32 matmuls on edgemfm's own kernel: a decoder's MatMul -> edgemfm.MatMulF32, its weights tiled by 32 columns.

ONNX Runtime 1.32's MatMul reads an fp32 decoder's weights at the bandwidth one core has for one token, but a
speculative check of several does not share one read of the weights between its rows: a 5-token call of the
demo's fp32 decoder costs 1.45 single steps (x86 with AVX-512, one thread). `runtimes/kernels/matmul_f32.cpp`
streams each weight once for up to 8 rows (the same call: 1.07 steps; BENCHMARKS.md, the demo's fp32 speculative
section), from a layout of its own: per tile of 32 output columns, each input's 32 weights side by side,

    MatMul(A, B [K, N])                                    ──►  edgemfm.MatMulF32(A, W [N/32, K, 32])
    FusedMatMul(A, tied_table [V, K], transB=1)  (the head) ──►  edgemfm.MatMulF32(A, W [V/32, K, 32])
    Gather(tied_table, ids)  (the tied head's lookup)       ──►  edgemfm.GatherF32(ids, W)

The numbers are the same floats, summed in another order. As with the int4 kernel, stock onnxruntime,
onnxruntime-genai and the Android app do not know the ops, so this is part of `--kernels edgemfm`. The decoder's
weights stay page-aligned external data (text_decoder.weights, and the tied table in tied_table.bin, read by
both graphs), which ONNX Runtime maps; the kernel reads them there, where MLAS's MatMul packed a copy of its own.
Each rewritten node's weights are checked against the MatMul they replace on random rows.

Example:
    >>> manifest = apply(stage, manifest)  # doctest: +SKIP
    >>> manifest.components["text_decoder"].kernels  # doctest: +SKIP
    ('matmul_f32',)
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgemfm.manifest import Manifest
from edgemfm.quantizers.tied_table import FILE as TIED_FILE
from edgemfm.quantizers.tied_table import drop_unread, external_file, write_external

TILE = 32  # output columns per tile
KERNEL = "matmul_f32"  # runtimes/kernels/matmul_f32.cpp
DOMAIN = "edgemfm.f32"  # the ops' domain, the library's own
ROWS = 4  # random rows each rewritten node is checked on


def apply(stage: Path, manifest: Manifest) -> Manifest:
    """The decoder's fp32 MatMuls (and a tied head) in `stage` -> edgemfm.MatMulF32, the tied head's lookup in the
    embedding graph -> edgemfm.GatherF32 on the same tiles; the manifest with the components' `kernels` and notes.
    A decoder without fp32 MatMuls (int4, int8) is left as it is. Nothing is built here: the device builds the
    kernel the first time it loads the bundle.

    Example:
        >>> apply(stage, manifest).report.notes["text_decoder matmuls"]  # doctest: +SKIP
        "121 MatMulF32 on edgemfm's kernel (runtimes/kernels/matmul_f32.cpp); worst relative error 5.6e-08 ..."
    """
    import onnx

    decoder_name, embed_name = manifest.generation.decoder, manifest.generation.embedding
    decoder_c, embed_c = manifest.components.get(decoder_name), manifest.components.get(embed_name)
    if decoder_c is None or decoder_c.format != "onnx":
        return manifest
    decoder = onnx.load(str(stage / decoder_c.file), load_external_data=False)
    embed = lookup = None
    if embed_c is not None and embed_c.format == "onnx":
        embed = onnx.load(str(stage / embed_c.file), load_external_data=False)
        lookup = _tied_lookup(embed.graph)
    share = lookup is not None  # else the head gets tiles of its own
    tied, tiles, worst = _rewrite_decoder(decoder.graph, str(stage), share)
    if not tiles:
        return manifest
    components, notes = dict(manifest.components), dict(manifest.report.notes)
    if tied is not None:
        write_external(stage / TIED_FILE, [tied])  # the head's tiles replace the table, for both graphs
    _save(stage, decoder, decoder_c.file, tied, tiles)
    components[decoder_name] = replace(decoder_c, kernels=(*decoder_c.kernels, KERNEL))
    notes[f"{decoder_name} matmuls"] = (
        f"{len(tiles)} MatMulF32 on edgemfm's kernel (runtimes/kernels/{KERNEL}.cpp); worst relative error {worst:.1e} "
        "against the MatMuls they replace"
    )
    if tied is not None:
        _rewrite_lookup(embed.graph, lookup, tied)
        _save(stage, embed, embed_c.file, tied, set())
        components[embed_name] = replace(embed_c, kernels=(*embed_c.kernels, KERNEL))
    return replace(manifest, components=components, report=replace(manifest.report, notes=notes))


def _rewrite_decoder(graph: Any, base: str, share: bool) -> tuple[Any, set[str], float]:
    """The graph's MatMuls on a 2-D float initializer, and a tied head's FusedMatMul, as MatMulF32 nodes in place
    (external data read from folder `base`): the tied head's tiles where the lookup will `share` them (a
    TensorProto, else None), the names of the tiles made and the worst relative error of a node's tiles against
    its MatMul on random rows."""
    import onnx
    from onnx import numpy_helper

    inits = {i.name: i for i in graph.initializer}
    tied, made, worst, rng = None, set(), 0.0, np.random.default_rng(0)
    for at, node in enumerate(list(graph.node)):
        weights = inits.get(node.input[1]) if len(node.input) > 1 else None
        if weights is None or weights.data_type != onnx.TensorProto.FLOAT or len(weights.dims) != 2:
            continue
        if node.op_type == "MatMul" and node.domain in ("", "ai.onnx"):
            columns = numpy_helper.to_array(weights, base).T  # B [K, N] -> [N, K]
        elif node.op_type == "FusedMatMul" and _transposed_b_only(node):
            columns = numpy_helper.to_array(weights, base)  # the tied table [V, K], read as B transposed
        else:
            continue
        N, K = columns.shape
        tiles = pack(columns)
        a = rng.standard_normal((ROWS, K), dtype=np.float32)
        exact = a.astype(np.float64) @ columns.T.astype(np.float64)
        worst = max(worst, float(np.abs(matmul_f32_reference(a, tiles, K, N) - exact).max() / np.abs(exact).max()))
        proto = numpy_helper.from_array(tiles, f"{node.name or node.output[0]}.f32_tiles")
        if share and external_file(weights) == TIED_FILE:
            tied = proto
        graph.initializer.append(proto)
        new = _node("MatMulF32", [node.input[0], proto.name], node, K=K, N=N)
        graph.node.remove(node)
        graph.node.insert(at, new)
        made.add(proto.name)
    drop_unread(graph)
    return tied, made, worst


def _tied_lookup(graph: Any) -> Any:
    """The embedding graph's Gather of rows from tied_table.bin (None where it has none)."""
    inits = {i.name: i for i in graph.initializer}
    for node in graph.node:
        table = inits.get(node.input[0]) if node.input else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if node.op_type == "Gather" and table is not None and external_file(table) == TIED_FILE and axis == 0:
            return node
    return None


def _rewrite_lookup(graph: Any, node: Any, tied: Any) -> None:
    """The embedding graph's Gather `node` on the tied table -> GatherF32 on the head's tiles (in tied_table.bin)."""
    from onnx import TensorProto

    V, K = (int(d) for d in next(i for i in graph.initializer if i.name == node.input[0]).dims)
    lookup = TensorProto()
    lookup.CopyFrom(tied)
    graph.initializer.append(lookup)
    at = list(graph.node).index(node)
    graph.node.remove(node)
    graph.node.insert(at, _node("GatherF32", [node.input[1], tied.name], node, K=K, N=V))
    drop_unread(graph)


def _transposed_b_only(node: Any) -> bool:
    """Whether a FusedMatMul is A times B transposed and nothing else (the tied head's; alpha 1, no transA)."""
    attrs = {a.name: (a.f if a.type == a.FLOAT else a.i) for a in node.attribute}
    return attrs.get("transB") == 1 and attrs.get("alpha", 1.0) == 1.0 and not attrs.get("transA", 0)


def _save(stage: Path, model: Any, file: str, tied: Any, tiles: set[str]) -> None:
    """A rewritten graph saved in `stage`: the tied head's tiles as placed in tied_table.bin, the other `tiles`
    beside the graph's weights (page-aligned in <graph>.weights where it has that file, which ONNX Runtime maps;
    inline where its weights are)."""
    import onnx
    from onnx import helper, numpy_helper

    graph, path = model.graph, stage / file
    weights, shared = f"{path.stem}.weights", tied.name if tied is not None else None
    for init in graph.initializer:
        if init.name == shared:
            init.CopyFrom(tied)
    if any(external_file(i) == weights for i in graph.initializer):  # the file is written anew: its tensors read in
        parts = [i for i in graph.initializer if external_file(i) == weights or (i.name in tiles and i.name != shared)]
        for p in parts:
            p.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(p, str(stage)), p.name))
        write_external(stage / weights, parts)
    model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    onnx.save(model, str(path))  # inside export's staging folder: a failed export leaves nothing


def _node(op: str, inputs: list[str], old: Any, **attributes: int) -> Any:
    """A node of the kernel's domain in place of `old`: its name and outputs."""
    from onnx import helper

    return helper.make_node(op, inputs, list(old.output), name=old.name, domain=DOMAIN, **attributes)


def pack(columns: np.ndarray) -> np.ndarray:
    """Weights [N, K] (a row per output column) as the kernel's tiles, float32 [ceil(N/32), K, 32], zeros past N.

    Example:
        >>> pack(np.arange(6, dtype=np.float32).reshape(2, 3))[0, :, :3]  # input k's columns side by side
        array([[0., 3., 0.],
               [1., 4., 0.],
               [2., 5., 0.]], dtype=float32)
    """
    N, K = columns.shape
    tiles = -(-N // TILE)
    padded = np.zeros((tiles * TILE, K), np.float32)
    padded[:N] = columns
    return np.ascontiguousarray(padded.reshape(tiles, TILE, K).transpose(0, 2, 1))


def columns_of(tiles: np.ndarray, N: int) -> np.ndarray:
    """The [N, K] weights the tiles hold.

    Example:
        >>> columns_of(pack(np.eye(3, dtype=np.float32)), 3)[2]
        array([0., 0., 1.], dtype=float32)
    """
    return tiles.transpose(0, 2, 1).reshape(-1, tiles.shape[1])[:N]


def matmul_f32_reference(a: np.ndarray, tiles: np.ndarray, K: int, N: int) -> np.ndarray:
    """edgemfm.MatMulF32 in numpy: a [..., K] times the tiles' weights, summed in float64.

    Example:
        >>> matmul_f32_reference(np.ones((1, 3), np.float32), pack(np.eye(3, dtype=np.float32)), 3, 3)
        array([[1., 1., 1.]], dtype=float32)
    """
    y = np.asarray(a, np.float64).reshape(-1, K) @ columns_of(tiles, N).T.astype(np.float64)
    return y.astype(np.float32).reshape(*np.shape(a)[:-1], N)


def gather_f32_reference(ids: np.ndarray, tiles: np.ndarray, K: int, N: int) -> np.ndarray:
    """edgemfm.GatherF32 in numpy: the rows `ids` of the [N, K] table the tiles hold.

    Example:
        >>> gather_f32_reference(np.array([[2, 0]]), pack(np.eye(3, dtype=np.float32)), 3, 3)[0, 0]
        array([0., 0., 1.], dtype=float32)
    """
    return columns_of(tiles, N)[np.asarray(ids)]
