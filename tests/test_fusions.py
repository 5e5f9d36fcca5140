"""Graph fusion at export: counts of fused patterns per rule, and parity of the fused graphs."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest

from edgemfm.bundle import read_manifest
from edgemfm.exporters.fusions import fuse


def _ops(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_decoder_norms_rotary_and_attention_are_fused(default_bundle):
    m = read_manifest(default_bundle)
    layers = m.components["text_decoder"].kv_cache.layers
    fusion = m.report.parity["text_decoder"].fusion
    # two norms per layer with the residual add folded in, one final norm; one grouped-query
    # attention per layer with the cache append inside
    expected = {
        "SkipSimplifiedLayerNormalization": 2 * layers,
        "SimplifiedLayerNormalization": 1,
        "GroupQueryAttention": layers,
        "QuickGelu": layers,
    }
    assert fusion.fused_ops == expected
    graph = onnx.load(str(default_bundle / "text_decoder.onnx")).graph
    ops = Counter(n.op_type for n in graph.node)
    assert {op: ops[op] for op in expected} == expected
    assert (
        fusion.rules_fired["attention.sdpa"]
        == fusion.rules_fired["group_query_attention.group_query_attention"]
        == layers
    )
    assert ops["Softmax"] == 0
    # every present K/V comes out of the kernel: no Concat and no repeat_kv Expand left on the cache
    producers = {o: n.op_type for n in graph.node for o in n.output}
    assert {producers[o.name] for o in graph.output if o.name.startswith("present.")} == {"GroupQueryAttention"}
    assert fusion.nodes_after < 0.6 * fusion.nodes_before


def test_vision_layernorm_attention_and_gelu_are_fused(default_bundle):
    fusion = read_manifest(default_bundle).report.parity["vision_encoder"].fusion
    ops = _ops(default_bundle / "vision_encoder.onnx")
    assert fusion.fused_ops["SkipLayerNormalization"] == ops["SkipLayerNormalization"] >= 1
    assert fusion.fused_ops["Attention"] == ops["Attention"] >= 1 and ops["Softmax"] == 0
    assert fusion.fused_ops["BiasGelu"] == ops["BiasGelu"] >= 1


def test_silu_becomes_quick_gelu_and_what_stays_unfused_is_reported(default_bundle):
    fusion = read_manifest(default_bundle).report.parity["text_decoder"].fusion
    ops = _ops(default_bundle / "text_decoder.onnx")
    layers = read_manifest(default_bundle).components["text_decoder"].kv_cache.layers
    assert fusion.rules_fired["silu.silu"] == ops["QuickGelu"] == layers and ops["Sigmoid"] == 0
    # counted from the graph that ships: the rotary embedding's one Sin (its table is computed per call)
    assert (
        fusion.unfused_ops
        == {op: ops[op] for op in ("Sigmoid", "Sin", "Softmax", "ReduceMean", "Erf", "Tanh") if ops[op]}
        == {"Sin": 1}
    )


@pytest.mark.parametrize("component", ["vision_encoder", "text_decoder"])
def test_fused_graph_keeps_parity_with_pytorch(default_bundle, component):
    parity = read_manifest(default_bundle).report.parity[component]
    assert parity.max_abs_diff <= parity.tolerance * parity.scale
    assert parity.max_abs_diff_unfused <= parity.tolerance * parity.scale


def test_fusing_twice_changes_nothing(default_bundle, tmp_path):
    path = tmp_path / "decoder.onnx"
    path.write_bytes((default_bundle / "text_decoder.onnx").read_bytes())
    before = _ops(path)
    report = fuse(path)
    assert _ops(path) == before and report.nodes_after == report.nodes_before
    assert report.fused_ops == {op: n for op, n in before.items() if op in report.fused_ops}


@pytest.fixture(scope="module")
def unfused_llama(tmp_path_factory, placeholder_model):
    """The placeholder model (a Llama decoder, 6 query heads over 2 KV heads) exported without
    fusion, and its decoder graph fused."""
    import edgemfm

    base = tmp_path_factory.mktemp("gqa")
    bundle = edgemfm.export(
        edgemfm.ExportConfig(model=placeholder_model, device="host", out=base / "bundle", fuse=False)
    )
    fused = base / "fused.onnx"
    fused.write_bytes((bundle / "text_decoder.onnx").read_bytes())
    return bundle, fused, fuse(fused)


def _decoder_feeds(kv, hidden: int, past: int, seq: int, first_position: int, mask_zeros: int = 0) -> dict:
    rng = np.random.default_rng(past + seq)
    mask = np.ones((1, past + seq), np.int64)
    mask[0, :mask_zeros] = 0  # entries a padded batch row would hide
    feeds = {
        "inputs_embeds": rng.standard_normal((1, seq, hidden), np.float32),
        "attention_mask": mask,
        "position_ids": np.arange(first_position, first_position + seq, dtype=np.int64)[None],
    }
    for i in range(kv.layers):
        for kind in ("key", "value"):
            feeds[kv.past.format(layer=i, kind=kind)] = rng.standard_normal(
                (1, kv.kv_heads, past, kv.head_dim), np.float32
            )
    return feeds


@pytest.mark.parametrize(
    ("past", "seq", "first_position", "mask_zeros"),
    [(0, 7, 0, 0), (7, 1, 7, 0), (7, 4, 7, 0), (5, 1, 5000, 0), (6, 3, 6, 2)],
    ids=["prefill", "decode", "chunked-prefill", "streamed-far", "padded-mask"],
)
def test_group_query_attention_matches_the_unfused_graph(unfused_llama, past, seq, first_position, mask_zeros):
    """The fused decoder against the unfused export on every way the runtime calls it: a first
    prefill, one token, a chunk after a cache, a sliding window whose kept entries sit far behind
    the next position (past the model's 2,048 trained positions: streams go on), and a mask with
    hidden entries."""
    import onnxruntime as ort

    bundle, fused, report = unfused_llama
    kv = read_manifest(bundle).components["text_decoder"].kv_cache
    assert (
        report.rules_fired["group_query_attention.group_query_attention"]
        == kv.layers
        == _ops(fused)["GroupQueryAttention"]
    )
    plain, fast = (
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (bundle / "text_decoder.onnx", fused)
    )
    feeds = _decoder_feeds(kv, plain.get_inputs()[0].shape[2], past, seq, first_position, mask_zeros)
    names = [o.name for o in plain.get_outputs()]
    for name, want, got in zip(names, plain.run(names, feeds), fast.run(names, feeds)):
        assert got.shape == want.shape, name
        assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max()), name


def test_a_head_size_the_kernel_refuses_stays_multi_head_attention(tmp_path):
    """The tiny Llama's heads are 14 wide; ONNX Runtime's GroupQueryAttention takes multiples of 8."""
    from tiny_text import tiny_text_model

    import edgemfm

    bundle = edgemfm.export(
        edgemfm.ExportConfig(
            model=tiny_text_model("LlamaForCausalLM", tmp_path / "model"), device="host", out=tmp_path / "b"
        )
    )
    fusion = read_manifest(bundle).report.parity["text_decoder"].fusion
    assert read_manifest(bundle).components["text_decoder"].kv_cache.head_dim % 8
    assert "group_query_attention.group_query_attention" not in fusion.rules_fired
    assert fusion.fused_ops["MultiHeadAttention"] == _ops(bundle / "text_decoder.onnx")["MultiHeadAttention"] >= 2
