"""MultiHeadAttention reading keys and values in the [batch, heads, seq, head_dim] layout they are cached in.

What an encoder-decoder's decoder (Whisper's) holds after the `attention` rules, in every layer:

    cross K [b, heads, 1500, d] (an input) ─► Transpose(0,2,1,3) ─► Reshape [b, 1500, heads·d] ─► MultiHeadAttention(q, K, V)
    past K ─► Concat(new K) ─► present K ─► Transpose(0,2,1,3) ─► Reshape ──────────────────────┘

      becomes  MultiHeadAttention(q, K [b, heads, seq, d], V [b, heads, seq, d])

ONNX Runtime's kernel takes 4-D keys and values as already projected, in exactly this layout
(its BNSH key/value format), so the two copies per layer and step go: on Whisper tiny.en they moved
the 8 cross-attention tensors of 1500 positions (18 MB) at every token, a third of the decoder's
time. The cached self-attention K/V (the present outputs) go in the same way. A MultiHeadAttention
with a K/V bias or a fused past, or whose key and value are not both in this form, is left as it was.

Example:
    >>> apply(model)   # doctest: +SKIP
    {'bnsh_kv': 8}
"""

from __future__ import annotations

from typing import Any

BNSH = [0, 2, 1, 3]  # [batch, seq, heads, head_dim] <-> [batch, heads, seq, head_dim]


def apply(model: Any) -> dict[str, int]:
    """Feed every matching MultiHeadAttention its K/V in cache layout; returns how many were."""
    done = 0
    for node in list(model.graph):
        if node.op_type != "MultiHeadAttention" or node.domain != "com.microsoft":
            continue
        ins = list(node.inputs) + [None] * 8
        if ins[3] is not None or ins[6] is not None or ins[7] is not None:
            continue  # a K/V bias or a fused past: the kernel takes neither with 4-D keys
        heads = node.attributes["num_heads"].as_int()
        key, value = _cache_layout(ins[1], heads), _cache_layout(ins[2], heads)
        if key is None or value is None:
            continue
        node.replace_input_with(1, key)
        node.replace_input_with(2, value)
        done += 1
    return {"bnsh_kv": done}


def _cache_layout(value: Any, heads: int) -> Any:
    """The 4-D [b, heads, seq, d] tensor that `value` = Reshape(Transpose(it, 0,2,1,3)) to [b, seq, heads·d], or None."""
    reshape = _producer(value, "Reshape")
    transpose = _producer(reshape.inputs[0], "Transpose") if reshape is not None else None
    if transpose is None or list(transpose.attributes["perm"].as_ints()) != BNSH:
        return None
    source, target = transpose.inputs[0], reshape.inputs[1].const_value
    if source.shape is None or len(source.shape) != 4 or source.shape[1] != heads or target is None:
        return None
    d = source.shape[3]
    merges = [[0, 0, -1]] + ([[0, 0, heads * d]] if isinstance(d, int) else [])  # batch and sequence kept
    return source if target.numpy().tolist() in merges else None


def _producer(value: Any, op: str) -> Any:
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type == op else None
