"""One embedding table for a tied head: the token lookup reads the head's quantized weights, stored once.

A decoder that ties its head to its token embedding (`tie_word_embeddings`) is exported as two
graphs that each hold the table: the lookup's Gather in the embedding component and the head's
MatMul (the table transposed) in the decoder. Once the head is MatMulNBits, its bytes already are
a row-blocked table: MatMulNBits blocks each output column (one vocabulary row) along its input
axis, which is GatherBlockQuantized's layout with `quantize_axis=1`. So both graphs read one copy:

    text_decoder.onnx      h ──► MatMulNBits(B [V, K/g, g·bits/8], scales [V·K/g], zp) ──► logits
    token_embedding.onnx   ids ► GatherBlockQuantized(B as [V, K·bits/8], scales as [V, K/g], zp) ─► embeds
                           both name the same bytes of `tied_table.bin` (ONNX external data)

The lookup then takes the head's quantization (its method and group) instead of a plain RTN of its
own: one table, one set of numbers. Tied is decided from the float graphs (equal tables, not a
config flag), and where sharing cannot happen the reason is returned for the report.

Example:
    >>> share(float_dir, stage, manifest)   # doctest: +SKIP
    'token_embedding reads text_decoder's int4 head: one table in tied_table.bin (14.2 MiB)'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgemfm.manifest import Manifest

FILE = "tied_table.bin"
ALIGN = 4096  # page-aligned offsets: ONNX Runtime can map external data instead of copying it


def share(float_dir: Path, stage: Path, manifest: Manifest) -> str | None:
    """Make the quantized embedding graph in `stage` read its decoder's quantized tied head; a note
    saying what was shared or why not, None where the model has no tied table."""
    import onnx

    embed_name, decoder_name = manifest.generation.embedding, manifest.generation.decoder
    if embed_name not in manifest.components or decoder_name not in manifest.components:
        return None
    files = {n: manifest.components[n].file for n in (embed_name, decoder_name)}
    if any(not f.endswith(".onnx") for f in files.values()):
        return None
    tied = _tied_outputs(*(onnx.load(str(float_dir / files[n])) for n in (embed_name, decoder_name)))
    if tied is None:
        return None
    lookup_out, ids, head_out, head_in = tied
    embed, decoder = (onnx.load(str(stage / files[n])) for n in (embed_name, decoder_name))
    head = next(n for n in decoder.graph.node if head_out in n.output)
    if head.op_type != "MatMulNBits":
        return f"{embed_name} keeps its own table: the tied head is {head.op_type}, not MatMulNBits"
    if head.input[0] != head_in:  # SmoothQuant scaled the head's weight rows: they are no longer the table
        return f"{embed_name} keeps its own table: the tied head's weights are smoothed for int8 activations"
    attrs = {a.name: a.i for a in head.attribute}
    k, v, bits, group = attrs["K"], attrs["N"], attrs["bits"], attrs["block_size"]
    if k % group:
        return f"{embed_name} keeps its own table: the head's width {k} is not a multiple of its group {group}"
    inits = {i.name: i for i in decoder.graph.initializer}
    parts = [inits[n] for n in head.input[1:4] if n]  # B, scales, and zero points where asymmetric
    shapes = [(v, k * bits // 8), (v, k // group), (v, -(-(k // group) * bits // 8))]
    _write_external(stage / FILE, parts)
    _replace_lookup(embed, lookup_out, ids, parts, shapes, bits, group)
    onnx.save(decoder, str(stage / files[decoder_name]))
    onnx.save(embed, str(stage / files[embed_name]))
    size = (stage / FILE).stat().st_size / 2**20
    return f"{embed_name} reads {decoder_name}'s int{bits} head: one table in {FILE} ({size:.1f} MiB)"


def _tied_outputs(embed: Any, decoder: Any) -> tuple[str, str, str, str] | None:
    """(lookup output, its ids, head output, head input) where the embedding's Gather table equals a decoder MatMul's
    weight transposed, else None."""
    from onnx import numpy_helper

    def weight(graph: Any, node: Any, at: int) -> np.ndarray | None:
        inits = {i.name: i for i in graph.initializer}
        name = node.input[at] if len(node.input) > at else ""
        return numpy_helper.to_array(inits[name]) if name in inits else None

    lookups = [(n, weight(embed.graph, n, 0)) for n in embed.graph.node if n.op_type == "Gather"]
    lookups = [(n, t) for n, t in lookups if t is not None and t.ndim == 2]
    if len(lookups) != 1:
        return None
    lookup, table = lookups[0]
    for node in decoder.graph.node:
        if node.op_type == "MatMul":
            w = weight(decoder.graph, node, 1)
            if w is not None and w.shape == table.shape[::-1] and np.array_equal(w.T, table):
                return lookup.output[0], lookup.input[1], node.output[0], node.input[0]
    return None


def _write_external(path: Path, parts: list[Any]) -> None:
    """Move the tensors' bytes into `path` (page-aligned); the protos then point there."""
    from onnx import TensorProto, external_data_helper, numpy_helper

    with path.open("wb") as f:
        for p in parts:
            data = numpy_helper.to_array(p).tobytes()
            offset = -(-f.tell() // ALIGN) * ALIGN
            f.write(b"\0" * (offset - f.tell()))
            f.write(data)
            if not p.HasField("raw_data"):  # typed fields: the helper below wants raw bytes to move
                p.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(p), p.name))
            external_data_helper.set_external_data(p, FILE, offset=offset, length=len(data))
            p.ClearField("raw_data")
            p.data_location = TensorProto.EXTERNAL


def _replace_lookup(
    embed: Any, out: str, ids: str, parts: list[Any], shapes: list[tuple], bits: int, group: int
) -> None:
    """The nodes producing `out` (a Gather, or a quantized lookup) -> one GatherBlockQuantized on `parts`."""
    from onnx import helper

    graph = embed.graph
    _drop_producers(graph, out)
    names = [f"tied_{k}" for k in ("data", "scales", "zero_points")][: len(parts)]
    for p, name, shape in zip(parts, names, shapes):
        t = type(p)()
        t.CopyFrom(p)
        t.name = name
        del t.dims[:]
        t.dims.extend(shape)
        graph.initializer.append(t)
    node = helper.make_node(
        "GatherBlockQuantized",
        [names[0], ids, *names[1:]],
        [out],
        name="tied_lookup",
        domain="com.microsoft",
        bits=bits,
        block_size=group,
        gather_axis=0,
        quantize_axis=1,
    )
    graph.node.insert(0, node)
    if not any(o.domain == "com.microsoft" for o in embed.opset_import):
        embed.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def _drop_producers(graph: Any, out: str) -> None:
    """Remove the node making `out` and every node and initializer that only served it."""
    nodes = list(graph.node)
    dead = {id(next(n for n in nodes if out in n.output))}
    graph_outputs = {o.name for o in graph.output} - {out}
    while True:  # walk back through nodes whose outputs only dead nodes read
        read = {i for n in nodes if id(n) not in dead for i in n.input} | graph_outputs
        more = {id(n) for n in nodes if id(n) not in dead and not any(o in read for o in n.output)}
        if not more:
            break
        dead |= more
    for n in nodes:
        if id(n) in dead:
            graph.node.remove(n)
    read = {i for n in graph.node for i in n.input}
    for i in [i for i in graph.initializer if i.name not in read]:
        graph.initializer.remove(i)
