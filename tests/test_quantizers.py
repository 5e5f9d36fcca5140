"""Quantizers on the default model: every scheme x device preset counted and bounded, the auto planner, calibration."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from edgemfm.bundle import read_manifest
from edgemfm.configs import QuantizeConfig
from edgemfm.errors import ConfigError, InputError
from edgemfm.profiles import load_profile
from edgemfm.quantizers import presets
from edgemfm.quantizers.calibration import component_feeds, read_folder
from edgemfm.quantizers.quantize import quantize
from edgemfm.quantizers.units import unit_name, weighted_units
from edgemfm.recipe import QuantSpec, Recipe, Rule

LAYERS = 4  # the default model's decoder: 4 layers x 4 MatMuls (q/k/v and gate/up packed; o; down) + lm_head
PER_LAYER = 4
DECODER_MATMULS = LAYERS * PER_LAYER + 1
VISION_MATMULS = 5  # 1 CLIP layer: o, fc1, fc2 + the 2 projector linears (q, k, v are inside the fused Attention)
# the position table (an input of SkipLayerNormalization) and q/k/v packed by a Concat for the fused Attention
VISION_FLOAT = ("vision_encoder/llava.vision_tower.pre_layrnorm", "vision_encoder/layers.0/self_attn")


@pytest.fixture(scope="session")
def quantized(default_bundle, tmp_path_factory):
    """(device, precision or Recipe) -> (manifest, stage dir), each quantized once per session."""
    done = {}

    def get(device: str, precision: str = "int8", **kw):
        key = (device, precision, tuple(sorted(kw.items())))
        if key not in done:
            root = tmp_path_factory.mktemp(f"{device}-{precision}")
            stage = root / "stage"
            shutil.copytree(default_bundle, stage)
            config = QuantizeConfig(precision=precision, **kw)
            m = quantize(stage, read_manifest(default_bundle), load_profile(device), config, root / "scratch")
            done[key] = (m, stage)
        return done[key]

    return get


def ops(stage: Path, component: str) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(stage / f"{component}.onnx")).graph.node)


def qdq_weighted(stage: Path, component: str, op: str) -> int:
    """Nodes of type `op` whose weight comes through a DequantizeLinear of an int8 initializer."""
    g = onnx.load(str(stage / f"{component}.onnx")).graph
    int8 = {i.name for i in g.initializer if i.data_type == onnx.TensorProto.INT8}
    dq = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in int8}
    return sum(n.op_type == op and n.input[1] in dq for n in g.node)


def test_unit_names_follow_the_module_hierarchy(default_bundle):
    units, skipped = weighted_units(onnx.load(str(default_bundle / "text_decoder.onnx")), "text_decoder")
    names = [u.name for u in units]
    assert len(units) == DECODER_MATMULS and not skipped
    assert names[0] == "text_decoder/layers.0/self_attn.qkv_proj" and names[-1] == "text_decoder/lm_head"
    assert sum(n.startswith("text_decoder/layers.3/") for n in names) == PER_LAYER
    assert (
        unit_name("vision_encoder", "llava.vision_tower.encoder.layers.0.mlp.fc1") == "vision_encoder/layers.0/mlp.fc1"
    )
    assert (
        unit_name("vision_encoder", "net._blocks.12._bn1") == "vision_encoder/blocks.12/_bn1"
    )  # EfficientNet's spelling


def nbits(stage: Path, component: str) -> Counter:
    """(bits, block_size, accuracy_level) of each MatMulNBits node of a component."""
    g = onnx.load(str(stage / f"{component}.onnx")).graph
    attrs = ({a.name: a.i for a in n.attribute} for n in g.node if n.op_type == "MatMulNBits")
    return Counter((a["bits"], a["block_size"], a.get("accuracy_level")) for a in attrs)


def test_x86_int8_is_int8_blocks_with_int8_compute(quantized):
    """MatMuls: int8 weight blocks of 32, int8 compute; the Conv: int8 per output channel behind a DequantizeLinear."""
    m, stage = quantized("host", "int8")
    q = m.report.quantization
    assert nbits(stage, "text_decoder") == {(8, 32, 4): DECODER_MATMULS}
    assert nbits(stage, "vision_encoder") == {(8, 32, 4): VISION_MATMULS}
    assert qdq_weighted(stage, "vision_encoder", "Conv") == 1 and ops(stage, "vision_encoder")["QuantizeLinear"] == 0
    assert ops(stage, "text_decoder")["MatMulInteger"] == 0 and not q["vision_encoder"].notes
    assert q["token_embedding"].quantized_nodes == {"Gather(int8 rows)": 1}
    assert ops(stage, "text_decoder")["GroupQueryAttention"] == LAYERS and ops(stage, "text_decoder")["MatMul"] == 0
    assert tuple(q["vision_encoder"].float_units) == VISION_FLOAT
    assert q["vision_encoder"].sqnr_db >= 20 and q["token_embedding"].sqnr_db >= 40
    assert q["text_decoder"].sqnr_db >= 18 and q["text_decoder"].cosine >= 0.98


def test_jetson_int8_is_symmetric_static_qdq(quantized, default_bundle):
    m, stage = quantized("jetson", "int8")
    assert m.recipe.spec_for("text_decoder/layers.0/mlp.up_proj").method == "percentile"
    assert qdq_weighted(stage, "text_decoder", "MatMul") == DECODER_MATMULS
    assert qdq_weighted(stage, "vision_encoder", "MatMul") == VISION_MATMULS
    assert qdq_weighted(stage, "vision_encoder", "Conv") == 1
    g = onnx.load(str(stage / "text_decoder.onnx")).graph
    uint8 = [i.name for i in g.initializer if i.data_type == onnx.TensorProto.UINT8]
    assert not uint8, "TensorRT takes symmetric int8 activations only"
    q = m.report.quantization
    assert q["vision_encoder"].sqnr_db >= 18 and q["text_decoder"].sqnr_db >= 12
    float_bytes = read_manifest(default_bundle).components["text_decoder"].weight_bytes
    assert m.components["text_decoder"].weight_bytes < 0.3 * float_bytes


def test_jetson_fp16_converts_every_weight(quantized):
    m, stage = quantized("jetson", "fp16")
    for name in m.components:
        g = onnx.load(str(stage / f"{name}.onnx")).graph
        big = [i for i in g.initializer if np.prod(i.dims) >= 1024]
        assert big and all(i.data_type == onnx.TensorProto.FLOAT16 for i in big)
        assert g.input[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT16  # fp32 in and out
        assert m.report.quantization[name].sqnr_db >= 40


@pytest.mark.parametrize("device, level", [("pi5", 4), ("android", 4), ("jetson", None), ("host", 4)])
def test_int4_is_matmulnbits_with_the_devices_compute(quantized, device, level):
    m, stage = quantized(device, "int4")
    g = onnx.load(str(stage / "text_decoder.onnx")).graph
    nbits = [n for n in g.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == DECODER_MATMULS
    # the head (the MatMul giving the logits) in finer blocks where the device has them
    head = presets.HEAD_GROUP if presets.HEAD_GROUP in load_profile(device).group_sizes else 64
    for n in nbits:
        attrs = {a.name: a.i for a in n.attribute}
        block = head if "logits" in n.output else 64
        assert attrs["bits"] == 4 and attrs["block_size"] == block and attrs.get("accuracy_level") == level
    assert ops(stage, "vision_encoder")["MatMulNBits"] == VISION_MATMULS
    assert ops(stage, "token_embedding")["GatherBlockQuantized"] == 1
    # the patch embedding Conv: int4 blocks behind a DequantizeLinear (opset 21)
    g = onnx.load(str(stage / "vision_encoder.onnx"))
    dq = [n for n in g.graph.node if n.op_type == "DequantizeLinear"]
    int4 = {i.name for i in g.graph.initializer if i.data_type == onnx.TensorProto.INT4}
    assert len(dq) == 1 and dq[0].input[0] in int4 and {a.name: a.i for a in dq[0].attribute}["block_size"] == 3
    assert tuple(m.report.quantization["vision_encoder"].float_units) == VISION_FLOAT
    q = m.report.quantization
    assert q["token_embedding"].sqnr_db >= 18 and q["vision_encoder"].cosine >= 0.9


def activation_zero_points(stage: Path, component: str) -> Counter:
    """The element types of the zero points of the QuantizeLinear nodes (activations) of a component."""
    g = onnx.load(str(stage / f"{component}.onnx")).graph
    types = {i.name: i.data_type for i in g.initializer}
    return Counter(onnx.TensorProto.DataType.Name(types[n.input[2]]) for n in g.node if n.op_type == "QuantizeLinear")


def test_android_int8_is_static_qdq_and_pi_int8_blocks(quantized):
    m, stage = quantized("android", "int8")
    assert qdq_weighted(stage, "text_decoder", "MatMul") == DECODER_MATMULS
    # the decoder's activations get 16 bits (w8a16), the encoders' 8: a decoder's outlier channels
    assert set(activation_zero_points(stage, "text_decoder")) == {"INT16"}
    assert set(activation_zero_points(stage, "vision_encoder")) == {"INT8"}
    jetson, _ = quantized("jetson", "int8")  # the same static QDQ with 8-bit activations everywhere
    a16, a8 = m.report.quantization["text_decoder"].sqnr_db, jetson.report.quantization["text_decoder"].sqnr_db
    print(f"decoder SQNR w8a16 {a16:.1f} dB, w8a8 {a8:.1f} dB")
    assert a16 >= a8 + 3  # placeholder (random weights): 20.0 against 15.5 dB; the demo decoder 3.7 dB at w8a8
    m, stage = quantized("pi5", "int8")
    assert nbits(stage, "text_decoder") == {(8, 32, 4): DECODER_MATMULS}


def test_dynamic_int8_stays_available_by_recipe(default_bundle, tmp_path):
    """Per-tensor dynamic int8 (MatMulInteger) is no preset any more, but a recipe can still ask for it."""
    from edgemfm.quantizers.apply import quantize_component
    from edgemfm.quantizers.context import Context

    recipe = Recipe(rules=(Rule("*", QuantSpec(bits=8, method="dynamic", activation_bits=8)),))
    report = quantize_component(
        default_bundle / "text_decoder.onnx",
        tmp_path / "d.onnx",
        "text_decoder",
        recipe,
        Context([], load_profile("host"), tmp_path),
    )
    assert report.quantized_nodes["MatMulInteger"] == DECODER_MATMULS


def test_gptq_quantizes_only_what_the_recipe_names(default_bundle, tmp_path):
    """ORT's MatMulNBitsQuantizer drops nodes_to_exclude for GPTQ: edgemfm calls the GPTQ pass with the exclusions."""
    from edgemfm.quantizers.apply import quantize_component
    from edgemfm.quantizers.context import Context
    from edgemfm.quantizers.metrics import outputs, sqnr_db

    manifest = read_manifest(default_bundle)
    feeds = component_feeds(default_bundle, manifest)["text_decoder"][:4]
    recipe = Recipe(
        rules=(Rule("text_decoder/layers.0/*", QuantSpec(bits=4, group_size=32, method="gptq")), Rule("*", None))
    )
    out = tmp_path / "gptq.onnx"
    report = quantize_component(
        default_bundle / "text_decoder.onnx", out, "text_decoder", recipe, Context(feeds, load_profile("pi5"), tmp_path)
    )
    assert nbits(tmp_path, "gptq") == {(4, 32, None): PER_LAYER}
    assert len(report.float_units) == DECODER_MATMULS - PER_LAYER
    ref = outputs(default_bundle / "text_decoder.onnx", feeds, "logits")
    # measured 4.4 dB: ORT's GPTQ is weak with 4 short windows (and below RTN on real weights, BENCHMARKS.md)
    assert sqnr_db(ref, outputs(out, feeds, "logits")) >= 3


