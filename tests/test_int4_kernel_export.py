"""`export --int4-kernel edgemfm`: an int4 bundle's MatMulNBits on edgemfm's own kernel (quantizers/native_int4.py,
runtimes/kernels/matmul_int4.cpp), its tied lookup on the same records, and the refusals around it."""

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


@pytest.fixture(scope="module")
def tied_model(tmp_path_factory):
    """A tiny Llama whose head is its embedding (hidden 128: a multiple of every int4 group)."""
    from tiny_text import tiny_text_model

    return tiny_text_model(
        "LlamaForCausalLM",
        tmp_path_factory.mktemp("tied") / "model",
        hidden_size=128,
        num_attention_heads=8,
        num_key_value_heads=4,
        tie_word_embeddings=True,
    )


@pytest.fixture(scope="module")
def bundles(tied_model, tmp_path_factory):
    """The int4 bundle on ONNX Runtime's MatMulNBits and on edgemfm's kernel."""
    out = tmp_path_factory.mktemp("int4")
    made = {}
    for kernel in ("ort", "edgemfm"):
        config = edgemfm.ExportConfig(
            model=str(tied_model), device="host", precision="int4", int4_kernel=kernel, out=str(out / kernel)
        )
        made[kernel] = edgemfm.export(config)
    return made


def _ops(path) -> dict[str, int]:
    model = onnx.load(str(path), load_external_data=False)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def test_every_int4_matmul_and_the_tied_lookup_move_to_the_kernel(bundles):
    ort_bundle, own = bundles["ort"], bundles["edgemfm"]
    before = _ops(ort_bundle / "text_decoder.onnx")
    after = _ops(own / "text_decoder.onnx")
    assert after.get("MatMulInt4") == before["MatMulNBits"] and "MatMulNBits" not in after
    assert _ops(own / "token_embedding.onnx") == {"GatherInt4": 1}
    m = read_manifest(own)
    assert {n: c.kernels for n, c in m.components.items()} == {
        "token_embedding": ("matmul_int4",),
        "text_decoder": ("matmul_int4",),
    }
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


def test_the_kernels_bundle_answers_as_the_matmulnbits_bundle_does(bundles):
    """The same integers with float16 scales: the first logits agree to 20 dB (measured 24.7 dB; int4 itself leaves
    this random model's logits 2.9 dB from its float ones, either kernel), and the greedy answers keep their
    first tokens (measured: 7 of 8 equal; a random model's logits are close together)."""
    prompt = "hello world"
    steps = {k: list(edgemfm.load(b).generate_steps(prompt, max_new_tokens=8)) for k, b in bundles.items()}
    first = {k: s[0][1].astype(np.float64) for k, s in steps.items()}
    noise = ((first["ort"] - first["edgemfm"]) ** 2).sum()
    assert 10 * np.log10((first["ort"] ** 2).sum() / noise) >= 20.0
    tokens = {k: [t for t, _ in s] for k, s in steps.items()}
    assert tokens["ort"][:4] == tokens["edgemfm"][:4]


def test_a_device_without_a_compiler_refuses_the_bundle_in_one_line(bundles, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEMFM_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(BundleError) as error:
        edgemfm.load(bundles["edgemfm"])
    assert "\n" not in str(error.value) and "--int4-kernel ort" in str(error.value)


def test_a_manifest_naming_an_unknown_kernel_is_refused(bundles, tmp_path):
    from edgemfm.bundle import seal

    copy = tmp_path / "b"
    shutil.copytree(bundles["edgemfm"], copy)
    m = read_manifest(copy)
    decoder = dataclasses.replace(m.components["text_decoder"], kernels=("rootkit",))
    seal(copy, dataclasses.replace(m, components={**m.components, "text_decoder": decoder}))
    with pytest.raises(BundleError, match=r"text_decoder\.kernels\[0\] 'rootkit' is not allowed; allowed: matmul_int4"):
        read_manifest(copy)
    assert json.loads((copy / "manifest.json").read_text())["components"]["text_decoder"]["kernels"] == ["rootkit"]


@pytest.mark.parametrize(
    "options, refusal",
    [
        ({"int4_kernel": "mlas"}, "int4 kernel 'mlas' is not known; allowed: ort, edgemfm"),
        ({"format": "pte", "precision": "int4"}, "with format 'pte' is not supported; allowed: onnx"),
        ({"precision": "int8"}, "precision 'int8' has none; allowed: int4, auto"),
        ({"device": "jetson", "precision": "int4"}, "jetson-orin-nano-8gb runs on TensorrtExecutionProvider"),
        ({"device": "pixel8", "precision": "int4"}, "pixel-8-tensor-g3 runs on NnapiExecutionProvider"),
    ],
)
def test_an_export_the_kernel_cannot_serve_is_refused_before_any_work(options, refusal):
    with pytest.raises(InputError) as error:
        resolve(edgemfm.ExportConfig(**{"int4_kernel": "edgemfm", **options}))
    assert refusal in str(error.value) and "\n" not in str(error.value)


def test_the_android_app_refuses_the_kernel(tmp_path, capsys):
    from edgemfm.cli import main

    app = tmp_path / "app" / "app" / "src" / "main"
    app.mkdir(parents=True)
    (app / "AndroidManifest.xml").write_text("<manifest/>")
    argv = ["export", "--device", "host", "--precision", "int4", "--int4-kernel", "edgemfm"]
    assert main([*argv, "--out", str(tmp_path / "b"), "--app", str(tmp_path / "app")]) == 2
    assert "--int4-kernel 'edgemfm' is not allowed with --app; allowed: ort" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
