"""GELU (erf and tanh forms), with the bias add before it (CLIP / SigLIP / Whisper MLPs).

    x ─► Div(√2) ─► Erf ─► Add(1) ─► Mul(x) ─► Mul(0.5)        becomes  Gelu(x)
    x ─► Pow(3) ─► Mul ─► Add ─► Mul(√(2/π)) ─► Tanh ─► ...    becomes  FastGelu(x)
    x ─► Add(bias) ─► Gelu                                      becomes  BiasGelu(x, bias)

SiLU-gated MLPs (Llama) have no rule here: their Sigmoid and Mul nodes stay, and the report
counts the Sigmoids as not fused.

Example:
    >>> apply(model)   # doctest: +SKIP
    {'erf_gelu': 2, 'gelu': 0, 'bias_gelu': 2}
"""

from __future__ import annotations

from typing import Any


def apply(model: Any) -> dict[str, int]:
    from onnxscript.rewriter.ort_fusions.bias_gelu import fuse_bias_gelu
    from onnxscript.rewriter.ort_fusions.erfgelu import fuse_erfgelu
    from onnxscript.rewriter.ort_fusions.gelu import fuse_gelu

    return {"erf_gelu": fuse_erfgelu(model), "gelu": fuse_gelu(model), "bias_gelu": fuse_bias_gelu(model)}