def test_int8_is_closer_to_float_than_int4(quantized):
    int8, _ = quantized("pi5", "int8")
    int4, _ = quantized("pi5", "int4")
    for name in ("vision_encoder", "text_decoder", "token_embedding"):
        assert int8.report.quantization[name].sqnr_db >= int4.report.quantization[name].sqnr_db + 8


def test_methods_and_partial_recipes(default_bundle, tmp_path):
    """k_quant and HQQ int4 on half the decoder, int8 weight-only on the rest, lm_head float."""
    stage = tmp_path / "stage"
    shutil.copytree(default_bundle, stage)
    recipe = Recipe(
        rules=(
            Rule("text_decoder/lm_head", None),
            Rule("text_decoder/layers.[01]/*", QuantSpec(bits=4, group_size=32, method="k_quant", activation_bits=8)),
            Rule("text_decoder/layers.2/*", QuantSpec(bits=4, group_size=32, method="hqq")),
            Rule("text_decoder/*", QuantSpec(bits=8, group_size=32, method="rtn")),
        )
    )
    from edgemfm.quantizers.apply import quantize_component
    from edgemfm.quantizers.context import Context

    report = quantize_component(
        default_bundle / "text_decoder.onnx",
        stage / "text_decoder.onnx",
        "text_decoder",
        recipe,
        Context([], load_profile("pi5"), tmp_path),
    )
    g = onnx.load(str(stage / "text_decoder.onnx")).graph
    bits = Counter({a.name: a.i for a in n.attribute}["bits"] for n in g.node if n.op_type == "MatMulNBits")
    assert bits == {4: 3 * PER_LAYER, 8: PER_LAYER}
    assert report.float_units == {"text_decoder/lm_head": "the recipe keeps it float"}
    bad = Recipe(rules=(Rule("*", QuantSpec(bits=4, group_size=32, method="awesome")),))
    with pytest.raises(
        ConfigError,
        match="'awesome'.*allowed: dynamic, minmax, percentile, entropy, rtn, k_quant, gptq, hqq, clip_search",
    ):
        quantize_component(
            default_bundle / "text_decoder.onnx",
            tmp_path / "x.onnx",
            "text_decoder",
            bad,
            Context([], load_profile("pi5"), tmp_path),
        )


