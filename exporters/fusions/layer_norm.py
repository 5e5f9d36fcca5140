"""LayerNorm with the residual add before it (CLIP, SigLIP and Whisper encoders).

    a ─► Add(b) ─► LayerNormalization(gamma, beta)
         └──► residual
      becomes  SkipLayerNormalization(a, b, gamma, beta)  (second output: the residual sum)

Example:
    >>> apply(model)   # doctest: +SKIP
    {'skip_layer_normalization': 4}
"""

from __future__ import annotations

from typing import Any


def apply(model: Any) -> dict[str, int]:
    from onnxscript.rewriter.ort_fusions.skip_normalization import fuse_skip_layer_normalization

    return {"skip_layer_normalization": fuse_skip_layer_normalization(model)}
