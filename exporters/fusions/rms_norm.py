"""RMSNorm, with the residual add before it (Llama, Qwen2, Mistral, Gemma decoders).

    x ─► Pow(2) ─► ReduceMean ─► Add(eps) ─► Sqrt ─► Reciprocal ─► Mul(x) ─► Mul(weight)
      becomes  SimplifiedLayerNormalization(x, weight)

    a ─► Add(b) ─► [RMSNorm]      becomes  SkipSimplifiedLayerNormalization(a, b, weight)
         └──► residual                      (its second output is the residual sum)

Example:
    >>> apply(model)   # doctest: +SKIP
    {'rms_normalization': 9, 'skip_rms_normalization': 8}
"""

from __future__ import annotations

from typing import Any


def apply(model: Any) -> dict[str, int]:
    from onnxscript.rewriter.ort_fusions.rms_normalization import fuse_rms_normalization
    from onnxscript.rewriter.ort_fusions.skip_normalization import fuse_skip_rms_normalization

    return {
        "rms_normalization": fuse_rms_normalization(model),
        "skip_rms_normalization": fuse_skip_rms_normalization(model),
    }