def test_onnx_runtimes_gptq_with_zero_points_is_refused_in_one_line():
    from edgemfm.quantizers import weight_only

    weight_only.check(QuantSpec(bits=4, group_size=64, method="gptq"))
    with pytest.raises(ConfigError, match="'gptq'.* symmetric only; allowed: symmetric=True, or 'gptq_act_order'"):
        weight_only.check(QuantSpec(bits=4, group_size=64, symmetric=False, method="gptq"))


def test_auto_plans_bits_per_layer_within_the_tolerance(quantized):
    m, stage = quantized("pi5", "auto", accuracy_tolerance_db=15.0)
    plan = m.report.plan
    assert plan.tolerance_met and plan.tolerance_db == 15.0
    # the token embedding is judged with the decoder, on its next-token distribution
    assert plan.judged_by == {
        "vision_encoder": "vision_encoder",
        "token_embedding": "text_decoder",
        "text_decoder": "text_decoder",
    }
    assert (
        set(plan.measured_sqnr_db) == {"vision_encoder", "text_decoder"} and min(plan.measured_sqnr_db.values()) >= 15.0
    )
    q = m.report.quantization
    assert q["vision_encoder"].sqnr_db >= 15.0 and q["text_decoder"].judged.sqnr_db >= 15.0
    groups = plan.groups
    assert "text_decoder/layers.0/mlp.down_proj" in groups and "text_decoder/lm_head" in groups
    assert groups["text_decoder/layers.0/mlp.down_proj"].estimated and not groups["text_decoder/lm_head"].estimated
    bits = {g.bits for g in groups.values()}
    assert 4 in bits and len(bits) >= 2, "a mixed plan on this model"
    # the plan is the manifest's recipe: every layer gets the bits its group got
    for name, g in groups.items():
        spec = m.recipe.spec_for(name)
        assert (spec.bits if spec else 32) == g.bits, name


