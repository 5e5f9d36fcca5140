"""SiLU (Llama / Qwen2 / Mistral gated MLPs), to ONNX Runtime's QuickGelu with alpha 1.

    x ─► Sigmoid ─► Mul(x)        becomes  QuickGelu(x, alpha=1.0)      (x · σ(1.0 · x) = SiLU(x))

The gate's product with the up projection stays a Mul: ONNX Runtime has no CPU kernel for the
whole gated MLP. onnxscript ships no SiLU rule, so this one is written here.

Example:
    >>> apply(model)   # doctest: +SKIP
    {'silu': 30}
"""

from __future__ import annotations

from typing import Any


def apply(model: Any) -> dict[str, int]:
    from onnxscript.rewriter import _fusion_utils, pattern

    def silu(op, x):
        return x * op.Sigmoid(x)

    def quick_gelu(op, x):
        return op.QuickGelu(x, alpha=1.0, _domain="com.microsoft")

    rules = pattern.RewriteRuleSet([pattern.RewriteRule(silu, quick_gelu)], commute=True)
    return {"silu": _fusion_utils.apply_fusion_rules(rules)(model)}
