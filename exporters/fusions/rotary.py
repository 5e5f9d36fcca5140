"""Rotary position embedding, where the runtime has a kernel (ONNX Runtime's RotaryEmbedding).

    x ─► Slice(first half) ─┐
    x ─► Slice(second half) ─► Neg ─► Concat ─► Mul(sin) ─┐
    x ───────────────────────────────────────► Mul(cos) ─► Add
      becomes  RotaryEmbedding(x, position_ids, cos_cache, sin_cache)

Example:
    >>> apply(model)   # doctest: +SKIP
    {'rotary_embedding': 8, 'cos_sin_cache': 0, 'partial_rotary_embedding': 0}
"""

from __future__ import annotations

from typing import Any


def apply(model: Any) -> dict[str, int]:
    import onnx_ir.passes.common as common_passes
    from onnxscript.rewriter.ort_fusions.cos_sin_cache import fuse_cos_sin_cache
    from onnxscript.rewriter.ort_fusions.rotary_embedding import fuse_partial_rotary_embedding, fuse_rotary_embedding

    counts = {"rotary_embedding": fuse_rotary_embedding(model), "cos_sin_cache": fuse_cos_sin_cache(model)}
    common_passes.CommonSubexpressionEliminationPass()(model)  # shares the cos/sin caches first
    counts["partial_rotary_embedding"] = fuse_partial_rotary_embedding(model)
    return counts