def test_sensitivity_shares_each_blocks_noise_out_by_role(tmp_path):
    """Blocks and roles measured, layers estimated: exact when a layer's noise is its block's factor times its role's."""
    from onnx import TensorProto, helper, numpy_helper

    from edgemfm.quantizers.planner import Group, recipe_of, sensitivity

    rng = np.random.default_rng(0)
    names = [f"layers.{b}.mlp.{r}" for b in range(3) for r in ("up", "down")] + ["lm_head"]
    nodes = [helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"], name=n) for i, n in enumerate(names)]
    inits = [
        numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), f"w{i}") for i in range(len(names))
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, 32]) for i in range(len(names))],
        inits,
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "d.onnx"))
    block_factor, role_factor = {"0": 1.0, "1": 4.0, "2": 0.5}, {"up": 1.0, "down": 3.0}
    truth = {f"d/layers.{b}/mlp.{r}": block_factor[b] * role_factor[r] for b in "012" for r in ("up", "down")} | {
        "d/lm_head": 7.0
    }
    calls = []

    def noise(component, recipe):  # independent layers: their noise powers add
        calls.append(recipe)
        return sum(p for u, p in truth.items() if recipe.spec_for(u))

    int4 = QuantSpec(bits=4, group_size=32)
    groups = sensitivity(tmp_path, {"d": "d.onnx"}, noise, int4, lambda: None)
    assert len(calls) == 3 + 2 + 1  # blocks, roles, the head: not one run per layer
    assert {g.name: round(g.noise4, 9) for g in groups} == truth
    # a block whose layers got different bits is written layer by layer, one whose layers agree as one rule pair
    levels = {"d/layers.1/mlp.down": 1}
    for g in groups:
        g.level = levels.get(g.name, 0)
    recipe = recipe_of(groups, [int4, QuantSpec(bits=8, group_size=32), None])
    assert [r.pattern for r in recipe.rules] == [
        "d/lm_head",
        "d/lm_head/*",
        "d/layers.0",
        "d/layers.0/*",
        "d/layers.1/mlp.up",
        "d/layers.1/mlp.down",
        "d/layers.2",
        "d/layers.2/*",
        "*",
    ]
    assert recipe.spec_for("d/layers.1/mlp.down").bits == 8 and recipe.spec_for("d/layers.1/mlp.up").bits == 4
    assert isinstance(groups[0], Group)


