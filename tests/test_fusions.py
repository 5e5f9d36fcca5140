"""Graph fusion at export: counts of fused patterns per rule, and parity of the fused graphs."""

from __future__ import annotations

from collections import Counter

import onnx
import pytest

from edgemfm.bundle import read_manifest
from edgemfm.exporters.fusions import fuse


def _ops(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_decoder_norms_rotary_and_attention_are_fused(default_bundle):
    m = read_manifest(default_bundle)
    layers = m.components["text_decoder"].kv_cache.layers
    fusion = m.report["parity"]["text_decoder"]["fusion"]
    # two norms per layer with the residual add folded in, one final norm; one attention per layer
    expected = {"SkipSimplifiedLayerNormalization": 2 * layers, "SimplifiedLayerNormalization": 1, "MultiHeadAttention": layers}
    assert fusion["fused_ops"] == expected
    assert {op: _ops(default_bundle / "text_decoder.onnx")[op] for op in expected} == expected
    assert fusion["rules_fired"]["attention.sdpa"] == layers
    assert _ops(default_bundle / "text_decoder.onnx")["Softmax"] == 0
    assert fusion["nodes_after"] < 0.8 * fusion["nodes_before"]


def test_vision_layernorm_attention_and_gelu_are_fused(default_bundle):
    fusion = read_manifest(default_bundle).report["parity"]["vision_encoder"]["fusion"]
    ops = _ops(default_bundle / "vision_encoder.onnx")
    assert fusion["fused_ops"]["SkipLayerNormalization"] == ops["SkipLayerNormalization"] >= 1
    assert fusion["fused_ops"]["Attention"] == ops["Attention"] >= 1 and ops["Softmax"] == 0
    assert fusion["fused_ops"]["BiasGelu"] == ops["BiasGelu"] >= 1


def test_what_stays_unfused_is_reported(default_bundle):
    fusion = read_manifest(default_bundle).report["parity"]["text_decoder"]["fusion"]
    ops = _ops(default_bundle / "text_decoder.onnx")
    assert fusion["unfused_ops"] == {op: ops[op] for op in ("Sigmoid", "Sin", "Softmax", "ReduceMean", "Erf", "Tanh") if ops[op]}
    # SiLU-gated MLPs keep one Sigmoid per layer; the rotary embedding is left unfused (no cos/sin cache)
    assert fusion["unfused_ops"]["Sigmoid"] == read_manifest(default_bundle).components["text_decoder"].kv_cache.layers
    assert fusion["unfused_ops"]["Sin"] >= 1


@pytest.mark.parametrize("component", ["vision_encoder", "text_decoder"])
def test_fused_graph_keeps_parity_with_pytorch(default_bundle, component):
    parity = read_manifest(default_bundle).report["parity"][component]
    assert parity["max_abs_diff"] <= parity["tolerance"] * parity["scale"]
    assert parity["max_abs_diff_unfused"] <= parity["tolerance"] * parity["scale"]


def test_fusing_twice_changes_nothing(default_bundle, tmp_path):
    path = tmp_path / "decoder.onnx"
    path.write_bytes((default_bundle / "text_decoder.onnx").read_bytes())
    before = _ops(path)
    report = fuse(path)
    assert _ops(path) == before and report["nodes_after"] == report["nodes_before"]
    assert report["fused_ops"] == {op: n for op, n in before.items() if op in report["fused_ops"]}
