"""Graph-level operator fusion, offline at export time: the fused graph is what the bundle holds.

Each fusion is one file here with a diagram of the subgraph it replaces and an `apply(model)`
returning how many times each of its rules fired (a rule that needs what only the export knows,
such as the cache's `max_seq_len`, names it in its module's `OPTIONS` and takes it as a keyword). The rules are onnxscript's rewriter rules for
ONNX Runtime's fused kernels (com.microsoft contrib ops, on the CPU, CUDA and mobile builds);
the table gives their order, which matters: norms and rotary embeddings are fused before the
attention patterns that contain them.

Example:
    >>> fusion = fuse(Path("stage/text_decoder.onnx"), max_seq_len=2048)  # doctest: +SKIP
    >>> fusion.fused_ops                                           # doctest: +SKIP
    {'SkipSimplifiedLayerNormalization': 8, 'SimplifiedLayerNormalization': 1, 'MultiHeadAttention': 4}
"""

from __future__ import annotations

import importlib
from collections import Counter
from pathlib import Path

from edgemfm.report import Fusion

# Projections are packed last: the attention rules match q, k and v as separate MatMuls.
FUSIONS = (
    "rms_norm",
    "layer_norm",
    "rotary",
    "attention",
    "group_query_attention",
    "rotary_attention",
    "bnsh_kv",
    "attention_output",
    "gelu",
    "silu",
    "fused_matmul",
    "packed_projections",
    "shared_cache",
)

# The fused kernels the rules produce (ONNX Runtime registers some in the default domain).
FUSED_OPS = (
    "SimplifiedLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "SkipLayerNormalization",
    "RotaryEmbedding",
    "MultiHeadAttention",
    "GroupQueryAttention",
    "Attention",
    "Gelu",
    "FastGelu",
    "BiasGelu",
    "QuickGelu",
    "FusedMatMul",
)
# Primitive ops whose presence after fusion means a pattern was left unfused.
TELLTALES = ("Softmax", "ReduceMean", "Erf", "Tanh", "Sin", "Sigmoid")


def fuse(path: Path, max_seq_len: int | None = None) -> Fusion:
    """Fuse the ONNX graph at `path` in place; count fused patterns and unfused telltale ops.

    `max_seq_len`: the positions a decoder's cache will hold (what sizes the rotary table inside
    GroupQueryAttention); None where no one knows, and the rotation stays outside the kernel."""
    import onnx_ir as ir
    import onnx_ir.passes.common as common_passes
    from onnxscript.optimizer import optimize
    from onnxscript.rewriter.ort_fusions import shape_optimization

    model = ir.load(str(path))
    before = sum(1 for _ in model.graph)
    # What onnxscript's fuse_xformers does first: shapes known, constants folded.
    common_passes.ShapeInferencePass()(model)
    optimize(model)
    shape_optimization.rules.apply_to_model(model)
    optimize(model)
    rules: dict[str, int] = {}
    options = {"max_seq_len": max_seq_len}  # what the export knows that a rule may ask for (its module's OPTIONS)
    for name in FUSIONS:
        module = importlib.import_module(f"edgemfm.exporters.fusions.{name}")
        wanted = {option: options[option] for option in getattr(module, "OPTIONS", ())}
        rules.update({f"{name}.{rule}": n for rule, n in module.apply(model, **wanted).items()})
    # Intermediate ops no later rule consumed (a RotaryEmbedding without a cos/sin cache) are
    # inlined back here, so what ships is counted from the final graph, not from the rules.
    optimize(model)
    ir.save(model, str(path))
    ops = Counter(node.op_type for node in model.graph)
    return Fusion(
        nodes_before=before,
        nodes_after=sum(ops.values()),
        fused_ops={op: n for op, n in ops.items() if op in FUSED_OPS},
        unfused_ops={op: n for op, n in ops.items() if op in TELLTALES},
        rules_fired={rule: n for rule, n in rules.items() if n},
    )
