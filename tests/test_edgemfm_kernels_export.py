"""`export --kernels edgemfm`: an int4 or int8 bundle's MatMulNBits on edgemfm's own kernel
(quantizers/native_int4.py, runtimes/kernels/matmul_int4.cpp), its tied lookup on the same records, an fp32
decoder's MatMuls and tied lookup on the fp32 kernel (exporters/native_matmul.py, runtimes/kernels/matmul_f32.cpp),
the decoder's GroupQueryAttention on edgemfm's attention kernel (exporters/native_attention.py,
runtimes/kernels/attention.cpp), and the refusals."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import onnx
import pytest

import edgemfm
from edgemfm.bundle import read_manifest
from edgemfm.errors import BundleError, InputError
from edgemfm.exporting import resolve
from edgemfm.quantizers import tied_table

pytestmark = pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler (c++) to build the kernel")


def _export(model, out, precision: str, kernels: str):
    config = edgemfm.ExportConfig(model=str(model), device="host", precision=precision, kernels=kernels, out=str(out))
    return edgemfm.export(config)


@pytest.fixture(scope="module")
def bundles(tied_model, tmp_path_factory):
    """The int4 bundle on ONNX Runtime's kernels and on edgemfm's."""
    out = tmp_path_factory.mktemp("int4")
    return {kernels: _export(tied_model, out / kernels, "int4", kernels) for kernels in ("ort", "edgemfm")}


@pytest.fixture(scope="module")
def int8_bundles(tied_model, tmp_path_factory):
    """The int8 bundle on ONNX Runtime's kernels and on edgemfm's (its head smoothed: the embedding keeps its own
    int8 rows)."""
    out = tmp_path_factory.mktemp("int8")
    return {kernels: _export(tied_model, out / kernels, "int8", kernels) for kernels in ("ort", "edgemfm")}


@pytest.fixture(scope="module")
def float_bundles(placeholder_model, default_bundle, tmp_path_factory):
    """The default fp32 bundle (its cache appended in place) on ONNX Runtime's kernels and on edgemfm's."""
    return {
        "ort": default_bundle,
        "edgemfm": _export(placeholder_model, tmp_path_factory.mktemp("fp32") / "b", "fp32", "edgemfm"),
    }


def _ops(path) -> dict[str, int]:
    model = onnx.load(str(path), load_external_data=False)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _weight_matmuls(path) -> int:
    """MatMul nodes that multiply by a weight (an initializer), not two activations (an unfused attention's)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    return sum(n.op_type == "MatMul" and n.input[1] in weights for n in graph.node)


def test_every_int4_matmul_the_tied_lookup_and_the_attention_move_to_the_kernels(bundles, capsys):
    ort_bundle, own = bundles["ort"], bundles["edgemfm"]
    before = _ops(ort_bundle / "text_decoder.onnx")
    after = _ops(own / "text_decoder.onnx")
    assert after.get("MatMulInt4") == before["MatMulNBits"] and "MatMulNBits" not in after
    assert after.get("Attention") == before["GroupQueryAttention"] > 0 and "GroupQueryAttention" not in after
    assert _ops(own / "token_embedding.onnx") == {"GatherInt4": 1}
    m = read_manifest(own)
    assert {n: c.kernels for n, c in m.components.items()} == {
        "token_embedding": ("matmul_int4",),
        "text_decoder": ("matmul_int4", "attention"),
    }
    layers = before["GroupQueryAttention"]
    assert m.report.notes["text_decoder attention"] == (
        f"{layers} GroupQueryAttention on edgemfm's attention kernel (runtimes/kernels/attention.cpp)"
    )
    from edgemfm.cli import main

    assert main(["inspect", str(own)]) == 0  # what the device will build, said before it is copied there
    assert "text_decoder: edgemfm kernels matmul_int4, attention" in " ".join(capsys.readouterr().out.split())
    q = m.report.quantization["text_decoder"]
    assert q.quantized_nodes.get("MatMulInt4") == before["MatMulNBits"] and "MatMulNBits" not in q.quantized_nodes
    worst = float(q.notes["int4 kernel"].split("worst SQNR ")[1].split(" dB")[0])
    assert worst >= 30.0
    # one table: the decoder's head and the lookup read the same bytes of tied_table.bin, the kernel's records
    embed = onnx.load(str(own / "token_embedding.onnx"), load_external_data=False)
    decoder = onnx.load(str(own / "text_decoder.onnx"), load_external_data=False)
    (table,) = [i for i in embed.graph.initializer]
    heads = [i for i in decoder.graph.initializer if i.name == table.name]
    assert len(heads) == 1 and heads[0].external_data == table.external_data
    vocab, hidden = m.components["text_decoder"].outputs[0].shape[-1], 128
    records = -(-vocab // 16) * (hidden // 32) * (8 * 32 + 64)  # tiles of 16 columns; the head's group is 32
    assert {e.key: e.value for e in table.external_data}["length"] == str(records)
    assert (own / tied_table.FILE).stat().st_size == records


def test_every_int8_matmul_moves_to_the_int8_kernel(int8_bundles):
    ort_bundle, own = int8_bundles["ort"], int8_bundles["edgemfm"]
    before, after = _ops(ort_bundle / "text_decoder.onnx"), _ops(own / "text_decoder.onnx")
    assert after.get("MatMulInt8") == before["MatMulNBits"] > 0
    assert "MatMulNBits" not in after and "MatMulInt4" not in after
    m = read_manifest(own)
    assert m.components["text_decoder"].kernels == ("matmul_int4", "attention")
    q = m.report.quantization["text_decoder"]
    assert q.quantized_nodes.get("MatMulInt8") == before["MatMulNBits"] and "MatMulNBits" not in q.quantized_nodes
    assert "int4 kernel" not in q.notes
    worst = float(q.notes["int8 kernel"].split("worst SQNR ")[1].split(" dB")[0])
    assert worst >= 30.0  # measured 44.8 dB: the activations' int8 rounding, as MatMulNBits' own
    decoder = onnx.load(str(own / "text_decoder.onnx"), load_external_data=False)
    widths = {int(i.dims[2]) for i in decoder.graph.initializer if i.name.endswith(".int8_records")}
    assert widths == {16 * 32 + 64}  # per record: 16 columns' 32 int8 inputs, then 16 scales and 16 offsets


@pytest.mark.parametrize("precision", ["int4", "int8"])
def test_the_kernels_bundle_answers_as_the_matmulnbits_bundle_does(precision, request):
    """The same integers with float16 scales: the first logits agree to 20 dB (measured 24.7 dB at int4, 28.6 at
    int8; int4 itself leaves this random model's logits 2.9 dB from its float ones, either kernel), and the greedy
    answers keep their first tokens (measured: 7 of 8 equal at int4, 8 of 8 at int8; a random model's logits are
    close together)."""
    made = request.getfixturevalue("bundles" if precision == "int4" else "int8_bundles")
    prompt = "hello world"
    steps = {k: list(edgemfm.load(b).generate_steps(prompt, max_new_tokens=8)) for k, b in made.items()}
    first = {k: s[0][1].astype(np.float64) for k, s in steps.items()}
    noise = ((first["ort"] - first["edgemfm"]) ** 2).sum()
    assert 10 * np.log10((first["ort"] ** 2).sum() / noise) >= 20.0
    tokens = {k: [t for t, _ in s] for k, s in steps.items()}
    assert tokens["ort"][:4] == tokens["edgemfm"][:4]


def test_an_unsmoothed_int8_head_and_its_lookup_read_the_same_records(tied_model, tmp_path, monkeypatch):
    """Where smoothing loses, an int8 head stays the token table (quantizers/tied_table.py): the rewrite makes the
    lookup GatherInt8 on the head's records in tied_table.bin, and its rows are GatherBlockQuantized's but for
    float16's rounding of each block's scale and offset (under 1/16 of a symmetric int8 step)."""
    import onnxruntime as ort

    from edgemfm.bundle import seal
    from edgemfm.quantizers import native_int4, weight_only
    from edgemfm.runtimes import native

    monkeypatch.setattr(weight_only, "where_it_helps", lambda model, units, ctx, quantize: quantize(model))
    plain = _export(tied_model, tmp_path / "ort", "int8", "ort")
    assert _ops(plain / "token_embedding.onnx") == {"GatherBlockQuantized": 1}
    own = tmp_path / "own"
    shutil.copytree(plain, own)
    seal(own, native_int4.apply(own, read_manifest(own)))  # as export does with --kernels edgemfm
    assert _ops(own / "token_embedding.onnx") == {"GatherInt8": 1}
    assert _ops(own / "text_decoder.onnx").get("MatMulInt8") == _ops(plain / "text_decoder.onnx")["MatMulNBits"]
    notes = read_manifest(own).report.quantization["token_embedding"].notes
    assert notes["int8 kernel"] == "1 GatherInt8 on edgemfm's kernel (runtimes/kernels/matmul_int4.cpp)"
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(native.build("matmul_int4")))
    sessions = [
        ort.InferenceSession(str(b / "token_embedding.onnx"), o, providers=["CPUExecutionProvider"])
        for b, o in ((plain, ort.SessionOptions()), (own, options))
    ]
    ids = np.arange(0, 256, 5, dtype=np.int64)[None]
    want, got = (s.run(None, {s.get_inputs()[0].name: ids})[0] for s in sessions)
    np.testing.assert_allclose(got, want, rtol=0, atol=2**-11 * float(np.abs(want).max()))


def test_an_fp32_bundle_on_the_kernels_answers_as_on_onnx_runtimes(float_bundles):
    """At fp32 every MatMul moves to the fp32 kernel and the attention to its own (the same floats summed in another
    order): the same greedy tokens, the first logits within float rounding. The placeholder's head is its own
    (untied): its token embedding stays a Gather."""
    before, after = (_ops(float_bundles[k] / "text_decoder.onnx") for k in ("ort", "edgemfm"))
    assert after.get("Attention") == before["GroupQueryAttention"] and "GroupQueryAttention" not in after
    made = float_bundles["edgemfm"] / "text_decoder.onnx"
    assert after.get("MatMulF32") == _weight_matmuls(float_bundles["ort"] / "text_decoder.onnx") > 0
    assert _weight_matmuls(made) == 0
    m = read_manifest(float_bundles["edgemfm"])
    assert m.components["text_decoder"].kernels == ("matmul_f32", "attention")
    assert m.components["token_embedding"].kernels == ()
    worst = float(m.report.notes["text_decoder matmuls"].split("worst relative error ")[1].split(" ")[0])
    assert worst < 1e-6
    steps = {
        k: list(edgemfm.load(b).generate_steps("hello world", max_new_tokens=12)) for k, b in float_bundles.items()
    }
    assert [t for t, _ in steps["ort"]] == [t for t, _ in steps["edgemfm"]]
    np.testing.assert_allclose(steps["edgemfm"][0][1], steps["ort"][0][1], rtol=0, atol=1e-4)


def test_tune_refuses_an_fp32_bundle_on_the_kernels_in_one_line(float_bundles, tmp_path):
    """tune quantizes a bundle's float graphs with stock ONNX Runtime: edgemfm's ops are not among its ops."""
    from edgemfm.tune.host import float_source

    with pytest.raises(InputError) as error:
        float_source(None, None, float_bundles["edgemfm"], False, tmp_path, None)
    assert "calls edgemfm's kernels (attention, matmul_f32)" in str(error.value) and "\n" not in str(error.value)
    assert "allowed: an fp32 bundle exported with --kernels ort" in str(error.value)
    assert float_source(None, None, float_bundles["ort"], False, tmp_path, None)[0] == float_bundles["ort"]


def test_an_fp32_tied_head_and_its_lookup_read_one_table_of_tiles(tied_model, tmp_path):
    """The tied head (a FusedMatMul on the table) and the lookup move to the fp32 kernel on the same bytes of
    tied_table.bin, stored once as tiles: the same greedy tokens and first logits as on ONNX Runtime's kernels."""
    made = {k: _export(tied_model, tmp_path / k, "fp32", k) for k in ("ort", "edgemfm")}
    before, after = (_ops(made[k] / "text_decoder.onnx") for k in ("ort", "edgemfm"))
    assert (
        before["FusedMatMul"] == 1 and after.get("MatMulF32") == _weight_matmuls(made["ort"] / "text_decoder.onnx") + 1
    )
    assert _weight_matmuls(made["edgemfm"] / "text_decoder.onnx") == 0 and "FusedMatMul" not in after
    assert _ops(made["edgemfm"] / "token_embedding.onnx") == {"GatherF32": 1}
    m = read_manifest(made["edgemfm"])
    assert m.components["token_embedding"].kernels == ("matmul_f32",)
    embed = onnx.load(str(made["edgemfm"] / "token_embedding.onnx"), load_external_data=False)
    decoder = onnx.load(str(made["edgemfm"] / "text_decoder.onnx"), load_external_data=False)
    (table,) = [i for i in embed.graph.initializer]
    heads = [i for i in decoder.graph.initializer if i.name == table.name]
    assert len(heads) == 1 and heads[0].external_data == table.external_data
    vocab, hidden = m.components["text_decoder"].outputs[0].shape[-1], 128
    assert (made["edgemfm"] / tied_table.FILE).stat().st_size == -(-vocab // 32) * 32 * hidden * 4
    sizes = {k: (b / "text_decoder.weights").stat().st_size for k, b in made.items()}  # the MatMuls' tiles alone
    assert sizes["ort"] <= sizes["edgemfm"] <= 1.1 * sizes["ort"]  # columns padded to whole tiles of 32
    steps = {k: list(edgemfm.load(b).generate_steps("hello world", max_new_tokens=8)) for k, b in made.items()}
    assert [t for t, _ in steps["ort"]] == [t for t, _ in steps["edgemfm"]]
    np.testing.assert_allclose(steps["edgemfm"][0][1], steps["ort"][0][1], rtol=0, atol=1e-4)


def test_a_stream_on_the_kernels_follows_onnx_runtimes(float_bundles):
    """test_shared_cache's stream (a prefill, single tokens, chunked prefills, rollbacks, a window with sinks,
    re-bases past a 96-position table) on both bundles' decoders: in place on the kernel, grown on the kernel
    (its past copied into a new present), and in place on GroupQueryAttention give the same logits to float
    rounding at every call."""
    from test_shared_cache import _stream

    from edgemfm.runtimes.kvcache import KVCache, SharedKVCache
    from edgemfm.runtimes.onnxruntime import OrtSession

    kv = dataclasses.replace(read_manifest(float_bundles["ort"]).components["text_decoder"].kv_cache, rotary_table=96)
    assert kv.shared  # the graph reads the cached length from the mask: one buffer can be past and present
    ort_session = OrtSession.load(float_bundles["ort"] / "text_decoder.onnx", ["CPUExecutionProvider"])
    kernels = read_manifest(float_bundles["edgemfm"]).components["text_decoder"].kernels
    own = OrtSession.load(float_bundles["edgemfm"] / "text_decoder.onnx", ["CPUExecutionProvider"], kernels=kernels)
    hidden, calls = ort_session.session.get_inputs()[0].shape[2], [7, 1, 1, 20, 1, *[30] * 10, 3, 1, 1]
    want = _stream(SharedKVCache(kv, max_len=64, sinks=4), ort_session, hidden, calls)
    for cache in (SharedKVCache(kv, max_len=64, sinks=4), KVCache(kv, max_len=64, sinks=4)):
        got = _stream(cache, own, hidden, calls)
        for a, b in zip(want, got):
            np.testing.assert_allclose(b, a, rtol=0, atol=2e-4 * float(np.abs(a).max()))
        assert cache.base > 0 and cache.evicted > 0


def test_an_int8_cache_keeps_group_query_attention_and_the_note_says_why(placeholder_model, tmp_path):
    """--kv-cache int8 is ONNX Runtime's GroupQueryAttention's own cache: the matmuls move, the attention stays."""
    config = edgemfm.ExportConfig(
        model=str(placeholder_model), device="host", precision="int4", kv_cache="int8", kernels="edgemfm",
        out=str(tmp_path / "b"),
    )  # fmt: skip
    bundle = edgemfm.export(config)
    m = read_manifest(bundle)
    layers = m.components["text_decoder"].kv_cache.layers
    assert m.components["text_decoder"].kernels == ("matmul_int4",)
    assert _ops(bundle / "text_decoder.onnx").get("GroupQueryAttention") == layers
    assert m.report.notes["text_decoder attention"] == (
        f"{layers} stay on ONNX Runtime's GroupQueryAttention (its cache is int8)"
    )
    assert len(list(edgemfm.load(bundle).generate_tokens("hello", max_new_tokens=4))) == 4


def test_a_device_without_a_compiler_refuses_the_bundle_in_one_line(bundles, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEMFM_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(BundleError) as error:
        edgemfm.load(bundles["edgemfm"])
    assert "\n" not in str(error.value) and "--kernels ort" in str(error.value)


def test_a_manifest_naming_an_unknown_kernel_is_refused(bundles, tmp_path):
    from edgemfm.bundle import seal

    copy = tmp_path / "b"
    shutil.copytree(bundles["edgemfm"], copy)
    m = read_manifest(copy)
    decoder = dataclasses.replace(m.components["text_decoder"], kernels=("rootkit",))
    seal(copy, dataclasses.replace(m, components={**m.components, "text_decoder": decoder}))
    with pytest.raises(
        BundleError,
        match=r"text_decoder\.kernels\[0\] 'rootkit' is not allowed; allowed: attention, matmul_f32, matmul_int4",
    ):
        read_manifest(copy)
    assert json.loads((copy / "manifest.json").read_text())["components"]["text_decoder"]["kernels"] == ["rootkit"]


@pytest.mark.parametrize(
    "options, refusal",
    [
        ({"kernels": "mlas"}, "kernels 'mlas' are not known; allowed: ort, edgemfm"),
        ({"format": "pte", "precision": "int4"}, "with format 'pte' is not supported; allowed: onnx"),
        ({"device": "jetson", "precision": "int4"}, "jetson-orin-nano-8gb runs on TensorrtExecutionProvider"),
        ({"device": "pixel8", "precision": "int4"}, "pixel-8-tensor-g3 runs on NnapiExecutionProvider"),
    ],
)
def test_an_export_the_kernel_cannot_serve_is_refused_before_any_work(options, refusal):
    with pytest.raises(InputError) as error:
        resolve(edgemfm.ExportConfig(**{"kernels": "edgemfm", **options}))
    assert refusal in str(error.value) and "\n" not in str(error.value)


def test_the_android_app_refuses_the_kernel(tmp_path, capsys):
    from edgemfm.cli import main

    app = tmp_path / "app" / "app" / "src" / "main"
    app.mkdir(parents=True)
    (app / "AndroidManifest.xml").write_text("<manifest/>")
    argv = ["export", "--device", "host", "--precision", "int4", "--kernels", "edgemfm"]
    assert main([*argv, "--out", str(tmp_path / "b"), "--app", str(tmp_path / "app")]) == 2
    assert "--kernels 'edgemfm' is not allowed with --app; allowed: ort" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


FAMILIES = ["MistralForCausalLM", "Qwen2ForCausalLM", "Phi3ForCausalLM", "GemmaForCausalLM", "Gemma2ForCausalLM",
            "Gemma3ForCausalLM"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("architecture", FAMILIES)
def test_every_family_answers_on_the_kernels_as_on_onnx_runtimes(architecture, tmp_path):
    """Each family's tiny model: the attention moves where the fusions made a GroupQueryAttention of a form the
    kernel takes (and the note says how many moved); at fp32 every MatMul moves to the fp32 kernel, with the same
    greedy tokens and the first logits within float rounding; at int4 every MatMulNBits moves, the first logits
    within 20 dB of MatMulNBits'."""
    from tiny_text import tiny_text_model

    model = tiny_text_model(architecture, tmp_path / "model")
    moved = {}
    for precision in ("fp32", "int4"):
        made = {k: _export(model, tmp_path / f"{precision}-{k}", precision, k) for k in ("ort", "edgemfm")}
        steps = {k: list(edgemfm.load(b).generate_steps("hello world", max_new_tokens=8)) for k, b in made.items()}
        first = {k: s[0][1].astype(np.float64) for k, s in steps.items()}
        m = read_manifest(made["edgemfm"])
        fused, ops = (
            _ops(made["ort"] / "text_decoder.onnx").get("GroupQueryAttention", 0),
            _ops(made["edgemfm"] / "text_decoder.onnx"),
        )
        assert ops.get("Attention", 0) + ops.get("GroupQueryAttention", 0) == fused
        assert ("text_decoder attention" in m.report.notes) == (fused > 0)
        assert ("attention" in m.components["text_decoder"].kernels) == (ops.get("Attention", 0) > 0)
        moved[precision] = ops.get("Attention", 0)
        if precision == "fp32":
            assert _weight_matmuls(made["edgemfm"] / "text_decoder.onnx") == 0 and ops["MatMulF32"] > 0
            assert [t for t, _ in steps["ort"]] == [t for t, _ in steps["edgemfm"]]
            np.testing.assert_allclose(first["edgemfm"], first["ort"], rtol=0, atol=1e-4 * np.abs(first["ort"]).max())
        else:
            assert "MatMulNBits" not in ops
            noise = ((first["ort"] - first["edgemfm"]) ** 2).sum()
            assert 10 * np.log10((first["ort"] ** 2).sum() / noise) >= 20.0
    assert moved["fp32"] == moved["int4"]  # the same attention form at either precision (Gemma's moves; the
    # others' tiny models keep theirs unfused or in a form the kernel refuses: a window, a softcap)
