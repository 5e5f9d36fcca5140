"""MatMul with a Transpose or a scalar Div folded in (ONNX Runtime's FusedMatMul).

    A ─► Transpose ─► MatMul(B) ─► Div(s)      becomes  FusedMatMul(A, B, transA=1, alpha=1/s)

MatMul + Add pairs are left to ONNX Runtime's session optimizer, which turns them into Gemm or
a fused bias kernel at load on every provider, so no offline rule is needed for them.

Example:
    >>> apply(model)   # doctest: +SKIP
    {'fused_matmul': 3}
"""

from __future__ import annotations

from typing import Any


def apply(model: Any) -> dict[str, int]:
    from onnxscript.rewriter import rewrite
    from onnxscript.rewriter.ort_fusions.fused_matmul_rule_sets import fused_matmul_rule_sets

    before = sum(1 for n in model.graph if n.op_type == "FusedMatMul")
    rewrite(model, fused_matmul_rule_sets())
    return {"fused_matmul": sum(1 for n in model.graph if n.op_type == "FusedMatMul") - before}
