"""`prune --data DIR` with a data folder of questions (finetune's train.jsonl): the text decoder is
calibrated and recovered on the model's own questions, templated as the runtime templates them,
with the media rows of their pictures spliced in, and continued by the unpruned model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from tiny_models import tiny_llama, tiny_llava
from tokenizers import Tokenizer

from edgemfm.cli import main
from edgemfm.pruners.prune import read_report

COLOURS = {"r": (200, 30, 30), "g": (30, 180, 40), "b": (30, 50, 210)}


def _questions(root: Path, per_colour: int = 2) -> Path:
    """train.jsonl and eval.jsonl: plain-colour pictures, one question; no .txt file."""
    (root / "images").mkdir(parents=True)
    for split in ("train", "eval"):
        rows = []
        for label, rgb in COLOURS.items():
            for i in range(per_colour):
                name = f"images/{split}-{label}-{i}.png"
                Image.new("RGB", (30, 30), tuple(min(255, c + 10 * i) for c in rgb)).save(root / name)
                rows.append({"image": name, "prompt": "What colour is it?", "answer": label})
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


pytestmark = pytest.mark.usefixtures("one_thread")


def test_questions_carry_their_media_rows_and_the_teachers_continuation(tmp_path):
    from edgemfm.exporters import capability, find_family
    from edgemfm.exporters.trainee import encode_media, load_trainee, read_examples, sequence
    from edgemfm.pruners.questions import question_sequences
    from edgemfm.pruners.recovery import RecoveryConfig

    source, data = tiny_llava(tmp_path / "llava"), _questions(tmp_path / "data")
    cap = capability(find_family(json.loads((source / "config.json").read_text())), "prunable")
    teacher = cap.stack(cap.load(source), "text_decoder").model
    config = RecoveryConfig(continuation=5)
    sequences, note = question_sequences(source, teacher, data, config, 4)
    assert len(sequences) == 4 and "4 questions of" in note and "train.jsonl" in note
    trainee, examples = load_trainee(source), read_examples(data, "train")
    feats = encode_media(trainee, sorted({(e.kind, e.media) for e in examples}), None, cache=None)
    prompts = {e.media: sequence(trainee, e, feats[e.media], with_answer=False).embeds for e in examples}
    for s in sequences:
        # the sequence starts with one question's prompt, its picture's rows included ...
        matches = [p for p in prompts.values() if torch.allclose(s[0, : p.shape[0]], p, atol=1e-6)]
        assert len(matches) == 1
        prompt = matches[0]
        assert 0 < s.shape[1] - prompt.shape[0] <= 5  # ... then the teacher's continuation
        with torch.no_grad():  # the first continued token is one the teacher finds likely there
            logits = teacher(inputs_embeds=prompt[None]).logits[0, -1]
            ids = torch.arange(logits.shape[0])
            rows = teacher.get_input_embeddings()(ids)
        token = int(torch.cdist(s[0, prompt.shape[0]][None], rows).argmin())
        assert torch.softmax(logits, -1)[token] > 1e-4
    first = next(iter(prompts.values()))
    assert all(p.shape == first.shape for p in prompts.values())
    assert sum(torch.equal(p, first) for p in prompts.values()) == 1  # each picture gives its own rows
    assert len({tuple(s[0, :3].flatten().tolist()) for s in sequences}) == 1  # same template start


def test_prune_recovers_on_the_questions_of_a_data_folder(tmp_path, capsys):
    source, data = tiny_llava(tmp_path / "llava"), _questions(tmp_path / "data")
    out = tmp_path / "pruned"
    argv = ["prune", "--model", str(source), "--out", str(out), "--mlp", "0.3", "--recover", "6", "--data", str(data)]
    assert main(argv) == 0, capsys.readouterr().err
    report = read_report(out)
    assert "questions of" in report.calibration.data and "with their media" in report.calibration.data
    assert report.calibration.items["text_decoder"] == "6 samples given by the caller"  # the 6 questions
    assert report.recovery.sequences == 6  # each continued by the teacher
    assert report.recovery.loss.last < report.recovery.loss.first


def test_questions_are_refused_for_a_model_without_media_prompts(tmp_path, capsys):
    source, data = tiny_llama(tmp_path / "llama"), _questions(tmp_path / "data")
    argv = ["prune", "--model", str(source), "--out", str(tmp_path / "o"), "--blocks", "1", "--data", str(data)]
    assert main(argv) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("edgemfm: error: --data train.jsonl:") and "allowed: a folder of .txt files" in line, line
    assert not (tmp_path / "o").exists()


def test_questions_continue_with_a_bundles_greedy_answers(tmp_path, placeholder_model, default_bundle):
    import edgemfm
    from edgemfm.exporters.trainee import load_trainee, read_examples
    from edgemfm.pruners.questions import question_sequences
    from edgemfm.pruners.recovery import RecoveryConfig

    data = _questions(tmp_path / "data")
    sequences, note = question_sequences(
        placeholder_model, None, data, RecoveryConfig(continuation=6), 6, answers=default_bundle
    )
    assert len(sequences) == 6 and note.endswith(f"continued by {default_bundle.name}'s greedy answers"), note
    pipe, trainee = edgemfm.load(default_bundle, threads=1), load_trainee(placeholder_model)
    ends = list(trainee.split.tokenizer.eos_token_ids)
    tails = set()
    for e in read_examples(data, "train"):
        ids = list(pipe.generate_tokens(e.prompt, images=[str(e.media)], max_new_tokens=6))
        ids += ends[:1] if len(ids) < 6 else []
        tails.add(tuple(trainee.embed(torch.tensor(ids)).flatten().tolist()))
    for s in sequences:  # each ends with the bundle's own greedy answer to one of the questions
        assert any(tuple(s[0, -len(t) // s.shape[2] :].flatten().tolist()) == t for t in tails)


def test_answers_need_questions_and_recovery_and_the_models_bundle(tmp_path, capsys, placeholder_model, default_bundle):
    data = _questions(tmp_path / "data")
    other = tiny_llava(tmp_path / "other")  # a checkpoint whose tokenizer is not the bundle's
    tokenizer = Tokenizer.from_file(str(other / "tokenizer.json"))
    tokenizer.add_tokens(["<other>"])
    tokenizer.save(str(other / "tokenizer.json"))
    answers = ["--answers", str(default_bundle)]
    cases = {
        "no recovery": (placeholder_model, ["--data", str(data), *answers], "allowed with --data QUESTIONS"),
        "no questions": (placeholder_model, ["--recover", "2", *answers], "allowed with --data QUESTIONS"),
        "no bundle": (
            placeholder_model,
            ["--data", str(data), "--recover", "2", "--answers", "none"],
            "no such bundle",
        ),
        "another model": (
            other,
            ["--data", str(data), "--recover", "2", *answers],
            "its tokenizer is not the checkpoint's",
        ),
    }
    for name, (model, extra, want) in cases.items():
        out = tmp_path / name.replace(" ", "-")
        assert main(["prune", "--model", str(model), "--blocks", "1", "--out", str(out), *extra]) == 2, name
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert line.startswith("edgemfm: error: --answers ") and want in line, line
        assert not out.exists()
