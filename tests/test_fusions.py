"""Graph fusion at export: counts of fused patterns per rule, and parity of the fused graphs."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import numpy as np
import onnx
import pytest

from edgemfm.bundle import read_manifest
from edgemfm.exporters.fusions import fuse
from edgemfm.exporters.fusions.rotary_attention import METADATA
from edgemfm.runtimes.kvcache import KVCache


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
    # the rotation inside the kernel: its table's length and frequencies in the manifest for the runtime
    kv = m.components["text_decoder"].kv_cache
    assert fusion.rules_fired["rotary_attention.rotary_attention"] == layers
    assert kv.rotary_table == m.streaming.max_seq_len and len(kv.rotary_frequencies) == kv.head_dim // 2
    tables = {i.name: tuple(i.dims) for i in graph.initializer if i.name.startswith("rotary_")}
    assert tables == {f"rotary_{k}_cache": (m.streaming.max_seq_len, kv.head_dim // 2) for k in ("cos", "sin")}


def test_the_heads_the_kernel_returns_merged_are_not_split_and_merged_again(default_bundle):
    """Two Reshapes per layer went (parity: the fused-vs-unfused tests below run the graph with all rules)."""
    m = read_manifest(default_bundle)
    layers = m.components["text_decoder"].kv_cache.layers
    assert m.report.parity["text_decoder"].fusion.rules_fired["attention_output.reshapes"] == 2 * layers
    graph = onnx.load(str(default_bundle / "text_decoder.onnx")).graph
    outs = {n.output[0] for n in graph.node if n.op_type == "GroupQueryAttention"}
    assert len(outs) == layers and [n.op_type for n in graph.node if outs & set(n.input)] == ["MatMul"] * layers


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
    # counted from the graph that ships: nothing (the rotary table's Sin went into the kernel's table)
    assert (
        fusion.unfused_ops
        == {op: ops[op] for op in ("Sigmoid", "Sin", "Softmax", "ReduceMean", "Erf", "Tanh") if ops[op]}
        == {}
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
    return bundle, fused, fuse(fused, read_manifest(bundle).streaming.max_seq_len)


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
    the next position (at 5,000, past the rotary table: fed re-based, as the runtime does), and a mask with
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
    # The fused graph rotates inside the kernel from a table of positions, so both graphs are fed as
    # the runtime feeds them: the far stream re-based (cached keys turned back, positions from 0). An
    # exact shift for RoPE; against the unfused graph at the absolute positions, streamed past the
    # table, see test_rotary_inside_attention_streams_past_its_table_like_the_unfused_graph.
    layout = _fused_layout(kv, fused)
    cache = KVCache(layout, max_len=past + seq, sinks=0)
    cache.values, cache.length, cache.position = {n: feeds[n] for n in cache.past_names}, past, first_position
    cache.make_room(seq)
    assert cache.base == (first_position if first_position + seq > layout.rotary_table else 0)
    feeds = {**feeds, **cache.feeds(seq), "attention_mask": feeds["attention_mask"]}
    names = [o.name for o in plain.get_outputs()]
    for name, want, got in zip(names, plain.run(names, feeds), fast.run(names, feeds)):
        assert got.shape == want.shape, name
        assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max()), name


def _fused_layout(kv, path):
    """The cache layout as the manifest gives it for the fused graph at `path`: with its rotary table."""
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    table = json.loads(props[METADATA])
    return dataclasses.replace(kv, rotary_table=table["table"], rotary_frequencies=tuple(table["frequencies"]))


def test_rotary_inside_attention_streams_past_its_table_like_the_unfused_graph(unfused_llama):
    """The fused decoder (the rotation inside GroupQueryAttention, from a table of positions) and the
    unfused one, each on the runtime's cache: a prefill, single tokens, 100-token prefill chunks, a
    sliding window with sink entries, speculative rollbacks, on to positions past twice the cache and
    twice the table, where the fused one has re-based its positions twice. Until the first re-base
    both read the same float32 angles; after it the unfused graph's own float32 angle at position p
    is off by up to p·2^-24 rad (shifted exactly, it differs from itself by ~2e-4 of the logits here),
    so the bound there is 2e-3; keys left un-rotated at a re-base would be off by the whole logits."""
    import onnxruntime as ort

    bundle, fused, report = unfused_llama
    kv = read_manifest(bundle).components["text_decoder"].kv_cache
    # the runtime may re-base before the graph's table ends (exact all the same): 1,024 keeps the stream short
    layout = dataclasses.replace(_fused_layout(kv, fused), rotary_table=1024)
    graph = onnx.load(str(fused)).graph
    assert report.rules_fired["rotary_attention.rotary_attention"] == kv.layers
    assert all(
        a.i == 1 for n in graph.node if n.op_type == "GroupQueryAttention" for a in n.attribute if a.name == "do_rotary"
    )
    assert not {"Sin", "Cos", "RotaryEmbedding"} & {n.op_type for n in graph.node}
    sessions = [
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (bundle / "text_decoder.onnx", fused)
    ]
    names = [o.name for o in sessions[0].get_outputs()]
    caches = [KVCache(kv, max_len=256, sinks=4), KVCache(layout, max_len=256, sinks=4)]
    rng = np.random.default_rng(0)
    worst = {"before": 0.0, "after": 0.0}
    for step, seq in enumerate([7, 1, 100, 1, *[100] * 20, 3, 1]):
        x = rng.standard_normal((1, seq, sessions[0].get_inputs()[0].shape[2]), np.float32)
        error = _step_both(caches, sessions, names, x, rollback=3 if step % 5 == 2 else 0)  # 3: rejected proposals
        phase = "after" if caches[1].base else "before"
        worst[phase] = max(worst[phase], error)
    assert caches[0].position == caches[1].position > 2 * layout.rotary_table > 2 * caches[0].max_len
    assert caches[1].base > layout.rotary_table and caches[0].length == caches[1].length == 256
    assert worst["before"] <= 1e-4 and worst["after"] <= 2e-3


def _step_both(caches: list, sessions: list, names: list[str], x: np.ndarray, rollback: int = 0) -> float:
    """Feed `x` to the unfused and the fused decoder, each through its own cache (then roll `rollback`
    entries back); the largest logit difference relative to the unfused logits' scale (at least 1)."""
    seq, logits = x.shape[1], []
    for cache, session in zip(caches, sessions):
        cache.make_room(seq)
        out = dict(zip(names, session.run(names, {"inputs_embeds": x, **cache.feeds(seq)})))
        cache.advance(out, seq)
        logits.append(out["logits"])
        if rollback:
            cache.rollback(rollback)
    return float(np.abs(logits[1] - logits[0]).max() / max(1.0, np.abs(logits[0]).max()))


