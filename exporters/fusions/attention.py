"""Attention, to the fused attention ops ONNX Runtime has (MultiHeadAttention, GroupQueryAttention).

    Q ─► MatMul(Kᵀ) ─► Mul(scale) ─► Add(mask) ─► Softmax ─► MatMul(V)      (SDPA)
    past K/V ─► Concat(new K/V) ─► [SDPA]  ─► Transpose ─► Reshape
      becomes  MultiHeadAttention(Q, K, V, past_key, past_value)  or
               GroupQueryAttention(...) where the K/V heads are shared by query groups

The rules run from the innermost pattern out: SDPA first, then the attention forms that contain
it, then any SDPA still standing becomes MultiHeadAttention.

Example:
    >>> apply(model)["sdpa"]   # doctest: +SKIP
    4
"""

from __future__ import annotations

from typing import Any


def apply(model: Any) -> dict[str, int]:
    from onnxscript.rewriter.ort_fusions.attention import fuse_attention
    from onnxscript.rewriter.ort_fusions.gqa import fuse_gqa
    from onnxscript.rewriter.ort_fusions.gqa_packed_qkv import fuse_qkv_gqa
    from onnxscript.rewriter.ort_fusions.mha import fuse_mha1, fuse_mha2
    from onnxscript.rewriter.ort_fusions.mha_bias import fuse_mha_bias
    from onnxscript.rewriter.ort_fusions.mha_scale import fuse_mha_scale
    from onnxscript.rewriter.ort_fusions.sdpa import fuse_sdpa
    from onnxscript.rewriter.ort_fusions.sdpa_via_mha import replace_sdpa_by_mha

    counts = {"sdpa": fuse_sdpa(model, apply_shape_inference=True)}
    counts["gqa"] = fuse_gqa(model)
    counts["packed_qkv_gqa"] = fuse_qkv_gqa(model)
    counts["mha_with_past"] = fuse_mha1(model)
    counts["mha"] = fuse_mha2(model)
    counts["mha_scale"] = fuse_mha_scale(model)
    if counts["mha_with_past"] or counts["mha"]:  # these only refine a MultiHeadAttention
        counts["mha_bias"] = fuse_mha_bias(model)
        counts["attention"] = fuse_attention(model)
    counts["sdpa_via_mha"] = replace_sdpa_by_mha(model)
    return counts
