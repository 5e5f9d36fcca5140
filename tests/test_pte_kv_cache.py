"""`export --format pte --kv-cache int8`: the program's static cache as int8 with a scale and zero point per token
and head, on edgemfm's own ops (exporters/llm_ops.py, runtimes/kernels/int8_cache.cpp): its greedy tokens, its
budget, its runtime, its sliding window, its refusals.

The tiny model is SmolLM2's shape scaled down (4 query heads over 2 KV heads of 32), exported at fp32 so the
cache's int8 is the only rounding between the program and transformers' float model. The rows that run the program
share one ~25 s export, in the default suite: the program runs native code built here.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

import numpy as np
import pytest
from tiny_text import tiny_text_model

import edgemfm
from edgemfm.bundle import read_manifest
from edgemfm.cli import main

PROMPT = "Describe the picture."
MAX_SEQ_LEN = 64
SHAPE = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=32)


def _export(checkpoint, out, *extra: str) -> int:
    argv = ["export", "--model", str(checkpoint), "--device", "pi5", "--format", "pte", "--precision", "fp32"]
    return main([*argv, "--max-seq-len", str(MAX_SEQ_LEN), "--kv-cache", "int8", *extra, "--out", str(out)])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_text_model("LlamaForCausalLM", tmp_path_factory.mktemp("models") / "tiny-llama", **SHAPE)


@pytest.fixture(scope="module")
def bundle(checkpoint, tmp_path_factory):
    if shutil.which(os.environ.get("CXX") or "c++") is None:
        pytest.skip("no C++ compiler: the int8 cache's kernels are built on the machine that runs them")
    out = tmp_path_factory.mktemp("bundles") / "pte-kv8"
    assert _export(checkpoint, out) == 0
    return out


def _transformers(checkpoint, ids: list[int], new: int) -> tuple[list[int], np.ndarray]:
    """transformers' float greedy answer to `ids` and its logits at the prompt's positions [len(ids), vocab]."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].numpy()
        out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=new, do_sample=False)
    return out[0, len(ids) :].tolist(), logits


def test_the_manifest_and_the_summary_say_the_cache_is_int8_per_token(bundle):
    kv = read_manifest(bundle).components["text_decoder"].kv_cache
    assert (kv.kind, kv.dtype, kv.scales, kv.max_seq_len) == ("static", "int8", "per_token", MAX_SEQ_LEN)
    ops = read_manifest(bundle).report.delegation["text_decoder"].non_delegated_ops
    assert ops.get("edgemfm_sdpa_int8_default") == 3 and "llama_custom_sdpa_default" not in ops


def test_int8_cache_greedy_tokens_equal_the_float_model_and_its_logits_are_close(checkpoint, bundle):
    """The float-cache program's tokens are transformers' (tests/test_pte.py); the int8 cache keeps them on a short
    prompt, and its prompt logits stay within 10% of the logits' range (measured 6.7% at the worst of 22 x 260:
    the query and each row of 32 are rounded to int8 per token)."""
    pipe = edgemfm.load(bundle)
    ids = pipe.prompt_ids(PROMPT)
    eos = pipe.manifest.tokenizer.eos_token_ids
    expected, reference = _transformers(checkpoint, ids, 16)
    ours = list(pipe.generate_tokens(PROMPT, max_new_tokens=16))
    assert len(ours) > 0 and ours == [t for t in expected if t not in eos][: len(ours)]
    decoder = pipe.decoder
    cache = decoder.new_cache()
    logits = decoder.prefill_rows(cache, [decoder.embed_ids(ids)], len(ids))
    span = float(reference.max() - reference.min())
    assert float(np.abs(logits - reference).max()) <= 0.1 * span