def test_distribution_noise_ignores_a_common_shift_and_weighs_likely_tokens():
    from edgemfm.quantizers.metrics import distribution_power, distribution_sqnr_db

    ref = np.log(np.array([[0.90, 0.09, 0.01], [0.5, 0.3, 0.2]]))
    assert distribution_power(ref, 3, ref + np.array([[3.0], [-2.0]])) < 1e-12  # softmax is shift-invariant
    on_likely, on_unlikely = ref.copy(), ref.copy()
    on_likely[0, 0] += 0.1
    on_unlikely[0, 2] += 0.1
    assert distribution_sqnr_db(ref, on_likely, 3) < distribution_sqnr_db(ref, on_unlikely, 3) - 6
    # small errors: noise / 2 is the KL divergence of the two distributions, summed over positions
    got = ref + np.random.default_rng(0).normal(0, 0.01, ref.shape)
    p, q = (np.exp(z) / np.exp(z).sum(1, keepdims=True) for z in (ref, got))
    assert np.isclose(distribution_power(ref, 3, got) / 2, np.sum(p * np.log(p / q)), rtol=0.05)


def test_judge_measures_the_token_embedding_through_the_decoder(default_bundle, tmp_path):
    from edgemfm.quantizers.apply import quantize_component
    from edgemfm.quantizers.context import Context
    from edgemfm.quantizers.judge import Judge
    from edgemfm.quantizers.metrics import outputs, sqnr_db
    from edgemfm.quantizers.quantize import measured_subset
    from edgemfm.recipe import FLOAT32

    manifest = read_manifest(default_bundle)
    feeds = {k: measured_subset(v) for k, v in component_feeds(default_bundle, manifest).items()}
    int4 = Recipe(rules=(Rule("*", QuantSpec(bits=4, group_size=32, method="rtn")),))

    def probe(component, recipe):
        if recipe is FLOAT32:
            return default_bundle / manifest.components[component].file
        out = tmp_path / f"{component}.onnx"
        quantize_component(
            default_bundle / manifest.components[component].file,
            out,
            component,
            recipe,
            Context([], load_profile("pi5"), tmp_path),
        )
        return out

    judge = Judge(default_bundle, manifest, feeds, probe)
    assert [judge.judged_by(c) for c in ("token_embedding", "text_decoder", "vision_encoder")] == [
        "text_decoder"
    ] * 2 + ["vision_encoder"]
    assert all(judge.noise(c, FLOAT32) == 0 for c in ("token_embedding", "text_decoder", "vision_encoder"))
    assert judge.sqnr_db("token_embedding", probe("token_embedding", FLOAT32)) == 200.0
    own = sqnr_db(
        judge.refs["token_embedding"],
        outputs(probe("token_embedding", int4), feeds["token_embedding"], "inputs_embeds"),
    )
    noise = judge.noise("token_embedding", int4)
    judged = judge.sqnr_db("token_embedding", probe("token_embedding", int4))
    assert noise > 0 and judged == round(10 * np.log10(judge.signal("text_decoder") / noise), 2)
    assert abs(own - judged) > 1, "not the table's own output SQNR"


def test_auto_refuses_a_budget_nothing_fits(quantized):
    with pytest.raises(InputError, match=r"memory budget 0.1 MiB is too small: the smallest plan needs \d"):
        quantized("pi5", "auto", memory_budget_mb=0.1)


def test_precision_without_kernels_is_refused():
    with pytest.raises(InputError, match="'fp16' has no kernels on host-x86-64-avx2; allowed: fp32, auto, int8, int4"):
        presets.recipe_for(load_profile("host"), "fp16")
    with pytest.raises(InputError, match="'int2' is not supported; allowed: fp32, fp16, int8, int4, auto"):
        presets.recipe_for(load_profile("pi5"), "int2")


