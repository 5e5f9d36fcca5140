"""Grouped-query attention with its KV-cache append, to one GroupQueryAttention per layer.

What the exported decoders (Llama, Qwen2, Mistral, ...) hold after the `attention` rules:

    q (rotated, [b, s, heads·d]) ───────────────────────────────────────────────────────────┐
    k (rotated, [b, kv, s, d]) ─► Concat(past K) ─► present K ─┐                             │
    v ─► Reshape ─► Transpose ──► Concat(past V) ─► present V ─┴► Unsqueeze ─► Expand ─►     │
                                   Reshape ─► Transpose ─► Reshape (repeat_kv, per step) ─► MultiHeadAttention(mask bias)

      becomes  GroupQueryAttention(q, k [b, s, kv·d], v [b, s, kv·d], past K, past V,
                                   seqlens_k, total_sequence_length, attention_bias=mask bias)
                                   ─► out, present K, present V

The K/V heads are no longer copied to every query group at each step, and the cache append
writes straight into the present tensors: about 15 nodes per layer become one, and the largest
per-step copies (repeat_kv over the whole cache) go.

The rotary embedding is left outside here (`do_rotary=0`); rotary_attention.py, next, moves it
inside where the rotation is a plain one, and the runtime keeps such streams unbounded.

The mask keeps its meaning: `seqlens_k` is the full mask length minus one for every row (ONNX
Runtime then applies the causal mask by index, as the unfused graph did), and the unfused
graph's additive mask bias goes in as `attention_bias`, so padded entries and a sliding window
stay masked. A layer whose subgraph differs anywhere, or whose head size is not a multiple of 8
(which the kernel refuses), is left as it was.

Example:
    >>> apply(model)   # doctest: +SKIP
    {'group_query_attention': 30}
"""

from __future__ import annotations

from typing import Any

import numpy as np

BNSH = [0, 2, 1, 3]  # [batch, seq, heads, head_dim] <-> [batch, heads, seq, head_dim]


def apply(model: Any) -> dict[str, int]:
    """Fuse every layer whose subgraph matches; returns how many did."""
    import onnx_ir as ir

    graph = model.graph
    inputs = {value.name: value for value in graph.inputs}
    if "attention_mask" not in inputs:
        return {"group_query_attention": 0}
    matches = [m for node in list(graph) if node.op_type == "MultiHeadAttention" and (m := _match(node, inputs))]
    if not matches:
        return {"group_query_attention": 0}
    lengths = _sequence_lengths(graph, inputs["attention_mask"])
    flat = ir.node("Constant", [], {"value": ir.tensor(np.array([0, 0, -1], np.int64), name="gqa_bsh")})
    graph.insert_before(next(iter(graph)), flat)
    for m in matches:
        mha = m["mha"]
        nodes = []
        k, v = (_to_bsh(m["new"][kind], flat.outputs[0], nodes) for kind in ("k", "v"))
        attributes = {"num_heads": mha.attributes["num_heads"].as_int(), "kv_num_heads": m["kv_heads"]}
        if "scale" in mha.attributes:
            attributes["scale"] = mha.attributes["scale"].as_float()
        gqa = ir.node(
            "GroupQueryAttention",
            [mha.inputs[0], k, v, m["past"]["k"], m["past"]["v"], *lengths, None, None, None, m["bias"]],
            attributes,
            domain="com.microsoft",
            num_outputs=3,
        )
        graph.insert_before(mha, [*nodes, gqa])
        for value, new in zip([mha.outputs[0], m["present"]["k"], m["present"]["v"]], gqa.outputs):
            new.type, new.shape = value.type, value.shape
            if value.is_graph_output():  # the present.* outputs keep their names
                name, value.name = value.name, None
                new.name = name
            value.replace_all_uses_with(new, replace_graph_outputs=True)
    model.opset_imports.setdefault("com.microsoft", 1)
    return {"group_query_attention": len(matches)}


