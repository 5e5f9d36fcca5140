"""Name a component graph's weighted nodes as recipe units: `component/block/layer`.

The dynamo exporter records each node's module path in its `pkg.torch.onnx.name_scopes`
metadata (`['', 'language_model', 'language_model.layers.3', ..., 'linear']`), so a MatMul whose
weight initializer is called `val_90` is still known as `text_decoder/layers.3/self_attn.q_proj`.
Graphs without that metadata fall back to the node name.

Example:
    >>> unit_name("text_decoder", "language_model.layers.3.mlp.down_proj")
    'text_decoder/layers.3/mlp.down_proj'
    >>> unit_name("text_decoder", "lm_head")
    'text_decoder/lm_head'
    >>> unit_name("vision_encoder", "net._blocks.3._bn1")
    'vision_encoder/blocks.3/_bn1'
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Any

# A repeated block of a transformer or CNN: layers.3, layer.3, blocks.3, h.3, stages.3, and the
# private spellings some CNN code uses (EfficientNet's `_blocks.3`) ...
_BLOCK = re.compile(r"(?:^|\.)_?((?:layers|layer|blocks|block|h|stages)\.\d+)(?:\.(.+))?$")
# op type -> index of the input holding the weight
WEIGHT_INPUT = {"MatMul": 1, "Gemm": 1, "Conv": 1, "Gather": 0}
# Smaller weights are not worth a quantize/dequantize pair: they cost more time than bytes saved.
MIN_PARAMS = 1024
# op type -> indices of stored inputs that are lookup tables, not weights: GroupQueryAttention's cos/sin
# caches (exporters/fusions/rotary_attention.py) are exact rotations, read a row per position; no unit.
TABLE_INPUTS = {"GroupQueryAttention": (7, 8)}


@dataclass(frozen=True)
class Unit:
    name: str  # component/block/layer
    node: str  # the ONNX node's name
    op: str  # MatMul, Gemm, Conv, Gather
    weight: str  # the weight initializer's name
    shape: tuple[int, ...]

    @property
    def params(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def unit_name(component: str, module_path: str) -> str:
    """The recipe unit name of a module path inside `component`."""
    m = _BLOCK.search(module_path)
    if m:
        return "/".join(p for p in (component, m.group(1), m.group(2)) if p)
    return f"{component}/{module_path}" if module_path else component


def module_path(node: Any) -> str:
    """The torch module path the node (a NodeProto) came from ('' for the top module), else its node name."""
    return scope_path({p.key: p.value for p in node.metadata_props}, node.name)


def scope_path(metadata: dict[str, str], fallback: str) -> str:
    """The module path in a node's metadata (as onnx_ir holds it), else `fallback`.

    Example:
        >>> scope_path({"pkg.torch.onnx.name_scopes": "['', 'm.layers.0', 'm.layers.0.mlp.up_proj', 'linear']"}, "n")
        'm.layers.0.mlp.up_proj'
    """
    if "pkg.torch.onnx.name_scopes" in metadata:
        scopes = ast.literal_eval(
            metadata["pkg.torch.onnx.name_scopes"]
        )  # the last is the op, the one before its module
        return scopes[-2] if len(scopes) >= 2 else ""
    return fallback


def weighted_units(model: Any, component: str) -> tuple[list[Unit], dict[str, str]]:
    """The nodes of `model` that carry a float weight initializer, as units; and the skipped ones with why.

    Example:
        >>> units, skipped = weighted_units(onnx.load("text_decoder.onnx"), "text_decoder")  # doctest: +SKIP
        >>> units[0].name                                                                     # doctest: +SKIP
        'text_decoder/layers.0/self_attn.q_proj'
    """
    from onnx import TensorProto

    inits = {i.name: i for i in model.graph.initializer}
    units, skipped = [], {}
    for node in model.graph.node:
        if node.op_type not in WEIGHT_INPUT or len(node.input) <= WEIGHT_INPUT[node.op_type]:
            tables = {node.input[i] for i in TABLE_INPUTS.get(node.op_type, ()) if i < len(node.input)}
            stored = [i for i in node.input if i in inits and i not in tables]
            big = [i for i in stored if _count(tuple(inits[i].dims)) >= MIN_PARAMS]
            if big and inits[big[0]].data_type == TensorProto.FLOAT:  # e.g. a fused Attention's packed QKV weights
                skipped[unit_name(component, module_path(node))] = (
                    f"{node.op_type} {node.name}: no quantizer for this op's weights"
                )
            continue
        init = inits.get(node.input[WEIGHT_INPUT[node.op_type]])
        name = unit_name(component, module_path(node))
        if init is None:
            if node.op_type == "MatMul" and not any(i in inits for i in node.input):
                continue  # activation x activation (attention scores): no weights to quantize
            skipped[name] = f"{node.op_type} {node.name}: weight is computed, not stored"
            continue
        shape = tuple(init.dims)
        if init.data_type != TensorProto.FLOAT:
            skipped[name] = f"{node.op_type} {node.name}: weight is not float32"
        elif len(shape) < 2 or _count(shape) < MIN_PARAMS:
            skipped[name] = f"{node.op_type} {node.name}: {_count(shape)} weights, under {MIN_PARAMS}"
        else:
            units.append(Unit(name, node.name, node.op_type, init.name, shape))
    return units, skipped


def _count(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