def test_calibration_folder(default_bundle, tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(folder / "green.png")
    (folder / "prompts.txt").write_text("a green square\n\nwhat colour is this?\n")
    images, clips, prompts = read_folder(folder)
    assert len(images) == 1 and not clips and prompts == ["a green square", "what colour is this?"]
    feeds = component_feeds(default_bundle, read_manifest(default_bundle), folder)
    assert len(feeds["vision_encoder"]) == 1 and feeds["vision_encoder"][0]["pixel_values"].shape == (1, 3, 224, 224)
    shapes = {f["inputs_embeds"].shape for f in feeds["text_decoder"]}
    assert len(shapes) == 1 and next(iter(shapes))[2] == 192  # equal windows: what histogram calibrators need
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"has no images .*, no audio \(.wav\) and no prompts"):
        read_folder(tmp_path / "empty")


def test_export_int4_end_to_end(tmp_path, picture, capsys, placeholder_model):
    """`edgemfm export --precision int4` writes a MatMulNBits bundle that runs, and inspect shows the report."""
    import edgemfm
    from edgemfm.cli import main
    from edgemfm.manifest import Manifest

    out = tmp_path / "pi5-int4"
    assert (
        main(["export", "--model", str(placeholder_model), "--device", "pi5", "--precision", "int4", "--out", str(out)])
        == 0
    )
    m = read_manifest(out)
    assert Manifest.from_json(m.to_json()) == m  # the recipe and the report round-trip
    assert m.recipe.spec_for("text_decoder/layers.2/mlp.down_proj") == QuantSpec(
        bits=4, group_size=64, symmetric=False, method="clip_search", activation_bits=8
    )
    assert m.report.quantization["text_decoder"].quantized_nodes == {"MatMulNBits": DECODER_MATMULS}
    assert sum(f.bytes for f in m.files.values()) < 0.3 * 9.6 * 2**20
    tokens = list(edgemfm.load(out).generate_tokens("What is in the picture?", images=[picture], max_new_tokens=4))
    assert len(tokens) == 4
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "int4/clip_search/g64" in text and f"nodes: text_decoder: MatMulNBits {DECODER_MATMULS}" in text
    assert f"nodes: vision_encoder: MatMulNBits {VISION_MATMULS}, DequantizeLinear 1" in text
    judged = m.report.quantization["token_embedding"].judged
    assert judged.by == "text_decoder" and f"judged: token_embedding: SQNR {judged.sqnr_db:.1f} dB on" in text


def test_export_refuses_a_missing_calibration_folder(tmp_path, capsys, placeholder_model):
    from edgemfm.cli import main

    assert (
        main(
            [
                "export",
                "--model",
                str(placeholder_model),
                "--device",
                "pi5",
                "--precision",
                "int8",
                "--calibration",
                str(tmp_path / "nope"),
                "--out",
                str(tmp_path / "b"),
            ]
        )
        == 2
    )
    assert "calibration folder" in capsys.readouterr().err and not (tmp_path / "b").exists()


def _one_matmul(w: np.ndarray) -> onnx.ModelProto:
    """y = x @ w, the weight an initializer: the smallest graph a weight quantizer works on."""
    from onnx import TensorProto, helper, numpy_helper

    k, n = w.shape
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("bits", [4, 8])
def test_clip_search_writes_matmulnbits_that_onnxruntime_reads_as_packed(bits, tmp_path):
    """The packed blobs and scales decode (in ORT) to exactly the integers x scales clip_search chose."""
    import onnxruntime as ort

    from edgemfm.quantizers import clip_search
    from edgemfm.quantizers.context import Context

    rng = np.random.default_rng(0)
    w = rng.standard_t(4, size=(200, 48)).astype(np.float32)  # K not a multiple of the block: padded
    x = rng.standard_normal((6, 200)).astype(np.float32) * np.linspace(0.1, 3.0, 200, dtype=np.float32)
    model = _one_matmul(w)
    units, _ = weighted_units(model, "c")
    spec = QuantSpec(bits=bits, group_size=64, method="clip_search")
    out = clip_search.apply(model, units, spec, Context([{"x": x}], load_profile("host"), tmp_path))
    assert Counter(n.op_type for n in out.graph.node) == {"MatMulNBits": 1} and len(out.graph.initializer) == 2
    got = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    q, s = clip_search.quantize_blocks(w, bits, 64, (x.astype(np.float64) ** 2).mean(0))
    dequant = (q * s[:, :, None]).reshape(48, -1)[:, :200].T
    assert np.abs(got - x @ dequant).max() < 1e-4


