"""The cache's length read from the attention mask, so past and present can share one buffer.

After `group_query_attention`, every layer's past K/V goes into its GroupQueryAttention, and the
graph reads the cached length nowhere else but in the mask subgraph transformers traced, which
takes it from a past tensor's shape:

    past.0.key ─► Shape[2:3] ─► past length ─► the mask bias, cache positions

      becomes  attention_mask ─► Shape[1:2] ─┐
               inputs_embeds  ─► Shape[1:2] ─┴► Sub ─► past length

The two agree on every call (the runtime feeds a mask as long as the cache plus the new tokens).
With nothing reading its length, a past tensor may be longer than what it holds, and the runtime
binds one preallocated [1, kv_heads, max_seq_len, head_dim] buffer per tensor as both the past
input and the present output: ONNX Runtime's GroupQueryAttention then writes each call's tokens into
it in place (`past_present_share_buffer`) instead of allocating the whole cache anew, copying the
past into it and handing it back to be copied out again at every step. Only where nothing but
GroupQueryAttention reads the past tensors' contents (a layer left unfused concatenates its cache
anew at every call); the model's metadata (`shared_cache`) then says so, which the manifest's
`kv_cache.shared` takes.

Example:
    >>> apply(model)   # doctest: +SKIP
    {'shared_cache': 30}
"""

from __future__ import annotations

from typing import Any

METADATA = "edgemfm.shared_cache"
CACHE_AXIS = 2  # [batch, kv_heads, length, head_dim]


def apply(model: Any) -> dict[str, int]:
    """Where GroupQueryAttention is the only reader of every past tensor's contents, rewrite every read of a
    past tensor's length and mark the model. Returns how many Shape reads were rewritten."""
    from edgemfm.exporters.decoder import PAST

    graph = model.graph
    inputs = {value.name: value for value in graph.inputs}
    pasts = [v for v in graph.inputs if v.name.startswith(PAST.split("{")[0])]
    readers = {(use.node.op_type, use.idx) for past in pasts for use in past.uses()}
    if (
        not pasts
        or not {"attention_mask", "inputs_embeds"} <= inputs.keys()
        or not readers <= {("GroupQueryAttention", 3), ("GroupQueryAttention", 4), ("Shape", 0)}
    ):
        return {"shared_cache": 0}
    rewritten, length = 0, None
    for past in pasts:
        for node in [use.node for use in past.uses() if use.node.op_type == "Shape"]:
            start, end = _span(node)
            if start <= CACHE_AXIS < end:
                if length is None:
                    length = _past_length(graph, inputs["attention_mask"], inputs["inputs_embeds"])
                _replace(graph, node, past, start, end, length)
                rewritten += 1
    model.metadata_props[METADATA] = "1"
    return {"shared_cache": rewritten}


def _span(shape: Any) -> tuple[int, int]:
    """The [start, end) axes a Shape node reads of a 4-d tensor."""
    rank = 4
    start = shape.attributes["start"].as_int() if "start" in shape.attributes else 0
    end = shape.attributes["end"].as_int() if "end" in shape.attributes else rank
    start, end = (a + rank if a < 0 else a for a in (start, end))
    return max(0, min(start, rank)), max(0, min(end, rank))


def _past_length(graph: Any, mask: Any, embeds: Any) -> Any:
    """[1] int64: the mask's length minus the call's tokens (inserted at the graph's start)."""
    import onnx_ir as ir

    total = ir.node("Shape", [mask], {"start": 1, "end": 2})
    seq = ir.node("Shape", [embeds], {"start": 1, "end": 2})
    length = ir.node("Sub", [total.outputs[0], seq.outputs[0]])
    graph.insert_before(next(iter(graph)), [total, seq, length])
    length.outputs[0].name = "shared_cache_past_length"
    return length.outputs[0]


def _replace(graph: Any, shape: Any, past: Any, start: int, end: int, length: Any) -> None:
    """Shape(past)[start:end] as the same axes with the length axis taken from `length`."""
    import onnx_ir as ir

    parts, nodes = [], []
    if start < CACHE_AXIS:
        nodes.append(ir.node("Shape", [past], {"start": start, "end": CACHE_AXIS}))
        parts.append(nodes[-1].outputs[0])
    parts.append(length)
    if end > CACHE_AXIS + 1:
        nodes.append(ir.node("Shape", [past], {"start": CACHE_AXIS + 1, "end": end}))
        parts.append(nodes[-1].outputs[0])
    if len(parts) > 1:
        nodes.append(ir.node("Concat", parts, {"axis": 0}))
    graph.insert_before(shape, nodes)
    new = nodes[-1].outputs[0] if nodes else length
    shape.outputs[0].replace_all_uses_with(new, replace_graph_outputs=True)
    graph.remove(shape, safe=True)