def _to_bsh(bnsh: Any, flat: Any, nodes: list) -> Any:
    """[b, kv, s, d] as [b, s, kv·d]: the projection it was split from where the graph has it, else Transpose + Reshape."""
    import onnx_ir as ir

    transpose = _producer(bnsh, "Transpose")
    reshape = _producer(transpose.inputs[0], "Reshape") if _perm(transpose) == BNSH else None
    if reshape is not None and reshape.inputs[0].shape is not None and len(reshape.inputs[0].shape) == 3:
        return reshape.inputs[0]
    nodes += [ir.node("Transpose", [bnsh], {"perm": BNSH})]
    nodes += [ir.node("Reshape", [nodes[-1].outputs[0], flat])]
    return nodes[-1].outputs[0]


def _sequence_lengths(graph: Any, mask: Any) -> list[Any]:
    """seqlens_k [batch] int32 (the mask length minus one for every row) and total_sequence_length (int32 scalar)."""
    import onnx_ir as ir

    nodes = []

    def add(op: str, inputs: list[Any], **attributes: Any) -> Any:
        nodes.append(ir.node(op, inputs, attributes or None))
        return nodes[-1].outputs[0]

    one = add("Constant", [], value=ir.tensor(np.array(1, np.int32), name="gqa_one"))
    axis0 = add("Constant", [], value=ir.tensor(np.array([0], np.int64), name="gqa_axis0"))
    total_1d = add("Cast", [add("Shape", [mask], start=1, end=2)], to=ir.DataType.INT32)
    total = add("Squeeze", [total_1d, axis0])
    seqlens = add("Expand", [add("Sub", [total_1d, one]), add("Shape", [mask], start=0, end=1)])
    graph.insert_before(next(iter(graph)), nodes)
    seqlens.name, total.name = "gqa_seqlens_k", "gqa_total_sequence_length"
    return [seqlens, total]


def _producer(value: Any, op: str) -> Any:
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type == op else None


def _perm(node: Any) -> list[int] | None:
    return list(node.attributes["perm"].as_ints()) if node is not None and "perm" in node.attributes else None


def _cached(value: Any) -> tuple[Any, Any, Any] | None:
    """(past, new, present) for `value` = repeat_kv(present), present = Concat(past, new) on the sequence axis."""
    for op in ("Reshape", "Transpose", "Reshape", "Expand", "Unsqueeze"):
        node = _producer(value, op)
        if node is None:
            return None
        value = node.inputs[0]
    concat = _producer(value, "Concat")
    if concat is None or len(concat.inputs) != 2 or concat.attributes["axis"].as_int() not in (-2, 2):
        return None
    past, new = concat.inputs
    return (
        (past, new, concat.outputs[0])
        if past.is_graph_input() and past.shape is not None and len(past.shape) == 4
        else None
    )


def _unbroadcast(bias: Any, seq: Any) -> Any:
    """The mask bias before an Expand that only restates its query axis of length `seq` (that
    Expand materializes a copy of the bias in every layer)."""
    expand = _producer(bias, "Expand")
    inner = expand.inputs[0] if expand is not None else None
    if inner is None or inner.shape is None or len(inner.shape) != 4 or seq is None:
        return bias
    return inner if inner.shape[2] == seq and inner.shape[1] == 1 else bias


def _dim(value: Any, axis: int) -> Any:
    shape = value.shape if value is not None else None
    return shape[axis] if shape is not None and len(shape) > axis else None


def _match(mha: Any, inputs: dict[str, Any]) -> dict[str, Any] | None:
    """The pieces of one layer's attention around `mha`, or None where anything differs."""
    ins = list(mha.inputs) + [None] * 8
    if any(v is not None for v in ins[3:5] + ins[6:]) or ins[5] is None:
        return None  # only a plain MultiHeadAttention with a mask bias and no fused past
    key, value = _cached(ins[1]), _cached(ins[2])
    if key is None or value is None:
        return None
    kv_heads, head_dim = key[0].shape[1], key[0].shape[3]
    if not isinstance(kv_heads, int) or not isinstance(head_dim, int) or head_dim % 8:
        return None  # ONNX Runtime's kernel takes head sizes in multiples of 8
    seq = next((d for d in (_dim(ins[0], 1), _dim(key[1], 2), _dim(value[1], 2)) if d is not None), None)
    return {
        "mha": mha,
        "bias": _unbroadcast(ins[5], seq),
        "kv_heads": kv_heads,
        "past": {"k": key[0], "v": value[0]},
        "new": {"k": key[1], "v": value[1]},
        "present": {"k": key[2], "v": value[2]},
    }
