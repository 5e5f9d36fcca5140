"""The head split and merge after GroupQueryAttention, which undo each other, go.

What the exported decoders keep after the attention rules, per layer:

    GroupQueryAttention ─► out [b, s, heads·d] ─► Reshape [b, s, heads, d] ─► Reshape [b, s, heads·d] ─► o_proj

      becomes  GroupQueryAttention ─► out [b, s, heads·d] ─► o_proj

The model's code splits the heads for its own attention and merges them for the output
projection; the kernel already returns them merged, so the two Reshapes are two kernel calls per
layer and step that move nothing. Removed only where the shapes prove it: the split's last two
dims are the kernel's heads and a fixed head size, and the merge gives back the same batch and
sequence dims with the heads multiplied out.

Example:
    >>> apply(model)   # doctest: +SKIP
    {'reshapes': 60}
"""

from __future__ import annotations

from typing import Any


def apply(model: Any) -> dict[str, int]:
    """Drop the Reshapes (and Transpose pairs) after every GroupQueryAttention whose output they only
    re-shape to itself; returns the Reshapes removed."""
    graph = model.graph
    removed = 0
    for gqa in [n for n in graph if n.op_type == "GroupQueryAttention"]:
        chain = _chain(gqa)
        if chain is None:
            continue
        out, merged = gqa.outputs[0], chain[-1].outputs[0]
        out.shape, out.type = merged.shape, out.type or merged.type
        merged.replace_all_uses_with(out)
        graph.remove(chain, safe=True)
        removed += 2
    return {"reshapes": removed}


def _only_use(value: Any, ops: tuple[str, ...]) -> Any:
    """The node reading `value` as its first input, where it is the only reader and one of `ops`."""
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return None
    node, index = uses[0]
    return node if node.op_type in ops and index == 0 else None


def _chain(gqa: Any) -> list[Any] | None:
    """[split, Transposes that undo each other..., merge] after `gqa`'s output, where the merge gives
    back the output's own shape: the split is [0, 0, heads, -1 or d] (each dim of the output kept, the
    last cut into heads), the Transposes compose to no permutation, the merge's shape is the 4-D one's
    first two dims and heads · d."""
    heads = gqa.attributes["num_heads"].as_int()
    split = _only_use(gqa.outputs[0], ("Reshape",))
    target = split.inputs[1].const_value if split is not None and split.inputs[1] is not None else None
    if target is None or "allowzero" in split.attributes and split.attributes["allowzero"].as_int():
        return None
    dims = target.numpy().tolist()
    if len(dims) != 4 or dims[:3] != [0, 0, heads]:
        return None
    chain, perm, value = [split], [0, 1, 2, 3], split.outputs[0]
    while (node := _only_use(value, ("Transpose", "Reshape"))) is not None and node.op_type == "Transpose":
        perm = [perm[i] for i in node.attributes["perm"].as_ints()]
        chain.append(node)
        value = node.outputs[0]
    if node is None or perm != [0, 1, 2, 3] or node.outputs[0].is_graph_output():
        return None
    parts, whole = value.shape, node.outputs[0].shape
    if parts is None or whole is None or len(parts) != 4 or len(whole) != 3 or not isinstance(parts[3], int):
        return None
    same = list(whole)[:2] == list(parts)[:2] and whole[2] == heads * parts[3]
    return [*chain, node] if same else None
