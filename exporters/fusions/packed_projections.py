"""Packed projections: MatMuls that read one input with stored weights become one MatMul and a Split.

    x ─► MatMul(W_q) ─► q                      x ─► MatMul(concat(W_q, W_k, W_v)) ─► Split ─► q
    x ─► MatMul(W_k) ─► k        becomes                                                  ├─► k
    x ─► MatMul(W_v) ─► v                                                                 └─► v

Where the three outputs are a GroupQueryAttention's q, k and v, the kernel takes the packed tensor
whole (its packed-QKV form) and the Split goes. The same packs a gated MLP's gate and up projections. A decode step then reads the input once and
launches one kernel per group, and the quantizer writes ONE MatMulNBits per group (SmolLM2: 5 per
layer -> 2). Packing is exact, and stays exact after int4/int8 weight-only quantization: MatMulNBits
blocks run along the input axis (K) of each output column, and packing concatenates output columns
(N), so every column keeps the same blocks, scales and rounding whatever the group size.

The packed node takes the first member's torch metadata with its module path renamed for the
group (`self_attn.q_proj` -> `self_attn.qkv_proj`, `mlp.gate_proj` -> `mlp.gate_up_proj`), so a
recipe addresses the packed unit as `text_decoder/layers.3/self_attn.qkv_proj`. A bias Add stays
after the Split on its own projection. Written here, not as an onnxscript pattern rule: a rule
matches the tree under one output, and siblings reading one value are no such tree.

Example:
    >>> apply(model)   # doctest: +SKIP
    {'groups': 60, 'matmuls': 150}
"""

from __future__ import annotations

from typing import Any

import numpy as np


def apply(model: Any) -> dict[str, int]:
    """Pack every group of MatMuls reading one input (an onnx_ir model, in place); groups and MatMuls packed,
    and the GroupQueryAttentions that then take the packed q/k/v whole."""
    groups = [g for g in _sibling_groups(model.graph) if len(g) > 1]
    splits = [_pack(model.graph, group) for group in groups]
    attention = sum(_into_attention(split) for split in splits)
    return {"groups": len(groups), "matmuls": sum(len(g) for g in groups), "packed_attention": attention}


def _into_attention(split: Any) -> bool:
    """A Split whose three outputs are exactly a GroupQueryAttention's q, k and v, in order: the kernel takes
    the packed tensor as its query (key and value absent) and the Split goes."""
    uses = [list(out.uses()) for out in split.outputs]
    if len(uses) != 3 or any(len(u) != 1 for u in uses):
        return False
    users = {u.node for u in uses[0] + uses[1] + uses[2]}
    gqa = next(iter(users))
    if len(users) != 1 or gqa.op_type != "GroupQueryAttention" or [u[0].idx for u in uses] != [0, 1, 2]:
        return False
    gqa.replace_input_with(0, split.inputs[0])
    gqa.replace_input_with(1, None)
    gqa.replace_input_with(2, None)
    split.graph.remove(split, safe=True)
    return True


def _stored_weight(node: Any) -> Any:
    """The 2-D float32 initializer a plain MatMul multiplies by, else None."""
    import onnx_ir as ir

    if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
        return None
    w = node.inputs[1]
    if w is None or not w.is_initializer() or w.const_value is None:
        return None
    if len(w.const_value.shape) != 2 or w.const_value.dtype != ir.DataType.FLOAT:
        return None
    return w


def _sibling_groups(graph: Any) -> list[list[Any]]:
    """Per input value: its MatMuls with stored weights of one input width, in graph order."""
    by_input: dict[tuple[int, int], list[Any]] = {}
    for node in graph:
        w = _stored_weight(node)
        if w is not None and node.inputs[0] is not None:
            by_input.setdefault((id(node.inputs[0]), w.const_value.shape[0]), []).append(node)
    return list(by_input.values())


def _pack(graph: Any, members: list[Any]) -> Any:
    """Replace `members` by one MatMul and a Split; returns the Split."""
    import onnx_ir as ir

    first, x = members[0], members[0].inputs[0]
    weights = [m.inputs[1] for m in members]
    widths = [w.const_value.shape[1] for w in weights]
    base = first.name or weights[0].name
    packed_w = ir.Value(
        name=f"{base}_packed_weight",
        const_value=ir.tensor(np.concatenate([w.const_value.numpy() for w in weights], axis=1)),
    )
    sizes = ir.Value(name=f"{base}_packed_sizes", const_value=ir.tensor(np.array(widths, np.int64)))
    graph.register_initializer(packed_w)
    graph.register_initializer(sizes)
    matmul = ir.node("MatMul", [x, packed_w], name=f"{base}_packed", metadata_props=_renamed(members))
    split = ir.node("Split", [matmul.outputs[0], sizes], attributes={"axis": -1}, num_outputs=len(members))
    split.name = f"{base}_packed_split"
    graph.insert_before(first, [matmul, split])
    for member, out in zip(members, split.outputs):
        old = member.outputs[0]
        out.name, out.shape, out.type = old.name, old.shape, old.type
        old.name = None  # the Split's output takes the name the rest of the graph and its outputs know
        ir.convenience.replace_all_uses_with(old, out, replace_graph_outputs=True)
    graph.remove(members, safe=True)
    for w in weights:
        if not w.uses() and w.name in graph.initializers:
            graph.initializers.pop(w.name)  # a weight another node also reads (a tied table) stays
    return split


def _renamed(members: list[Any]) -> dict[str, str]:
    """The first member's metadata, its module path renamed for the group (q_proj -> qkv_proj)."""
    from edgemfm.quantizers.units import scope_path

    paths = [scope_path(m.metadata_props, m.name or "") for m in members]
    parent, _, _ = paths[0].rpartition(".")
    stems = [p.rpartition(".")[2].removesuffix("_proj") for p in paths]
    packed = ("" if all(len(s) == 1 for s in stems) else "_").join(stems) + "_proj"
    packed = f"{parent}.{packed}" if parent else packed
    return {k: v.replace(paths[0], packed) for k, v in members[0].metadata_props.items()}