@pytest.mark.parametrize("bits", [4, 8])
def test_asymmetric_clip_search_packs_zero_points_that_onnxruntime_reads(bits, tmp_path):
    """Each block's own range with a zero point: ORT decodes exactly (q - z) x s, and on weights that lean
    to one side the error is below the symmetric grid's."""
    import onnxruntime as ort

    from edgemfm.quantizers import clip_search
    from edgemfm.quantizers.context import Context

    rng = np.random.default_rng(0)
    w = (rng.gamma(2.0, size=(200, 48)) - 0.5).astype(np.float32)  # skewed; K padded; 4 blocks: zero points pair up
    x = rng.standard_normal((6, 200)).astype(np.float32)
    model = _one_matmul(w)
    units, _ = weighted_units(model, "c")
    spec = QuantSpec(bits=bits, group_size=64, symmetric=False, method="clip_search")
    out = clip_search.apply(model, units, spec, Context([{"x": x}], load_profile("host"), tmp_path))
    assert [n.op_type for n in out.graph.node] == ["MatMulNBits"] and len(out.graph.node[0].input) == 4
    got = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    h = (x.astype(np.float64) ** 2).mean(0)
    q, s, z = clip_search.quantize_blocks_asymmetric(w, bits, 64, h)
    dequant = ((q + 2 ** (bits - 1) - z[:, :, None]) * s[:, :, None]).reshape(48, -1)[:, :200].T
    assert np.abs(got - x @ dequant).max() < 1e-4
    q_sym, s_sym = clip_search.quantize_blocks(w, bits, 64, h)
    symmetric = (q_sym * s_sym[:, :, None]).reshape(48, -1)[:, :200].T
    assert np.sum((dequant - w) ** 2) < 0.7 * np.sum((symmetric - w) ** 2)


def test_clip_search_beats_absmax_rounding_where_the_activations_are():
    """Searched scales: less weight error than absmax RTN, and less still on the channels the activations load."""
    from edgemfm.quantizers.clip_search import quantize_blocks

    rng = np.random.default_rng(1)
    w = rng.standard_t(4, size=(256, 64)).astype(np.float32)
    h = np.linspace(0.01, 10.0, 256)  # activation mean squares per input channel

    def err(q, s, weight):
        dq = (q * s[:, :, None]).reshape(64, -1).T
        return float((weight[:, None] * (dq - w) ** 2).sum())

    absmax = np.abs(w.T.reshape(64, 4, 64)).max(axis=2) / 7
    q_rtn = np.clip(np.round(w.T.reshape(64, 4, 64) / absmax[:, :, None]), -8, 7)
    flat = np.ones(256)
    assert err(*quantize_blocks(w, 4, 64, None), flat) < 0.9 * err(q_rtn, absmax, flat)
    assert err(*quantize_blocks(w, 4, 64, h), h) < err(*quantize_blocks(w, 4, 64, None), h)


def test_asymmetric_clip_search_refits_each_blocks_grid_to_its_codes(monkeypatch):
    """clip_search.REFITS: after the shrink search, each block's scale and zero point refit by least squares to
    its codes lower the weighted error, most where a few input channels carry large activations (as in an LLM)."""
    from edgemfm.quantizers import clip_search

    rng = np.random.default_rng(2)
    w = rng.standard_t(4, size=(256, 64)).astype(np.float32)
    h = np.ones(256)
    h[[5, 70, 130, 200]] = 1e3  # activation mean squares per input channel: four massive channels

    def err(q, s, z):
        dq = ((q + 8 - z[:, :, None].astype(np.int16)) * s[:, :, None]).reshape(64, -1).T
        return float((h[:, None] * (dq - w) ** 2).sum())

    refit = err(*clip_search.quantize_blocks_asymmetric(w, 4, 64, h))
    monkeypatch.setattr(clip_search, "REFITS", 0)
    assert refit < 0.9 * err(*clip_search.quantize_blocks_asymmetric(w, 4, 64, h))


