"""Quantized ExecuTorch bundles (`--format pte --precision int8|int4`): the program's greedy tokens
equal those of the same model fake-quantized in PyTorch (exporters/pte_quantize.py applied to the
transformers model), the recipe and report say what was done, and a precision the pte preset
cannot run is refused in one line with nothing left behind.

The tiny model is SmolLM2's shape scaled down (hidden 128, 4 query heads over 2 KV heads) so the
preset's group of 64 divides every linear's input; the default suite exports int4, -m slow int8.
"""

from __future__ import annotations

import json

import pytest
import torch
from tiny_text import tiny_text_model

import edgemfm
from edgemfm.bundle import read_manifest
from edgemfm.cli import main

PROMPT = "Describe the picture."
TOKENS = 16
SHAPE = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=32)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_text_model("LlamaForCausalLM", tmp_path_factory.mktemp("models") / "tiny-llama", **SHAPE)


def _export(checkpoint, out, precision: str) -> int:
    argv = ["export", "--model", str(checkpoint), "--device", "pi5", "--format", "pte", "--precision", precision]
    return main([*argv, "--max-seq-len", "64", "--out", str(out)])


def _fake_quantized_tokens(checkpoint, pipe, precision: str) -> list[int]:
    """transformers' greedy answer from the model quantized in PyTorch exactly as the program's modules were."""
    from transformers import AutoModelForCausalLM

    from edgemfm.exporters.decoder import TokenEmbedding
    from edgemfm.exporters.pte_quantize import pte_recipe, quantize_module
    from edgemfm.profiles import load_profile

    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    recipe = pte_recipe(load_profile("pi5"), precision)
    table = TokenEmbedding(model.model.embed_tokens)
    quantize_module("token_embedding", table, recipe)
    quantize_module("text_decoder", model, recipe)
    model.model.embed_tokens = table.embed_tokens
    ids = pipe.prompt_ids(PROMPT)
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=TOKENS, do_sample=False)
    return [t for t in out[0, len(ids) :].tolist() if t not in pipe.manifest.tokenizer.eos_token_ids]


@pytest.mark.parametrize("precision", ["int4", pytest.param("int8", marks=pytest.mark.slow)])
def test_quantized_pte_tokens_equal_the_fake_quantized_model(checkpoint, tmp_path, precision):
    out = tmp_path / f"pte-{precision}"
    assert _export(checkpoint, out, precision) == 0
    manifest = read_manifest(out)
    bits = {"int4": 4, "int8": 8}[precision]
    spec = manifest.recipe.spec_for("text_decoder/language_model.layers.0.mlp.up_proj")
    assert (spec.bits, spec.group_size, spec.activation_bits) == (bits, 64 if bits == 4 else 0, 8)
    decoder = manifest.report.quantization["text_decoder"]
    assert decoder.quantized_nodes == {f"linear_8da{bits}w": 3 * 7 + 1}  # q k v o gate up down per layer, lm_head
    assert manifest.report.quantization["token_embedding"].quantized_nodes == {f"embedding_{bits}bit": 1}
    assert "quantized_decomposed_embedding" in json.dumps(
        manifest.report.delegation["token_embedding"].non_delegated_ops
    )
    pipe = edgemfm.load(out)
    ours = list(pipe.generate_tokens(PROMPT, max_new_tokens=TOKENS))
    assert len(ours) > 0 and ours == _fake_quantized_tokens(checkpoint, pipe, precision)


@pytest.mark.parametrize("precision", ["fp16", "auto"])
def test_a_precision_the_pte_preset_cannot_run_is_one_line_and_leaves_nothing(checkpoint, tmp_path, precision, capsys):
    out = tmp_path / "refused"
    assert _export(checkpoint, out, precision) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and precision in err and "allowed: fp32, int8, int4" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_table_whose_rows_the_group_does_not_divide_stays_float_and_is_named():
    """int4 tables are packed in whole groups of a row: a 84-wide table (a tiny model's) stays float, named."""
    from edgemfm.exporters.pte_quantize import pte_recipe, quantize_module
    from edgemfm.profiles import load_profile

    recipe = pte_recipe(load_profile("pi5"), "int4")
    odd, even = torch.nn.Sequential(torch.nn.Embedding(50, 84)), torch.nn.Sequential(torch.nn.Embedding(50, 128))
    report = quantize_module("token_embedding", odd, recipe)
    assert report.quantized_units == 0 and type(odd[0]) is torch.nn.Embedding
    assert report.float_units == {"0": "its 84-wide rows are not a multiple of the group size 64"}
    report = quantize_module("token_embedding", even, recipe)
    assert report.quantized_nodes == {"embedding_4bit": 1} and not report.float_units
