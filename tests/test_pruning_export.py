"""`export --prune` and encoder pruning: pruned configs load in transformers, parameter counts drop
by exactly the requested amount, and the exported graphs match the pruned PyTorch model."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_audio import tiny_qwen2_audio, tiny_whisper
from tiny_models import tiny_idefics3, tiny_llama, tiny_llava

import edgemfm
from edgemfm.cli import main
from edgemfm.pruners.prune import read_report
from edgemfm.pruners.structure import count_parameters

# tiny_llama: hidden 60, 4 layers, 6 query heads over 3 KV heads of width 10, MLP width 90
HIDDEN, LAYERS, D, MLP = 60, 4, 10, 90


def _load(path):
    import transformers

    arch = json.loads((path / "config.json").read_text())["architectures"][0]
    return getattr(transformers, arch).from_pretrained(path).eval()


def test_export_prune_matches_the_pruned_model_and_reports_what_went(tmp_path, capsys):
    source, bundle, pruned = tiny_llama(tmp_path / "llama"), tmp_path / "bundle", tmp_path / "pruned"
    spec = "heads=0.34,mlp=0.2"
    assert main(["export", "--model", str(source), "--device", "host", "--out", str(bundle), "--prune", spec]) == 0
    printed = capsys.readouterr().out
    assert "pruned llama" in printed and "parameters" in printed
    pipe = edgemfm.load(bundle)
    report = pipe.manifest.report
    assert report.parity["text_decoder"].max_abs_diff < 1e-4  # against the pruned model the exporter loaded
    # 1 of 3 KV groups with its 2 query heads (q, o: 2*10*60; k, v: 10*60) and 18 of 90 channels (3 x 60 each), per layer
    removed = LAYERS * (2 * 2 * D * HIDDEN + 2 * D * HIDDEN) + LAYERS * 18 * 3 * HIDDEN
    assert report.pruning.parameters.removed == removed
    assert report.pruning.parameters.before == count_parameters(_load(source))
    assert [(s.component, s.granularity, s.count) for s in report.pruning.stages] == [
        ("text_decoder", "heads", 1),
        ("text_decoder", "mlp", 18),
    ]
    for s in report.pruning.stages:  # why: the least important went, so less than its share of the score
        fraction = s.count / {"heads": 3, "mlp": MLP}[s.granularity]
        assert s.why and s.summary.removed_mean < s.summary.kept_mean and s.summary.removed_share < fraction
        assert s.parameters_removed > 0
    assert pipe.manifest.components["text_decoder"].kv_cache.kv_heads == 2

    # the same spec through `edgemfm prune` (deterministic): the bundle's greedy tokens equal transformers'
    assert main(["prune", "--model", str(source), "--out", str(pruned), "--heads", "0.34", "--mlp", "0.2"]) == 0
    model = _load(pruned)
    assert count_parameters(model) == count_parameters(_load(source)) - removed
    ids = pipe.prompt_ids("Hello there")
    ours = list(pipe.generate_tokens("Hello there", max_new_tokens=12))
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=12, do_sample=False)
    theirs = [t for t in out[0, len(ids) :].tolist() if t not in pipe.manifest.tokenizer.eos_token_ids]
    assert len(ours) >= 6 and ours == theirs


def _encoder_removed(model, stack_of, blocks: int, channels: int) -> int:
    """Parameters of `blocks` whole layers, plus `channels` fc1 rows (weight and bias) and fc2 columns in each layer left."""
    layers = stack_of(model)
    per_layer = count_parameters(layers[0])
    fc1 = layers[0].mlp.fc1 if hasattr(layers[0], "mlp") else layers[0].fc1
    return blocks * per_layer + (len(layers) - blocks) * channels * (2 * fc1.in_features + 1)


ENCODERS = {
    # builder, component, spec, how to reach the stack's layers, config fields (path, value) after pruning
    "idefics3": (
        tiny_idefics3,
        "vision_encoder",
        "blocks=1,mlp=0.3",
        lambda m: m.model.vision_model.encoder.layers,
        {("vision_config", "num_hidden_layers"): 1, ("vision_config", "intermediate_size"): 42},
    ),
    "qwen2_audio": (
        tiny_qwen2_audio,
        "audio_encoder",
        "blocks=1,mlp=0.3",
        lambda m: m.model.audio_tower.layers,
        {("audio_config", "encoder_layers"): 1, ("audio_config", "encoder_ffn_dim"): 70},
    ),
    "whisper": (
        tiny_whisper,
        "audio_encoder",
        "blocks=1,mlp=0.2",
        lambda m: m.model.encoder.layers,
        {(None, "encoder_layers"): 1, (None, "encoder_ffn_dim"): 120, (None, "decoder_ffn_dim"): 150},
    ),
    # the tiny tower has 2 layers and LLaVA reads hidden_states[-2]: its last layer is protected, so MLP only
    "llava": (
        tiny_llava,
        "vision_encoder",
        "mlp=0.3",
        lambda m: m.model.vision_tower.encoder.layers,
        {("vision_config", "num_hidden_layers"): 2, ("vision_config", "intermediate_size"): 42},
    ),
}


@pytest.mark.parametrize(
    "family",
    [
        "idefics3",
        pytest.param("qwen2_audio", marks=pytest.mark.slow),
        pytest.param("whisper", marks=pytest.mark.slow),
        pytest.param("llava", marks=pytest.mark.slow),
    ],
)
def test_encoder_pruning_loads_shrinks_and_exports_with_parity(tmp_path, family):
    build, component, spec, layers_of, fields = ENCODERS[family]
    source, pruned, bundle = build(tmp_path / family), tmp_path / "pruned", tmp_path / "bundle"
    counts = dict(item.split("=") for item in spec.split(","))
    flags = [f for k, v in counts.items() for f in (f"--{k}", v)]
    assert main(["prune", "--model", str(source), "--out", str(pruned), "--component", component, *flags]) == 0
    original, model = _load(source), _load(pruned)  # loads: the rewritten config matches every weight
    config = json.loads((pruned / "config.json").read_text())
    assert {(sub, name): (config[sub] if sub else config)[name] for (sub, name) in fields} == fields
    width = fields[next(k for k in fields if "ffn" in k[1] or "intermediate" in k[1])]
    channels = (
        getattr(original.config, "audio_config", None)
        or getattr(original.config, "vision_config", None)
        or original.config
    )
    full = getattr(channels, "encoder_ffn_dim", None) or channels.intermediate_size
    expected = _encoder_removed(original, layers_of, int(counts.get("blocks", 0)), full - width)
    assert count_parameters(original) - count_parameters(model) == expected
    report = read_report(pruned)
    assert {s.component for s in report.stages} == {component} and report.calibration.items[component].startswith(
        "built-in"
    )

    assert (
        main(["export", "--model", str(pruned), "--device", "host", "--out", str(bundle)]) == 0
    )  # parity is checked inside
    parity = edgemfm.load(bundle).manifest.report.parity
    assert parity[component].max_abs_diff <= parity[component].tolerance * parity[component].scale


def test_encoder_heads_and_unknown_components_are_refused_in_one_line(tmp_path, capsys):
    source = tiny_llava(tmp_path / "llava")
    cases = [
        (
            ["prune", "--component", "vision_encoder", "--heads", "0.34"],
            "--heads on the vision_encoder: its attention derives head_dim",
        ),
        (
            ["prune", "--component", "vision_encoder", "--blocks", "1"],
            "--blocks 1: the vision_encoder has 2 blocks, the last 1 protected",
        ),
        (
            ["prune", "--component", "projector", "--mlp", "0.2"],
            "component 'projector' cannot be pruned; allowed: text_decoder, vision_encoder, audio_encoder",
        ),
        (["export", "--device", "host", "--prune", "mlp=lots"], "--prune 'mlp=lots': 'mlp=lots' is not KEY=VALUE"),
        (
            ["export", "--device", "host", "--prune", "audio_encoder:mlp=0.2"],
            "unsupported architecture 'LlavaForConditionalGeneration (audio_encoder)'",
        ),
    ]
    for argv, message in cases:
        assert main([*argv, "--model", str(source), "--out", str(tmp_path / "o")]) == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert line.startswith("edgemfm: error: ") and message in line, line
        assert not (tmp_path / "o").exists()  # nothing half-written


@pytest.mark.slow
def test_recovery_distils_the_pruned_decoder_towards_the_unpruned_one_repeatably(tmp_path):
    from edgemfm.pruners.importance import read_texts
    from edgemfm.pruners.prune import PruneConfig, prune_model
    from edgemfm.pruners.recovery import RecoveryConfig, _kl, distil, teacher_sequences

    source = tiny_llama(tmp_path / "llama")
    from transformers import AutoTokenizer

    tokenizer, teacher, texts = AutoTokenizer.from_pretrained(source), _load(source), read_texts(None)[:8]
    config = RecoveryConfig(steps=24, lr=1e-3, continuation=8)
    sequences = teacher_sequences(teacher, tokenizer, texts, config)
    assert [s.shape[1] for s in sequences] == [len(tokenizer(t)["input_ids"][:128]) + 8 for t in texts]

    def gap(model) -> float:  # KL(teacher || model) over every sequence
        with torch.no_grad():
            return sum(_kl(teacher(input_ids=s).logits, model(input_ids=s).logits).item() for s in sequences) / len(
                sequences
            )

    students = []
    for _ in range(2):
        student = _load(source)
        prune_model(student, tokenizer, PruneConfig(mlp=0.3), texts)
        before, embedding = gap(student), student.get_input_embeddings().weight.clone()
        report = distil(student, teacher, tokenizer, texts, config, sequences=sequences)
        students.append(student)
        assert gap(student) < 0.7 * before  # the distance to the unpruned model shrinks
        assert report.loss.last < report.loss.first and report.config["steps"] == 24
        assert torch.equal(student.get_input_embeddings().weight, embedding)  # only the decoder layers train
    for a, b in zip(students[0].parameters(), students[1].parameters()):
        assert torch.equal(a, b)  # seeded: the same run gives the same weights


def test_embedded_calibration_and_recovery_equal_the_token_id_paths(tmp_path):
    """A multimodal model calibrates and distils on embeddings (media rows spliced in): given the
    embeddings of the same token ids, `prune_model(calls=...)` removes the same channels and
    `distil` on float sequences trains the same weights as on the ids."""
    from edgemfm.pruners.importance import calibration_samples, read_texts
    from edgemfm.pruners.prune import PruneConfig, prune_model
    from edgemfm.pruners.recovery import RecoveryConfig, distil, teacher_sequences

    source = tiny_llama(tmp_path / "llama")
    from transformers import AutoTokenizer

    tokenizer, teacher, texts = AutoTokenizer.from_pretrained(source), _load(source), read_texts(None)[:3]
    config = RecoveryConfig(steps=4, lr=1e-3, continuation=4)
    ids = teacher_sequences(teacher, tokenizer, texts, config)
    with torch.no_grad():
        embedded = [teacher.get_input_embeddings()(s) for s in ids]
        samples = [teacher.get_input_embeddings()(s) for s in calibration_samples(tokenizer, texts)]
    by_ids, by_embeddings = _load(source), _load(source)
    a = prune_model(by_ids, tokenizer, PruneConfig(blocks=1, mlp=0.3), texts)
    b = prune_model(
        by_embeddings,
        tokenizer,
        PruneConfig(blocks=1, mlp=0.3),
        [],
        calls=[lambda x=x: by_embeddings(inputs_embeds=x, use_cache=False) for x in samples],
    )
    assert [s.removed for s in a.stages] == [s.removed for s in b.stages]
    assert b.calibration.items["text_decoder"] == f"{len(samples)} samples given by the caller"
    distil(by_ids, teacher, tokenizer, texts, config, sequences=ids)
    report = distil(by_embeddings, teacher, tokenizer, [], config, sequences=embedded)
    assert report.tokens == sum(s.shape[1] for s in ids)
    for p, q in zip(by_ids.parameters(), by_embeddings.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_recovery_with_labels_also_learns_the_true_tokens(tmp_path):
    """`label_weight` adds cross-entropy on labelled tokens to the KL: labels the teacher does not
    predict (here a fixed token after every sequence) are learnt only when it is on."""
    from edgemfm.errors import InputError
    from edgemfm.pruners.importance import read_texts
    from edgemfm.pruners.prune import PruneConfig, prune_model
    from edgemfm.pruners.recovery import RecoveryConfig, distil, teacher_sequences

    source = tiny_llama(tmp_path / "llama")
    from transformers import AutoTokenizer

    tokenizer, teacher, texts = AutoTokenizer.from_pretrained(source), _load(source), read_texts(None)[:4]
    sequences = [
        torch.cat([s, torch.tensor([[7]])], 1)
        for s in teacher_sequences(teacher, tokenizer, texts, RecoveryConfig(continuation=4))
    ]
    labels = [torch.tensor([-100] * (s.shape[1] - 1) + [7]) for s in sequences]

    def label_loss(model) -> float:  # cross-entropy of the labelled last token, over every sequence
        with torch.no_grad():
            return (
                sum(
                    torch.nn.functional.cross_entropy(model(input_ids=s).logits[0, -2:-1], torch.tensor([7])).item()
                    for s in sequences
                )
                / 4
            )

    losses = {}
    for weight in (0.0, 1.0):
        student = _load(source)
        prune_model(student, tokenizer, PruneConfig(mlp=0.3), texts)
        distil(
            student,
            teacher,
            tokenizer,
            texts,
            RecoveryConfig(steps=16, lr=1e-3, label_weight=weight),
            sequences=sequences,
            labels=labels,
        )
        losses[weight] = label_loss(student)
    assert losses[1.0] < 0.5 * losses[0.0], losses
    with pytest.raises(InputError, match="label weight 1 needs one label tensor per sequence"):
        distil(student, teacher, tokenizer, texts, RecoveryConfig(steps=1, label_weight=1.0), sequences=sequences)


def test_whisper_decoder_loses_blocks_and_channels_and_loads(tmp_path, capsys):
    source, pruned = tiny_whisper(tmp_path / "whisper"), tmp_path / "pruned"
    assert main(["prune", "--model", str(source), "--out", str(pruned), "--blocks", "1", "--mlp", "0.2"]) == 0
    original, model = _load(source), _load(pruned)  # loads: the rewritten config matches every weight
    config = json.loads((pruned / "config.json").read_text())
    fields = ("decoder_layers", "decoder_ffn_dim", "encoder_layers", "encoder_ffn_dim")
    assert {k: config[k] for k in fields} == {
        "decoder_layers": 1,
        "decoder_ffn_dim": 120,
        "encoder_layers": 2,
        "encoder_ffn_dim": 150,
    }
    expected = _encoder_removed(original, lambda m: m.model.decoder.layers, 1, 30)  # fc1/fc2 as in the encoders
    assert count_parameters(original) - count_parameters(model) == expected
    report = read_report(pruned)
    assert {s.component for s in report.stages} == {"text_decoder"}
    assert "cross-attending to built-in" in report.calibration.items["text_decoder"]
    tokens = model.generate(input_features=torch.randn(1, 80, 3000), max_new_tokens=3)  # self and cross caches
    assert tokens.shape[1] >= 1


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--mlp", "0.2", "--recover", "4"], "--recover 4: whisper is an encoder-decoder"),
        (["--heads", "0.5"], "--heads on the text_decoder"),
    ],
)
def test_whisper_decoder_refusals_name_what_is_allowed(tmp_path, capsys, flags, message):
    source = tiny_whisper(tmp_path / "whisper")
    assert main(["prune", "--model", str(source), "--out", str(tmp_path / "pruned"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "allowed" in err and "Traceback" not in err and "unsupported architecture" not in err
