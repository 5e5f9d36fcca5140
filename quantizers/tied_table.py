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

An fp32 bundle shares the float table the same way (`share_float`): the head reads the lookup's
[V, K] rows as B transposed, so neither graph holds a transposed copy,

    text_decoder.onnx      h ──► FusedMatMul(transB=1, tied_table [V, K]) ──► logits
    token_embedding.onnx   ids ► Gather(tied_table [V, K]) ──► embeds

and the decoder's other weights move to page-aligned external data beside it: ONNX Runtime then
maps them and packs each MatMul's weights from the map, instead of holding the whole protobuf and
its copies at once (the fp32 decoder's peak memory was twice its weights). A float graph read for
quantizing goes through `standalone` first: one self-contained file with the head a plain MatMul,
the graph the quantizers know.

Example:
    >>> share(float_dir, stage, manifest)   # doctest: +SKIP
    'token_embedding reads text_decoder's int4 head: one table in tied_table.bin (14.2 MiB)'
"""

from __future__ import annotations

import shutil
from dataclasses import replace
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
    write_external(stage / FILE, parts)
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


def write_external(path: Path, parts: list[Any]) -> None:
    """Move the tensors' bytes into `path` (page-aligned); the protos then point there.

    Example:
        >>> write_external(stage / "text_decoder.weights", large_initializers(decoder, skip=TIED))  # doctest: +SKIP
    """
    from onnx import TensorProto, external_data_helper, numpy_helper

    with path.open("wb") as f:
        for p in parts:
            data = numpy_helper.to_array(p).tobytes()
            offset = -(-f.tell() // ALIGN) * ALIGN
            f.write(b"\0" * (offset - f.tell()))
            f.write(data)
            if not p.HasField("raw_data"):  # typed fields: the helper below wants raw bytes to move
                p.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(p), p.name))
            external_data_helper.set_external_data(p, path.name, offset=offset, length=len(data))
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
    drop_unread(graph)


def drop_unread(graph: Any) -> set[str]:
    """Remove the initializers no node reads any more (the weights a rewritten node replaced); the names read.

    Example:
        >>> "tied_table" in drop_unread(decoder.graph)  # doctest: +SKIP
        True
    """
    read = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name not in read]:
        graph.initializer.remove(init)
    return read


def external_file(init: Any) -> str:
    """The file an initializer's bytes live in ('' where they are in the graph).

    Example:
        >>> external_file(next(i for i in decoder.graph.initializer if i.name == TIED))  # doctest: +SKIP
        'tied_table.bin'
    """
    return next((e.value for e in init.external_data if e.key == "location"), "")


def share_float(stage: Path, manifest: Manifest) -> Manifest:
    """An fp32 bundle in `stage`: its tied head reads the token embedding's table, stored once in
    tied_table.bin, and the decoder's weights lie page-aligned beside it; the manifest with a note
    saying so (the manifest as it was where the model has no tied table).

    Example:
        >>> share_float(stage, manifest).report.notes["token_embedding"]   # doctest: +SKIP
        'token_embedding and text_decoder's head read one fp32 table in tied_table.bin (108.0 MiB)'
    """
    import onnx

    embed_name, decoder_name = manifest.generation.embedding, manifest.generation.decoder
    if embed_name not in manifest.components or decoder_name not in manifest.components:
        return manifest
    paths = {n: stage / manifest.components[n].file for n in (embed_name, decoder_name)}
    if any(p.suffix != ".onnx" for p in paths.values()):
        return manifest
    embed, decoder = (onnx.load(str(paths[n])) for n in (embed_name, decoder_name))
    tied = _tied_outputs(embed, decoder)
    if tied is None:
        return manifest
    lookup_out, _, head_out, head_in = tied
    lookup = next(n for n in embed.graph.node if lookup_out in n.output)
    table = next(i for i in embed.graph.initializer if i.name == lookup.input[0])
    write_external(stage / FILE, [table])
    _head_reads_table(decoder, head_out, head_in, table)
    write_external(stage / f"{paths[decoder_name].stem}.weights", large_initializers(decoder, skip=TIED))
    onnx.save(embed, str(paths[embed_name]))
    onnx.save(decoder, str(paths[decoder_name]))
    note = f"{embed_name} and {decoder_name}'s head read one fp32 table in {FILE} ({(stage / FILE).stat().st_size / 2**20:.1f} MiB)"
    return replace(manifest, report=replace(manifest.report, notes={**manifest.report.notes, embed_name: note}))


TIED = "tied_table"  # the shared table's name in the decoder


def _head_reads_table(decoder: Any, head_out: str, head_in: str, table: Any) -> None:
    """MatMul(h, table transposed) -> FusedMatMul(h, table, transB=1) on the embedding's external bytes."""
    from onnx import helper

    graph = decoder.graph
    head = next(n for n in graph.node if head_out in n.output)
    at = list(graph.node).index(head)
    graph.node.remove(head)
    if not any(head.input[1] in n.input for n in graph.node):
        graph.initializer.remove(next(i for i in graph.initializer if i.name == head.input[1]))
    shared = type(table)()
    shared.CopyFrom(table)
    shared.name = TIED
    graph.initializer.append(shared)
    node = helper.make_node(
        "FusedMatMul", [head_in, TIED], [head_out], name="tied_head", domain="com.microsoft", transB=1
    )
    graph.node.insert(at, node)
    if not any(o.domain == "com.microsoft" for o in decoder.opset_import):
        decoder.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def large_initializers(model: Any, skip: str, least: int = 1024) -> list[Any]:
    """The inline initializers of `least` bytes or more (small ones stay in the graph), all but `skip`.

    Example:
        >>> [i.name for i in large_initializers(decoder, skip=TIED)][:2]  # doctest: +SKIP
        ['model.layers.0.input_layernorm.weight', 'onnx::MatMul_1203']
    """
    from onnx import TensorProto

    return [
        i
        for i in model.graph.initializer
        if i.name != skip and i.data_location != TensorProto.EXTERNAL and len(i.raw_data) >= least
    ]


def standalone(src: Path, dst: Path) -> set[str]:
    """Write graph `src` as one self-contained file `dst`, a head that reads the tied table transposed
    back to a plain MatMul (what the quantizers rewrite); the names of the external files it read.

    Example:
        >>> standalone(bundle / "text_decoder.onnx", scratch / "text_decoder.onnx")   # doctest: +SKIP
        {'tied_table.bin', 'text_decoder.weights'}
    """
    import onnx
    from onnx import numpy_helper

    stored = onnx.load(str(src), load_external_data=False)
    read = {external_file(i) for i in stored.graph.initializer} - {""}
    if not read:
        shutil.copyfile(src, dst)
        return read
    model = onnx.load(str(src))
    graph = model.graph
    for node in [n for n in graph.node if n.op_type == "FusedMatMul" and n.input[1] == TIED]:
        table = next(i for i in graph.initializer if i.name == TIED)
        graph.initializer.remove(table)
        graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(table).T.copy(), TIED))
        node.op_type, node.domain = "MatMul", ""
        del node.attribute[:]
    onnx.save(model, str(dst))
    return read