def _int8_reference(checkpoint, ids: list[int], eos: set[int], new: int) -> list[int]:
    """The greedy answer of the program's own PyTorch module: the static decoder on the int8 cache, whose ops run
    exporters/llm_ops.py's references (the same integer arithmetic as the program's kernels)."""
    import json

    import torch

    from edgemfm.exporters import find_family
    from edgemfm.exporters.executorch import _program_unit
    from edgemfm.model_source import load_checkpoint

    family = find_family(json.loads((checkpoint / "config.json").read_text()))
    split = family.split(load_checkpoint(family.load, checkpoint), checkpoint)
    decoder = _program_unit("text_decoder", split.units["text_decoder"], MAX_SEQ_LEN, "int8").module
    embed = split.units["token_embedding"].module
    tokens: list[int] = []
    with torch.no_grad():
        logits = decoder(embed(torch.tensor([ids])), torch.arange(len(ids)))
        while len(tokens) < new and int(logits[0, -1].argmax()) not in eos:
            tokens.append(int(logits[0, -1].argmax()))
            logits = decoder(embed(torch.tensor([tokens[-1:]])), torch.tensor([len(ids) + len(tokens) - 1]))
    return tokens


def _program_answers_as_its_module(checkpoint, bundle) -> None:
    pipe = edgemfm.load(bundle)
    eos = set(pipe.manifest.tokenizer.eos_token_ids)
    ours = list(pipe.generate_tokens(PROMPT, max_new_tokens=24))
    assert len(ours) >= 12 and ours == _int8_reference(checkpoint, pipe.prompt_ids(PROMPT), eos, 24)


def test_the_programs_greedy_tokens_equal_its_pytorch_modules_on_the_same_int8_arithmetic(checkpoint, bundle):
    _program_answers_as_its_module(checkpoint, bundle)


@pytest.mark.slow
@pytest.mark.parametrize(
    "architecture, shape",
    [
        ("Qwen2ForCausalLM", SHAPE),  # q/k/v biases
        ("Phi3ForCausalLM", SHAPE),  # fused qkv, partial rotary
        ("GemmaForCausalLM", {**SHAPE, "head_dim": 16}),  # embeddings scaled inside the model, head_dim 16
    ],
)
def test_each_text_familys_int8_program_answers_as_its_pytorch_module(architecture, shape, tmp_path):
    """Against transformers' float model such a tiny random model's answer drifts within 24 tokens (Phi-3 at the
    7th, Gemma at the 11th): the int8 cache rounds every row. Against its own module it must not."""
    checkpoint = tiny_text_model(architecture, tmp_path / "model", **shape)
    assert _export(checkpoint, tmp_path / "bundle") == 0
    _program_answers_as_its_module(checkpoint, tmp_path / "bundle")


def test_the_attention_shared_out_over_threads_answers_as_on_one(bundle):
    """edgemfm::sdpa_int8 gives each KV head to a task of ExecuTorch's threadpool: 2 threads, the same logits."""
    rows = []
    for threads in (1, 2):
        decoder = edgemfm.load(bundle, threads=threads).decoder
        rows.append(decoder.prefill_rows(decoder.new_cache(), [decoder.embed_ids(list(range(3, 40)))], 37))
    assert float(np.abs(rows[0] - rows[1]).max()) <= 1e-5 * float(np.abs(rows[0]).max())


def test_the_budget_counts_int8_rows_and_their_scales_a_bit_over_a_quarter_of_float32(bundle):
    from edgemfm.runtimes.budget import kv_cache_bytes

    decoder = read_manifest(bundle).components["text_decoder"]
    floats = dataclasses.replace(decoder, kv_cache=dataclasses.replace(decoder.kv_cache, dtype="", scales=""))
    d = decoder.kv_cache.head_dim
    # per position, head and key/value: d int8 values + a float32 scale + an int8 zero point, against 4 x d bytes
    assert kv_cache_bytes(decoder, 1000) * 4 * d == kv_cache_bytes(floats, 1000) * (d + 5)
    assert 0.25 < kv_cache_bytes(decoder, 1000) / kv_cache_bytes(floats, 1000) < 0.3