def test_smoothing_keeps_the_product_and_helps_int8_compute_with_outlier_channels(tmp_path):
    """SmoothQuant scales: the float output is unchanged; MatMulNBits int8 compute gains SQNR on outlier activations."""
    import onnxruntime as ort

    from edgemfm.quantizers import weight_only
    from edgemfm.quantizers.context import Context
    from edgemfm.quantizers.metrics import sqnr_db
    from edgemfm.quantizers.smoothing import smooth

    rng = np.random.default_rng(2)
    w = rng.standard_normal((128, 64)).astype(np.float32) * 0.05
    x = rng.standard_normal((32, 128)).astype(np.float32)
    x[:, [5, 70]] *= 60.0  # two massive channels, as real LLM hidden states have
    ctx = Context([{"x": x}], load_profile("host"), tmp_path)

    def run(model):
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[
            0
        ]

    model = _one_matmul(w)
    units, _ = weighted_units(model, "c")
    smoothed = smooth(_one_matmul(w), units, ctx)
    assert Counter(n.op_type for n in smoothed.graph.node) == {"Mul": 1, "MatMul": 1}
    assert np.abs(run(smoothed) - x @ w).max() < 1e-3 * np.abs(x @ w).max()
    spec = QuantSpec(bits=8, group_size=32, activation_bits=8)
    with_smoothing = run(weight_only.apply(_one_matmul(w), units, spec, ctx))
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(
        _one_matmul(w),
        bits=8,
        block_size=32,
        is_symmetric=True,
        algo_config=DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, bits=8),
    )
    q.process()
    plain = q.model.model
    for n in plain.graph.node:
        n.attribute.append(onnx.helper.make_attribute("accuracy_level", 4))
    assert sqnr_db(x @ w, with_smoothing) >= sqnr_db(x @ w, run(plain)) + 6


def test_planner_compares_groups_of_different_components_by_relative_noise():
    """An embedding (signal ~1e-2) and logits (~1e4): the budget goes to the group with the worse SQNR, not the larger noise."""
    from edgemfm.quantizers.planner import Group, choose
    from edgemfm.quantizers.units import Unit

    int4, int8 = QuantSpec(bits=4, group_size=64), QuantSpec(bits=8, group_size=32)
    emb = Group(
        "token_embedding/embed",
        "token_embedding",
        [Unit("token_embedding/embed", "g", "Gather", "w0", (4096, 64))],
        noise4=1e-3,
    )
    dec = Group(
        "text_decoder/layers.0",
        "text_decoder",
        [Unit("text_decoder/layers.0/fc", "m", "MatMul", "w1", (64, 4096))],
        noise4=1e2,
    )
    ladder = [int4, int8, None]
    one_raise = sum(g.bytes_at(int4, lambda u, s: True) for g in (emb, dec)) + 4096 * 64 * 0.6
    choose([emb, dec], {"token_embedding": 1e-2, "text_decoder": 1e4}, ladder, one_raise, 0.0, 30.0, lambda u, s: True)
    assert (emb.level, dec.level) == (1, 0)  # 10 dB -> 34 dB for the embedding; the decoder was already at 20 dB


def test_static_qdq_keeps_depthwise_convs_float_and_says_why():
    from edgemfm.quantizers import static_int8
    from edgemfm.quantizers.apply import scheme_of
    from edgemfm.quantizers.units import Unit

    qdq = QuantSpec(bits=8, method="percentile", activation_bits=8)
    depthwise = Unit("vision_encoder/blocks.3/_bn1", "c", "Conv", "w", (144, 1, 5, 5))
    pointwise = Unit("vision_encoder/blocks.3/_bn2", "d", "Conv", "v", (40, 144, 1, 1))
    assert "depthwise Conv: kept float" in scheme_of(depthwise, qdq)
    assert scheme_of(pointwise, qdq) is static_int8.SCHEME


@pytest.mark.parametrize("bits", [4, 8])
def test_conv1d_weights_quantize_and_run(bits):
    """Whisper-style audio encoders start with Conv1d: rank-3 weights take the same int4 blocks / int8 channels."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgemfm.quantizers import conv_weight_only
    from edgemfm.quantizers.units import Unit

    rng = np.random.default_rng(0)
    w = rng.standard_normal((24, 80, 3)).astype(np.float32)  # [Cout, Cin, k]: Cin not a whole number of blocks
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv1", pads=[1, 1])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 80, 50])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = rng.standard_normal((1, 80, 50)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    unit = Unit("audio_encoder/conv1", "conv1", "Conv", "w", w.shape)
    quantized = conv_weight_only.apply(model, [unit], QuantSpec(bits=bits, group_size=32), None)
    got = ort.InferenceSession(quantized.SerializeToString()).run(None, {"x": x})[0]
    assert sum(n.op_type == "DequantizeLinear" for n in quantized.graph.node) == 1
    sqnr = 10 * np.log10((want**2).sum() / ((got - want) ** 2).sum())
    assert sqnr > (15 if bits == 4 else 35), sqnr
