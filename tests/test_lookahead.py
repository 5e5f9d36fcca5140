"""`edgemfm lookahead` and `export --lookahead`: a head in the decoder graph proposes the token after next,
and `--draft lookahead` checks its proposals in the target's own calls, keeping greedy decoding's tokens."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from test_pruning_questions import _questions

import edgemfm
from edgemfm.cli import main
from edgemfm.errors import InputError
from edgemfm.runtimes.lookahead import LookaheadDraft, _Lookahead
from edgemfm.runtimes.prompt_lookup import DRAFT_K

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ("What colour is it?", "Describe the picture.", "What is in it?")


@pytest.fixture(scope="module")
def head(tmp_path_factory, placeholder_model, default_bundle) -> Path:
    """A head trained for the placeholder model on its default bundle's answers (6 questions, 24-token answers, 120 steps)."""
    root = tmp_path_factory.mktemp("lookahead")
    data = _questions(root / "data")
    out = root / "placeholder.lookahead.safetensors"
    argv = ["lookahead", "--model", str(placeholder_model), "--data", str(data), "--answers", str(default_bundle)]
    assert main([*argv, "--out", str(out), "--steps", "120", "--vocab", "64", "--continuation", "24"]) == 0
    return out


@pytest.fixture(scope="module")
def lookahead_bundle(tmp_path_factory, placeholder_model, head) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "placeholder-lookahead"
    argv = [
        "export",
        "--device",
        "host",
        "--model",
        str(placeholder_model),
        "--lookahead",
        str(head),
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    return out


def test_the_head_learns_the_bundles_answers(head):
    from edgemfm.lookahead import read_about

    report = read_about(head)["report"]
    assert report["loss"]["last"] < report["loss"]["first"]
    assert report["accuracy"]["positions"] > 0 and "greedy answers" in report["data"]
    assert (
        report["config"]["vocab"] == 64 and report["config"]["steps"] == 120 and report["config"]["continuation"] == 24
    )


def test_held_out_questions_are_whole_prompts_where_there_are_several():
    from types import SimpleNamespace

    from edgemfm.lookahead import _held_out

    answered = [(SimpleNamespace(prompt=p), None, None) for p in "abcdefghij" * 3]
    assert {e.prompt for e, _, _ in _held_out(answered, 0.2)} == {"i", "j"}  # every picture of two prompts
    assert len(_held_out(answered, 0.2)) == 6
    one = [(SimpleNamespace(prompt="a"), None, None) for _ in range(10)]
    assert _held_out(one, 0.2) == one[8:]  # one prompt: its last questions


def test_the_graph_proposes_what_the_torch_head_proposes(lookahead_bundle, placeholder_model, head):
    """The exported decoder's `lookahead` output at every position is the head's proposal on the float decoder's
    hidden state and logits there, in PyTorch."""
    from edgemfm.exporters.lookahead import read_head
    from edgemfm.exporters.trainee import load_trainee

    manifest = json.loads((lookahead_bundle / "manifest.json").read_text())
    decoder = manifest["components"]["text_decoder"]
    assert decoder["outputs"][-1]["name"] == "lookahead" and decoder["outputs"][-1]["dtype"] == "int64"
    pipe = edgemfm.load(lookahead_bundle, threads=1)
    ids = pipe.tokenizer.encode("a red circle beside a blue square, and then").ids
    embeds = pipe.decoder.embed_ids(ids)
    logits = pipe.decoder.run(pipe.decoder.new_cache(), embeds)
    module = load_trainee(placeholder_model).decoder
    la = read_head(head, module)
    with torch.no_grad():
        hidden = module.language_model(inputs_embeds=torch.from_numpy(embeds), use_cache=False).last_hidden_state
        want = la(hidden, module.lm_head(hidden))[0].numpy()
    assert np.array_equal(logits.argmax(-1), module.lm_head(hidden)[0].argmax(-1).numpy())
    assert np.array_equal(pipe.decoder.lookahead, want)
    assert len(set(want.tolist())) > 1  # not one constant token


def test_lookahead_drafting_keeps_the_targets_tokens(lookahead_bundle, picture):
    alone = edgemfm.load(lookahead_bundle, threads=1)
    drafted = edgemfm.load(lookahead_bundle, threads=1, draft="lookahead", draft_k=1)
    drafted.draft = LookaheadDraft(drafted, lookup=False)  # the head's proposals alone
    wants = {prompt: list(alone.generate_tokens(prompt, images=[picture], max_new_tokens=24)) for prompt in PROMPTS}
    proposed = accepted = 0
    for prompt, want in wants.items():
        assert list(drafted.generate_tokens(prompt, images=[picture], max_new_tokens=24)) == want
        s = drafted.speculation
        assert s["target_calls"] - 1 <= s["proposed"] <= s["target_calls"]  # k = 1: one a call (the last may be cut)
        proposed, accepted = proposed + s["proposed"], accepted + s["accepted"]
    assert 0 < accepted < proposed  # both the accepted and the rejected path ran
    with_lookup = edgemfm.load(lookahead_bundle, threads=1, draft="lookahead", draft_k=4)
    by_cost = edgemfm.load(lookahead_bundle, threads=1, draft="lookahead")
    counts = {"proposed": 0, "accepted": 0, "target_calls": 0}
    for prompt, want in wants.items():
        assert list(with_lookup.generate_tokens(prompt, images=[picture], max_new_tokens=24)) == want
        counts = {key: n + with_lookup.speculation[key] for key, n in counts.items()}
        assert list(by_cost.generate_tokens(prompt, images=[picture], max_new_tokens=24)) == want
        assert max(by_cost.speculation["k"]) <= DRAFT_K
    assert counts["proposed"] > counts["target_calls"]  # calls of several proposals: the lookup's (the head's is one)
    assert 0 < counts["accepted"] < counts["proposed"]


def test_prompt_lookup_proposes_first_and_the_head_where_it_finds_nothing():
    decoder = SimpleNamespace(lookahead=np.array([70, 71, 72]))  # the last call's proposals, by row
    proposer = _Lookahead(decoder, [5, 6, 7, 8])  # the prompt's ids
    assert proposer.propose([9], 3, eos=[]) == [72]  # 9 was not seen before: the head, at the prompt's last row
    proposer.forget([72], 0)  # rejected: the target's token came from row 0
    assert proposer.propose([6], 3, eos=[]) == [7, 8, 9]  # what followed 6 before
    proposer.forget([7, 8, 9], 1)  # 7 accepted: it joins the history, and the head's row is 1
    assert proposer.propose([4], 3, eos=[]) == [71]  # 4 is new: the head again
    proposer.forget([71], 1)
    proposer.catch_up([6, 7])  # plain steps: the history takes them
    assert proposer.propose([8], 2, eos=[9]) == [9]  # what followed 6, 7, 8, cut at the end token
    assert _Lookahead(decoder, None).propose([6], 3, eos=[]) == [72]  # without lookup: the head alone


def test_the_int4_head_is_quantized_with_the_decoder(tmp_path, capsys, placeholder_model, head):
    out = tmp_path / "int4"
    argv = ["export", "--device", "host", "--model", str(placeholder_model), "--precision", "int4"]
    assert main([*argv, "--lookahead", str(head), "--out", str(out)]) == 0
    assert "lookahead head: each decoder position also proposes" in capsys.readouterr().out
    graph = onnx.load(str(out / "text_decoder.onnx"), load_external_data=False).graph
    ops = [n.op_type for n in _after_logits(graph)]  # the head: everything computed from the target's logits
    assert ops.count("MatMulNBits") == 3 and ops.count("GatherBlockQuantized") == 1, ops  # up, down, out; embed
    assert not {"MatMul", "FusedMatMul", "Gemm"} & set(ops), ops
    pipe = edgemfm.load(out, threads=1, draft="lookahead")
    alone = edgemfm.load(out, threads=1)
    assert list(pipe.generate_tokens(PROMPTS[0], max_new_tokens=16)) == list(
        alone.generate_tokens(PROMPTS[0], max_new_tokens=16)
    )


def _after_logits(graph) -> list:
    """The nodes that read the logits output, directly or through others."""
    seen, found = {"logits"}, []
    for node in graph.node:  # topologically sorted
        if seen & set(node.input):
            found.append(node)
            seen |= set(node.output)
    return found


def test_bad_heads_and_drafts_are_refused_in_one_line(
    tmp_path, capsys, placeholder_model, default_bundle, head, tied_model, tiny_whisper_checkpoint
):
    data = _questions(tmp_path / "data")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    export = ["export", "--device", "host", "--model"]
    cases = {
        "no head file": ([*export, str(placeholder_model), "--lookahead", str(tmp_path / "none")], "no such file"),
        "not safetensors": ([*export, str(placeholder_model), "--lookahead", str(junk)], "is not a safetensors file"),
        "not a head": ([*export, str(placeholder_model), "--lookahead", str(plain)], "is not a lookahead head"),
        "another model's": (
            [*export, str(tied_model), "--lookahead", str(head)],
            "allowed: a head trained on this model",
        ),
        "pte": ([*export, str(placeholder_model), "--format", "pte", "--lookahead", str(head)], "allowed: onnx"),
        "encoder-decoder": ([*export, str(tiny_whisper_checkpoint), "--lookahead", str(head)], "no plain text head"),
    }
    for name, (argv, want) in cases.items():
        out = tmp_path / name.replace(" ", "-")
        assert main([*argv, "--out", str(out)]) == 2, name
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert line.startswith("edgemfm: error: ") and want in line, (name, line)
        assert not out.exists()
    train = ["lookahead", "--model", str(placeholder_model), "--steps", "2"]
    cases = {
        "no questions": ([*train, "--data", str(tmp_path), "--answers", str(default_bundle)], "no train.jsonl"),
        "no bundle": ([*train, "--data", str(data), "--answers", str(tmp_path / "none")], "no such bundle"),
        "exists": ([*train, "--data", str(data), "--answers", str(default_bundle)], "exists; allowed"),
        "no model": (
            ["lookahead", "--model", str(tmp_path / "none"), "--data", str(data), "--answers", str(default_bundle)],
            "does not exist, nor is it a Hugging Face Hub id",
        ),
    }
    for name, (argv, want) in cases.items():
        out = head if name == "exists" else tmp_path / f"{name}.safetensors"
        before = out.read_bytes() if out.exists() else None
        assert main([*argv, "--out", str(out)]) == 2, name
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert line.startswith("edgemfm: error: ") and want in line, (name, line)
        assert (out.read_bytes() if out.exists() else None) == before
    with pytest.raises(InputError, match="has no lookahead head; allowed: a bundle exported with --lookahead"):
        edgemfm.load(default_bundle, draft="lookahead")