def test_a_table_as_long_as_the_cache_serves_it_full_as_the_stream_slides(unfused_llama, tmp_path):
    """Fused for a 64-position cache, the decoder holds a 64-row table; the kernel wants a row per cached
    entry, and a full cache (64 entries) streamed on past twice the table matches the unfused graph."""
    import onnxruntime as ort

    bundle, _, _ = unfused_llama
    kv = read_manifest(bundle).components["text_decoder"].kv_cache
    path = tmp_path / "short.onnx"
    path.write_bytes((bundle / "text_decoder.onnx").read_bytes())
    assert fuse(path, max_seq_len=64).rules_fired["rotary_attention.rotary_attention"] == kv.layers
    layout = _fused_layout(kv, path)
    graph = onnx.load(str(path)).graph
    assert layout.rotary_table == 64
    assert {tuple(i.dims) for i in graph.initializer if i.name.startswith("rotary_")} == {(64, kv.head_dim // 2)}
    sessions = [
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (bundle / "text_decoder.onnx", path)
    ]
    names = [o.name for o in sessions[0].get_outputs()]
    caches = [KVCache(kv, max_len=64, sinks=4), KVCache(layout, max_len=64, sinks=4)]
    rng, worst, fullest = np.random.default_rng(1), 0.0, 0
    for seq in [60, 1, 1, 30, 1, 20, 20, 1, 40, 3, 1]:
        x = rng.standard_normal((1, seq, sessions[0].get_inputs()[0].shape[2]), np.float32)
        error = _step_both(caches, sessions, names, x)
        fullest = max(fullest, caches[1].length)
        worst = max(worst, error)
    assert fullest == 64 and caches[1].position > 2 * layout.rotary_table and caches[1].base > 0
    assert worst <= 2e-3


def test_a_graph_fused_without_a_cache_length_keeps_the_rotation_outside(unfused_llama, tmp_path):
    """No max_seq_len, no table to size: attention still fuses, the rotation stays before it."""
    bundle, _, _ = unfused_llama
    path = tmp_path / "unsized.onnx"
    path.write_bytes((bundle / "text_decoder.onnx").read_bytes())
    report = fuse(path)
    assert "rotary_attention.rotary_attention" not in report.rules_fired
    assert report.fused_ops["GroupQueryAttention"] == read_manifest(bundle).components["text_decoder"].kv_cache.layers
    graph = onnx.load(str(path))
    assert METADATA not in {p.key for p in graph.metadata_props}
    assert not any(i.name.startswith("rotary_") for i in graph.graph.initializer)


@pytest.mark.slow  # the default suite's kv_cache refusal test exports the same 14-wide heads
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


def _weighted_matmuls(path) -> list[str]:
    from edgemfm.quantizers.units import weighted_units

    units, _ = weighted_units(onnx.load(str(path)), "text_decoder")
    return [u.name for u in units if u.op == "MatMul"]


def test_projections_reading_one_input_are_packed_one_matmul_per_group(default_bundle):
    """q/k/v and gate/up become one MatMul each, named for the recipe as the packed unit."""
    layers = read_manifest(default_bundle).components["text_decoder"].kv_cache.layers
    fusion = read_manifest(default_bundle).report.parity["text_decoder"].fusion
    assert fusion.rules_fired["packed_projections.groups"] == 2 * layers
    assert fusion.rules_fired["packed_projections.matmuls"] == 5 * layers
    names = _weighted_matmuls(default_bundle / "text_decoder.onnx")
    assert len(names) == 4 * layers + 1  # qkv, o, gate_up, down per layer and the head
    assert "text_decoder/layers.0/self_attn.qkv_proj" in names and "text_decoder/layers.0/mlp.gate_up_proj" in names


def _packed_only(source, path) -> None:
    """`source` with only the packing rule applied, written to `path`."""
    import onnx_ir as ir

    from edgemfm.exporters.fusions import packed_projections

    model = ir.load(str(source))
    assert packed_projections.apply(model)["groups"] > 0
    ir.save(model, str(path))


@pytest.mark.parametrize(
    ("method", "symmetric"), [("rtn", False), ("clip_search", True)], ids=["rtn-asymmetric", "clip-search"]
)
def test_packed_projections_equal_the_separate_ones_in_float_and_int4(unfused_llama, tmp_path, method, symmetric):
    """Packing concatenates output columns; MatMulNBits blocks run down each column's input axis,
    so the int4 blocks, scales and rounding are the same packed or not, whatever the group size
    (no projection's output width needs to be a multiple of it)."""
    import onnxruntime as ort

    from edgemfm.profiles import load_profile
    from edgemfm.quantizers import clip_search, weight_only
    from edgemfm.quantizers.context import Context
    from edgemfm.quantizers.units import weighted_units
    from edgemfm.recipe import QuantSpec

    bundle, _, _ = unfused_llama
    kv = read_manifest(bundle).components["text_decoder"].kv_cache
    separate = bundle / "text_decoder.onnx"
    assert "text_decoder/layers.0/self_attn.q_proj" in _weighted_matmuls(separate)  # --no-fuse packs nothing
    _packed_only(separate, tmp_path / "packed.onnx")
    spec = QuantSpec(bits=4, group_size=32, symmetric=symmetric, method=method)
    scheme = {"rtn": weight_only, "clip_search": clip_search}[method]
    ctx = Context(feeds=[], profile=load_profile("host"), scratch=tmp_path)
    graphs = {}
    for name, path in (("separate", separate), ("packed", tmp_path / "packed.onnx")):
        model = onnx.load(str(path))
        units = [u for u in weighted_units(model, "text_decoder")[0] if u.op == "MatMul"]
        graphs[name] = (model.SerializeToString(), scheme.apply(model, units, spec, ctx).SerializeToString())
    nbits = {
        k: Counter(n.op_type for n in onnx.load_from_string(q).graph.node)["MatMulNBits"]
        for k, (_, q) in graphs.items()
    }
    assert nbits == {"separate": 7 * kv.layers + 1, "packed": 4 * kv.layers + 1}
    for i in (0, 1):  # float, then int4
        a, b = (ort.InferenceSession(graphs[k][i], providers=["CPUExecutionProvider"]) for k in ("separate", "packed"))
        feeds = _decoder_feeds(kv, a.get_inputs()[0].shape[2], 5, 3, 5)
        names = [o.name for o in a.get_outputs()]
        for name, want, got in zip(names, a.run(names, feeds), b.run(names, feeds)):
            assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max()), name


def test_packing_keeps_a_bias_add_and_a_weight_another_node_reads(tmp_path):
    """A hand-built graph: q has a bias Add; v's weight is also a Gather's table (a tied embedding)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = {n: rng.standard_normal((16, k), np.float32) for n, k in (("wq", 16), ("wk", 8), ("wv", 8))}
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q0"], name="q"),
        helper.make_node("Add", ["q0", "bq"], ["q"], name="q_bias"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="k"),
        helper.make_node("MatMul", ["x", "wv"], ["v"], name="v"),
        helper.make_node("Gather", ["wv", "ids"], ["rows"], name="table"),
    ]
    inits = [numpy_helper.from_array(a, n) for n, a in w.items()] + [
        numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "bq")
    ]
    io = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
        for n, s in (("q", [2, 16]), ("k", [2, 8]), ("v", [2, 8]), ("rows", [3, 8]))
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, [3]),
        ],
        io,
        inits,
    )
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    feeds = {"x": rng.standard_normal((2, 16), np.float32), "ids": np.array([0, 5, 15])}
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    report = fuse(path)
    assert report.rules_fired == {"packed_projections.groups": 1, "packed_projections.matmuls": 3}
    ops = _ops(path)
    assert ops["MatMul"] == 1 and ops["Split"] == 1 and ops["Add"] == 1 and ops["Gather"] == 1
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    for a, b in zip(want, got):
        assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()
