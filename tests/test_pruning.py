"""Structural pruning: real shape changes, exact parameter arithmetic, export parity, typed errors."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import tiny_llama, tiny_llava

import edgemfm
from edgemfm.cli import main
from edgemfm.pruners.prune import read_report
from edgemfm.pruners.structure import count_parameters, drop_blocks, find_decoder, keep_channels, keep_kv_groups
from edgemfm.report import Parameters

IDS = torch.tensor([[256, 72, 101, 108, 108, 111, 32, 116, 104, 101, 114, 101, 33]])


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


def _load(path):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(path).eval()


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS, use_cache=False).logits


# hidden 60, 4 layers, 6 query heads over 3 KV heads of width 10, MLP width 90
HIDDEN, LAYERS, HEADS, KV, D, MLP = 60, 4, 6, 3, 10, 90
PER_LAYER = HIDDEN * HEADS * D * 2 + HIDDEN * KV * D * 2 + 3 * HIDDEN * MLP + 2 * HIDDEN


@pytest.mark.parametrize(
    "flags, removed, shape",
    [
        (["--blocks", "2"], 2 * PER_LAYER, {"num_hidden_layers": 2}),
        # 0.34 of 3 KV heads is one: it leaves with its 2 query heads (q and o: 2*10*60 each; k, v: 10*60 each)
        (
            ["--heads", "0.34"],
            LAYERS * (2 * 2 * D * HIDDEN + 2 * D * HIDDEN),
            {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 10},
        ),
        # 0.2 of 90 channels is 18: rows of gate and up, columns of down
        (["--mlp", "0.2"], LAYERS * 18 * 3 * HIDDEN, {"intermediate_size": 72}),
    ],
)
def test_parameter_counts_drop_by_the_requested_amount(llama, tmp_path, flags, removed, shape, capsys):
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(llama), "--out", str(out), *flags]) == 0
    assert "parameters" in capsys.readouterr().out
    before, after = count_parameters(_load(llama)), _load(out)  # loads: the config matches every weight
    assert before - count_parameters(after) == removed
    config = json.loads((out / "config.json").read_text())
    assert {k: config[k] for k in shape} == shape
    report = read_report(out)
    assert report.parameters == Parameters(before=before, after=before - removed, removed=removed)
    assert (out / "tokenizer.json").is_file() and torch.isfinite(_logits(after)).all()


def test_slicing_equals_masking_and_keeping_all_changes_nothing(llama):
    """A sliced model computes what the original computes with the removed parts zeroed or skipped."""
    original = _load(llama)
    reference = _logits(original)

    same = _load(llama)
    dec = find_decoder(same)
    drop_blocks(dec, [])
    keep_kv_groups(dec, {i: range(KV) for i in range(LAYERS)})
    keep_channels(dec, {i: range(MLP) for i in range(LAYERS)})
    assert torch.equal(_logits(same), reference)  # pruning 0% is the identity, to the bit

    masked, pruned = _load(llama), _load(llama)
    with torch.no_grad():
        for layer in masked.model.layers:
            layer.self_attn.o_proj.weight[:, 2 * D : 4 * D] = 0  # query heads 2, 3 read KV head 1
            layer.mlp.down_proj.weight[:, ::5] = 0
    skip = masked.model.layers[2].register_forward_hook(
        lambda m, args, kwargs, out: args[0] if args else kwargs["hidden_states"], with_kwargs=True
    )
    dec = find_decoder(pruned)
    keep_kv_groups(dec, {i: [0, 2] for i in range(LAYERS)})
    keep_channels(dec, {i: [j for j in range(MLP) if j % 5] for i in range(LAYERS)})
    drop_blocks(dec, [2])
    diff = (_logits(masked) - _logits(pruned)).abs().max().item()
    skip.remove()
    assert diff < 1e-5
    assert (_logits(pruned) - reference).abs().max().item() > 1e-2  # and it did remove something


@pytest.mark.slow
def test_pruned_llava_exports_with_parity_and_matches_transformers(tmp_path):
    from transformers import LlavaForConditionalGeneration

    source, pruned, bundle = tiny_llava(tmp_path / "llava"), tmp_path / "llava-pruned", tmp_path / "bundle"
    assert (
        main(
            ["prune", "--model", str(source), "--out", str(pruned), "--blocks", "1", "--heads", "0.34", "--mlp", "0.3"]
        )
        == 0
    )
    text = json.loads((pruned / "config.json").read_text())["text_config"]
    assert (
        text["num_hidden_layers"],
        text["num_key_value_heads"],
        text["num_attention_heads"],
        text["intermediate_size"],
    ) == (2, 2, 4, 105)
    assert (
        main(["export", "--model", str(pruned), "--device", "host", "--out", str(bundle)]) == 0
    )  # parity is checked inside

    pipe = edgemfm.load(bundle)
    assert pipe.manifest.report.parity["text_decoder"].max_abs_diff < 1e-4
    pruning = pipe.manifest.report.pruning  # the bundle says what was pruned, where and why
    assert [s.granularity for s in pruning.stages] == ["blocks", "heads", "mlp"] and pruning.parameters.removed > 0
    ours = list(pipe.generate_tokens("Hello there", max_new_tokens=16))
    model = LlavaForConditionalGeneration.from_pretrained(pruned).eval()
    ids = pipe.prompt_ids("Hello there")
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=16, do_sample=False)
    theirs = [t for t in out[0, len(ids) :].tolist() if t not in pipe.manifest.tokenizer.eos_token_ids]
    assert len(ours) >= 8 and ours == theirs


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("models") / "tiny-gpt2"
    GPT2LMHeadModel(
        GPT2Config(n_embd=24, n_layer=1, n_head=2, vocab_size=260, n_positions=64, bos_token_id=0, eos_token_id=0)
    ).save_pretrained(path)
    return path


@pytest.mark.parametrize(
    "model, flags, message",
    [
        ("llama", ["--mlp", "1.5"], "--mlp 1.5 is outside (0, 1)"),
        ("llama", ["--heads", "-0.2"], "--heads -0.2 is outside (0, 1)"),
        ("llama", ["--mlp", "0"], "nothing to prune; pass --blocks N, --heads F or --mlp F"),
        ("llama", ["--blocks", "4"], "--blocks 4: the decoder has 4 blocks; allowed: 1 to 3"),
        (
            "llama",
            ["--heads", "0.1"],
            "--heads 0.1 removes 0 of 3 KV head groups per layer; allowed: fractions that remove 1 to 2",
        ),
        ("llama", ["--mlp", "0.2", "--data", "/nonexistent"], "calibration data '/nonexistent' is not a directory"),
        (
            "gpt2",
            ["--mlp", "0.2"],
            "unsupported architecture 'GPT2LMHeadModel'; supported: Idefics3ForConditionalGeneration, LlamaForCausalLM",
        ),
    ],
)
def test_bad_input_is_one_typed_line(request, tmp_path, model, flags, message, capsys):
    path = request.getfixturevalue(model)
    assert main(["prune", "--model", str(path), "--out", str(tmp_path / "o"), *flags]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]  # torch's import-time warnings may come first
    assert line.startswith("edgemfm: error: ") and message in line
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_existing_output_is_refused_without_force(llama, tmp_path, capsys):
    (tmp_path / "o").mkdir()
    assert main(["prune", "--model", str(llama), "--out", str(tmp_path / "o"), "--mlp", "0.2"]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert main(["prune", "--model", str(llama), "--out", str(tmp_path / "o"), "--mlp", "0.2", "--force"]) == 0
    assert json.loads((tmp_path / "o" / "config.json").read_text())["intermediate_size"] == 72
