"""The decoder's attention on edgemfm's own kernel: GroupQueryAttention -> edgemfm.Attention, the same node otherwise.

ONNX Runtime 1.32's CPU GroupQueryAttention is nearly half of a SmolLM2 decode step at 1,024 cached positions
(BENCHMARKS.md, the SmolLM2 side by side). `runtimes/kernels/attention.cpp` takes the same inputs, attributes and
outputs, for the form the fusions write,

    GroupQueryAttention(qkv packed, -, -, past_key, past_value, seqlens_k, total_sequence_length,
                        cos_cache, sin_cache, position_ids[, attention_bias])   do_rotary=1, rotary_interleaved=0
      ──►  edgemfm.Attention(the same inputs)   num_heads, kv_num_heads[, scale]

with the float cache appended in place as before (the runtime's shared buffers are the node's past and present).
A node in another form (q, k and v apart, no rotary or an interleaved one, a window, a softcap, an int8 cache
from `--kv-cache int8`, a head size not a multiple of 8) stays GroupQueryAttention. `tests/test_attention_kernel.py`
holds the kernel to ONNX Runtime's GroupQueryAttention on the same inputs.

Example:
    >>> manifest = apply(stage, manifest)  # doctest: +SKIP
    >>> manifest.components["text_decoder"].kernels  # doctest: +SKIP
    ('matmul_int4', 'attention')
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from edgemfm.manifest import Manifest

KERNEL = "attention"  # runtimes/kernels/attention.cpp
DOMAIN = "edgemfm.attention"  # the op's domain, the library's own
# attributes the kernel honours; a node with any other (local_window_size, softcap, smooth_softmax, ...) stays
ATTRIBUTES = {"num_heads", "kv_num_heads", "do_rotary", "rotary_interleaved", "scale"}


def apply(stage: Path, manifest: Manifest) -> Manifest:
    """Every GroupQueryAttention of the decoder in `stage` that the kernel can take -> edgemfm.Attention; the manifest
    with the decoder's `kernels` and a note saying how many moved (and why any stayed).

    Example:
        >>> apply(stage, manifest).report.notes["text_decoder"]  # doctest: +SKIP
        "30 GroupQueryAttention on edgemfm's attention kernel (runtimes/kernels/attention.cpp)"
    """
    import onnx
    from onnx import helper

    name = manifest.generation.decoder
    component = manifest.components.get(name)
    if component is None or component.format != "onnx" or component.kv_cache is None:
        return manifest
    path = stage / component.file
    model = onnx.load(str(path), load_external_data=False)
    moved, stayed = 0, []
    for at, node in enumerate(list(model.graph.node)):
        if node.op_type != "GroupQueryAttention" or node.domain != "com.microsoft":
            continue
        if reason := _refusal(node, component.kv_cache):
            stayed.append(reason)
            continue
        attributes = {
            a.name: helper.get_attribute_value(a)
            for a in node.attribute
            if a.name in ("num_heads", "kv_num_heads", "scale")
        }
        new = helper.make_node(
            "Attention", list(node.input), list(node.output), name=node.name, domain=DOMAIN, **attributes
        )
        model.graph.node.remove(node)
        model.graph.node.insert(at, new)
        moved += 1
    if not moved and not stayed:
        return manifest
    note = (
        f"{moved} GroupQueryAttention on edgemfm's attention kernel (runtimes/kernels/attention.cpp)" if moved else ""
    )
    if stayed:
        note += ("; " if note else "") + f"{len(stayed)} stay on ONNX Runtime's GroupQueryAttention ({stayed[0]})"
    notes = {**manifest.report.notes, f"{name} attention": note}
    if moved:
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
        onnx.save(model, str(path))  # inside export's staging folder: a failed export leaves nothing
        component = replace(component, kernels=(*component.kernels, KERNEL))
    return replace(
        manifest,
        components={**manifest.components, name: component},
        report=replace(manifest.report, notes=notes),
    )


def _refusal(node: Any, kv: Any) -> str:
    """Why the kernel cannot take this GroupQueryAttention ('' where it can)."""
    from onnx import helper

    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    inputs = [*node.input, *[""] * 11][:11]
    if kv.dtype:
        return f"its cache is {kv.dtype}"
    if extra := sorted(set(attributes) - ATTRIBUTES):
        return f"attribute {extra[0]}"
    if attributes.get("do_rotary", 0) != 1 or attributes.get("rotary_interleaved", 0) != 0:
        return "its rotary is outside or interleaved"
    if inputs[1] or inputs[2] or not all(inputs[7:10]):
        return "q, k and v come apart, or the cos/sin tables or positions are missing"
    if kv.head_dim % 8:
        return f"head size {kv.head_dim} is not a multiple of 8"
    return ""
