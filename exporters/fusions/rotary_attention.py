"""The rotary embedding inside GroupQueryAttention (`do_rotary=1`), for decoders with plain RoPE.

What the `rotary` and `group_query_attention` rules leave per layer:

    q [b, s, h·d] ─► Reshape ─► Transpose ─► RotaryEmbedding(cos, sin) ─► Transpose ─► Reshape ─┐
    k [b, s, kv·d] ─► (the same) ───────────────────────────────────────────────────────────────┼─► GroupQueryAttention
    position_ids ─► Cast ─► Mul(inv_freq) ─► Concat ─► Cos / Sin (shared by every layer) ──────┘

      becomes  GroupQueryAttention(q, k, v, past K, past V, ..., cos_cache, sin_cache, position_ids,
                                   attention_bias, do_rotary=1)

The kernel rotates q and the new k itself, reading rows of a cos/sin table: the graph's own cos/sin
subgraph evaluated at positions 0..max_seq_len-1 (so a family's frequency scaling comes along), and
the subgraph goes. The kernel wants a row for every cached entry (total_sequence_length), not only
for the positions fed, so the table is as long as the cache the export is for (`max_seq_len`): a
pi5 decoder holds 1,024 rows, and loading it with a longer cache is refused (runtimes/pipeline.py).
A stream is not bounded by the table: attention with RoPE depends only on the distance between
positions, so the runtime feeds `position - base` and, when that would pass the table, moves `base`
up to the next position and rotates every cached key back by the same amount once
(runtimes/kvcache.py); each token keeps its exact distance to every other. That needs the frequencies, which the fusion reads off the table
and returns for the manifest.

Fused only where the rotation is a plain one: full head width, halves not interleaved, one table
for every layer computed from `position_ids` alone, cos² + sin² = 1 (no attention scaling folded
in) and each column a fixed frequency (angle ∝ position). Anything else stays as it was, and so
does a graph fused without a `max_seq_len`.

Example:
    >>> apply(model, max_seq_len=2048)   # doctest: +SKIP
    {'rotary_attention': 30}
"""

from __future__ import annotations

from typing import Any

import numpy as np

OPTIONS = ("max_seq_len",)  # the export's cache length sizes the table
# Positions at least at which the subgraph is checked for a plain rotation and its frequencies are read, however
# short the table kept: a few rows would fit any angle and give the frequencies to fewer digits.
CHECKED = 1024
BNSH = [0, 2, 1, 3]
ROTARY = ("ai.onnxruntime._fusion", "RotaryEmbedding")
METADATA = "edgemfm.rotary_table"


def apply(model: Any, max_seq_len: int | None = None) -> dict[str, int]:
    """Move the rotation into every GroupQueryAttention whose q and k are rotated by one plain table of
    `max_seq_len` rows (None: nothing fuses); the table's length and frequencies go in the model's
    metadata (`rotary_table`), which the manifest takes."""
    import json

    found = fuse(model, max_seq_len) if max_seq_len else None
    if found is None:
        return {"rotary_attention": 0}
    nodes, frequencies = found
    table = {"table": max_seq_len, "frequencies": [float(f) for f in frequencies]}
    model.metadata_props[METADATA] = json.dumps(table)
    return {"rotary_attention": len(nodes)}


def fuse(model: Any, rows: int) -> tuple[list[Any], np.ndarray] | None:
    """(the new GroupQueryAttention nodes, the table's frequencies [d/2]), or None where nothing fused;
    the table holds `rows` positions."""
    import onnx_ir as ir

    graph = model.graph
    inputs = {value.name: value for value in graph.inputs}
    positions = inputs.get("position_ids")
    if positions is None or positions.shape is None or len(positions.shape) != 2:
        return None  # M-RoPE's [3, b, s] positions are not the kernel's
    nodes = [n for n in graph if n.op_type == "GroupQueryAttention" and not _attr(n, "do_rotary")]
    matches = [m for n in nodes if (m := _match(n))]
    if not matches or len(matches) != len(nodes) or len({(id(m["cos"]), id(m["sin"])) for m in matches}) != 1:
        return None  # one table serves every layer, or none is fused (the runtime re-bases every key)
    table = _table(model, positions, matches[0]["cos"], matches[0]["sin"], rows)
    if table is None:
        return None
    cos, sin, frequencies = table
    caches = [
        ir.Value(name=f"rotary_{kind}_cache", const_value=ir.tensor(t)) for kind, t in (("cos", cos), ("sin", sin))
    ]
    for cache in caches:
        cache.shape, cache.type = ir.Shape(cos.shape), ir.TensorType(ir.DataType.FLOAT)
        graph.register_initializer(cache)
    fused = [_replace(graph, m, caches, positions) for m in matches]
    return fused, frequencies


def _attr(node: Any, name: str) -> int:
    return node.attributes[name].as_int() if name in node.attributes else 0


def _producer(value: Any, op: str, domain: str = "") -> Any:
    node = value.producer() if value is not None else None
    domains = (domain,) if domain else ("", "ai.onnx")
    return node if node is not None and node.op_type == op and node.domain in domains else None