def test_a_stream_past_the_int8_cache_slides_as_a_fresh_program_and_runs_again_the_same(bundle):
    """The window slides by feeding the kept rows again (runtimes/static_cache.py): the program writes their int8
    rows and scales anew, so its next logits are those of a fresh program fed the kept rows, and the buffers'
    stale rows past them do not reach the next call or the next generation."""
    pipe = edgemfm.load(bundle)
    decoder, cache = pipe.decoder, pipe.decoder.new_cache()
    fed = pipe.prompt_ids("Hello there")
    logits = decoder.prefill(cache, [decoder.embed_ids(fed)])
    while not cache.slides:
        fed.append(int(np.argmax(logits)))
        logits = decoder.run(cache, decoder.embed_ids(fed[-1:]))[-1]
    sinks, recent = pipe.streaming.sink_tokens, (MAX_SEQ_LEN - pipe.streaming.sink_tokens - 1) // 2
    kept = fed[:sinks] + fed[-1 - recent :]  # the sinks, the recent rows that fit and the newest token
    fresh = edgemfm.load(bundle).decoder
    expected = fresh.prefill(fresh.new_cache(), [fresh.embed_ids(kept)])
    assert cache.length == len(kept) and float(np.abs(logits - expected).max()) <= 1e-4 * np.abs(expected).max()
    # a random model's greedy path may reach its end-of-sequence id anywhere: this stream must pass the cache
    tokenizer = dataclasses.replace(pipe.manifest.tokenizer, eos_token_ids=())
    pipe.manifest = dataclasses.replace(pipe.manifest, tokenizer=tokenizer)
    first = list(pipe.generate_tokens("Hello there", max_new_tokens=3 * MAX_SEQ_LEN))
    assert len(first) == 3 * MAX_SEQ_LEN
    assert list(pipe.generate_tokens("Hello there", max_new_tokens=3 * MAX_SEQ_LEN)) == first
    short = list(pipe.generate_tokens(PROMPT, max_new_tokens=8))
    assert short == list(edgemfm.load(bundle).generate_tokens(PROMPT, max_new_tokens=8))


def test_speculative_rollbacks_on_the_int8_cache_keep_the_plain_answer(bundle):
    """Prompt lookup proposes runs of the prompt; each rejection moves the position back, and the next call
    overwrites the rejected int8 rows and their scales."""
    prompt, new = "one two one two one", 12
    pipe = edgemfm.load(bundle)
    assert len(pipe.prompt_ids(prompt)) + new <= MAX_SEQ_LEN
    plain = list(pipe.generate_tokens(prompt, max_new_tokens=new))
    drafted = list(edgemfm.load(bundle, draft="prompt").generate_tokens(prompt, max_new_tokens=new))
    assert len(plain) > 0 and drafted == plain


def test_an_int8_cache_the_decoders_attention_cannot_take_is_one_line_and_leaves_nothing(tmp_path, capsys):
    """A sliding window shorter than the cache keeps the masked float path, which has no int8 attention."""
    checkpoint = tiny_text_model("MistralForCausalLM", tmp_path / "model", **SHAPE)
    capsys.readouterr()  # the checkpoint's own progress bars
    out = tmp_path / "refused"
    assert _export(checkpoint, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a sliding window of 6 positions" in err
    assert "allowed: --kv-cache float, or --format onnx" in err
    assert not out.exists()


def test_an_int8_cache_on_a_head_dim_the_layout_cannot_split_is_one_line_and_leaves_nothing(tmp_path, capsys):
    """The cache stores 4 dims of a head together (runtimes/kernels/int8_cache.cpp): a head_dim of 14 is refused."""
    checkpoint = tiny_text_model("LlamaForCausalLM", tmp_path / "model")  # 84 hidden over 6 heads
    capsys.readouterr()
    out = tmp_path / "refused"
    assert _export(checkpoint, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "head_dim is 14" in err and "allowed: --kv-cache float" in err
    assert not out.exists()


def test_an_int8_cache_export_on_a_machine_without_a_compiler_is_one_line_and_leaves_nothing(
    checkpoint, tmp_path, capsys, monkeypatch
):
    """The kernels are built before the export's work: a missing compiler is refused up front, in one line."""
    from edgemfm.exporters import executorch

    def captured(*args):
        raise AssertionError("the export captured a component before the refusal")

    monkeypatch.setattr(executorch, "_capture", captured)
    monkeypatch.setenv("CXX", "no-such-compiler")
    monkeypatch.setenv("EDGEMFM_CACHE", str(tmp_path / "cache"))
    capsys.readouterr()
    out = tmp_path / "refused"
    assert _export(checkpoint, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no-such-compiler" in err and "--kv-cache float" in err
    assert not out.exists() and not (tmp_path / "cache").exists()