def _unrotated(value: Any) -> tuple[Any, Any, Any] | None:
    """(x [b, s, heads·d], cos, sin) for value = flatten(RotaryEmbedding(to_bnsh(x), unsqueeze(cos), unsqueeze(sin)))."""
    reshape = _producer(value, "Reshape")
    back = _producer(reshape.inputs[0], "Transpose") if reshape else None
    rotary = _producer(back.inputs[0], ROTARY[1], ROTARY[0]) if back and _perm(back) == BNSH else None
    if rotary is None or _attr(rotary, "interleaved") or len(rotary.inputs) != 3:
        return None
    to_bnsh = _producer(rotary.inputs[0], "Transpose")
    split = _producer(to_bnsh.inputs[0], "Reshape") if to_bnsh and _perm(to_bnsh) == BNSH else None
    flat = split.inputs[0] if split else None
    if flat is None or flat.shape is None or len(flat.shape) != 3:
        return None
    tables = [_producer(t, "Unsqueeze") for t in rotary.inputs[1:]]
    if None in tables:
        return None
    return flat, tables[0].inputs[0], tables[1].inputs[0]


def _perm(node: Any) -> list[int] | None:
    return list(node.attributes["perm"].as_ints()) if "perm" in node.attributes else None


def _match(gqa: Any) -> dict[str, Any] | None:
    q, k = _unrotated(gqa.inputs[0]), _unrotated(gqa.inputs[1])
    if q is None or k is None or q[1:] != k[1:]:
        return None
    return {"gqa": gqa, "q": q[0], "k": k[0], "cos": q[1], "sin": q[2]}


def _table(
    model: Any, positions: Any, cos: Any, sin: Any, rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The cos/sin subgraph run at positions 0..rows-1: (cos [rows, d/2], sin, frequencies [d/2]), or None
    where it reads more than the positions or is no plain rotation (checked at CHECKED positions or more)."""
    import onnx
    import onnx_ir as ir
    import onnxruntime as ort

    ancestors, todo = {}, [cos, sin]
    while todo:
        node = todo.pop().producer()
        if node is None or id(node) in ancestors:
            continue
        ancestors[id(node)] = node
        todo += [v for v in node.inputs if v is not None and not v.is_initializer()]
    reads = {v.name for n in ancestors.values() for v in n.inputs if v is not None and v.is_graph_input()}
    if reads != {positions.name} or any(n.domain not in ("", "ai.onnx") for n in ancestors.values()):
        return None
    order = [n for n in model.graph if id(n) in ancestors]
    stored = {v.name: v for n in order for v in n.inputs if v is not None and v.is_initializer()}
    graph = onnx.helper.make_graph(
        [ir.serde.serialize_node(n) for n in order],
        "rotary_table",
        [onnx.helper.make_tensor_value_info(positions.name, onnx.TensorProto.INT64, [1, None])],
        [onnx.helper.make_tensor_value_info(v.name, onnx.TensorProto.FLOAT, None) for v in (cos, sin)],
        [ir.serde.serialize_tensor(v.const_value) for v in stored.values()],
    )
    opset = model.opset_imports.get("", 18)
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    checked = max(rows, CHECKED)
    c, s = (t[0] for t in session.run(None, {positions.name: np.arange(checked, dtype=np.int64)[None]}))
    half = c.shape[-1] // 2
    if (
        c.ndim != 2
        or c.shape[0] != checked
        or not (np.allclose(c[:, :half], c[:, half:]) and np.allclose(s[:, :half], s[:, half:]))
    ):
        return None
    c, s = c[:, :half], s[:, :half]
    angles = np.unwrap(np.arctan2(s.astype(np.float64), c.astype(np.float64)), axis=0)
    frequencies = angles[-1] / (checked - 1)
    plain = np.allclose(c**2 + s**2, 1, atol=1e-5) and np.allclose(
        angles, np.arange(checked)[:, None] * frequencies, atol=1e-3
    )
    return (np.ascontiguousarray(c[:rows]), np.ascontiguousarray(s[:rows]), frequencies) if plain else None


def _replace(graph: Any, m: dict[str, Any], caches: list[Any], positions: Any) -> Any:
    """A GroupQueryAttention taking the unrotated q and k, the tables and the positions, in place of m's."""
    import onnx_ir as ir

    old = m["gqa"]
    ins = list(old.inputs) + [None] * (11 - len(old.inputs))
    attributes = {name: attr.value for name, attr in old.attributes.items()}
    attributes.update(do_rotary=1, rotary_interleaved=0)
    new = ir.node(
        "GroupQueryAttention",
        [m["q"], m["k"], *ins[2:7], *caches, positions, *ins[10:]],
        attributes,
        domain="com.microsoft",
        num_outputs=3,
    )
    graph.insert_before(old, new)
    for value, out in zip(old.outputs, new.outputs):
        out.type, out.shape = value.type, value.shape
        if value.is_graph_output():  # the present.* outputs keep their names
            name, value.name = value.name, None
            out.name = name
        value.replace_all_uses_with(out, replace_graph_outputs=True)
    graph.remove(old, safe=True)
    return new
