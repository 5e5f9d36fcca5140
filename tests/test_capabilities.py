"""Family capabilities: what tune, finetune and prune need from a family is declared on its `Family`
record (exporters/family.py), so the demo model prunes through its own loader and a new family is
one file: a toy family registered here is found by `prune`, `export` and `tune` with no sdk/ edit."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest
from test_demo import tiny_demo

import edgemfm
from edgemfm.cli import main
from edgemfm.errors import UnsupportedModelError


def test_every_family_declares_what_it_can_do_and_a_missing_capability_names_those_that_have_it():
    from edgemfm.exporters import capability, families, family_named

    by_name = {f.name: f for f in families()}
    assert all(f.prunable is not None for f in by_name.values())  # prune takes every family's checkpoint
    vision_language = {"llava", "idefics3", "qwen2_vl", "qwen2_5_vl", "qwen2_audio", "edgemfm-demo"}
    assert {n for n, f in by_name.items() if f.media_knobs} == vision_language  # tune turns every encoder's knob
    assert {n for n, f in by_name.items() if f.finetune} == vision_language  # every family with a projector
    with pytest.raises(
        UnsupportedModelError,
        match="'whisper' for finetune; supported: edgemfm-demo, idefics3, llava, qwen2_5_vl, qwen2_audio, qwen2_vl$",
    ):
        capability(family_named("whisper"), "finetune")


def test_sdk_tests_no_family_name():
    sdk = Path(__file__).resolve().parents[1] / "sdk"
    hits = [
        f"{p.relative_to(sdk)}:{n}"
        for p in sdk.rglob("*.py")
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if "DEMO_FAMILY" in line or '"edgemfm-demo"' in line
    ]
    assert hits == []


def test_prune_takes_the_demo_checkpoint_through_its_family(tmp_path, capsys):
    """The demo's decoder MLP is cut through `edgemfm prune`; the checkpoint's text_config follows,
    so the demo family's own loader reads it back and the decoder runs."""
    import torch

    from edgemfm.exporters import demo
    from edgemfm.pruners.prune import read_report

    source, out = tiny_demo(tmp_path / "tiny-demo"), tmp_path / "pruned"
    assert main(["prune", "--model", str(source), "--out", str(out), "--mlp", "0.2"]) == 0
    assert json.loads((out / "config.json").read_text())["text_config"]["intermediate_size"] == 120  # 150 - 30
    assert (out / "tokenizer.json").read_bytes() == (source / "tokenizer.json").read_bytes()
    report = read_report(out)
    assert report.architecture == "DemoModel" and report.stages[0].granularity == "mlp"
    model = demo.load(out)
    assert {layer.mlp.up_proj.out_features for layer in model.language_model.model.layers} == {120}
    with torch.no_grad():
        assert model.language_model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 261)
    capsys.readouterr()
    argv = ["prune", "--model", str(source), "--out", str(tmp_path / "o"), "--component", "vision_encoder"]
    assert main([*argv, "--mlp", "0.2"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == "edgemfm: error: component 'vision_encoder' of edgemfm-demo cannot be pruned; allowed: text_decoder"
    assert not (tmp_path / "o").exists()


@pytest.fixture
def toy(monkeypatch):
    """A family module registered at test time (the demo's pieces under another name, its own media
    knobs): what the verbs ask of it is recorded in `calls`."""
    from edgemfm import exporters
    from edgemfm.exporters import demo
    from edgemfm.exporters.family import MediaKnobs

    calls = []

    def export(model_dir, kind, setting, path):
        calls.append(("export", kind, setting))
        return demo.export_encoder(model_dir, kind, setting, path)

    def rows(model_dir, kind, setting):
        calls.append(("rows", kind, setting))
        return demo.media_rows(model_dir, kind, setting)

    def stack(model, component):
        calls.append(("stack", component))
        return demo.PRUNABLE.stack(model, component)

    module = types.ModuleType("edgemfm.exporters.toy")  # as if exporters/toy.py, plus its row in FAMILIES
    module.FAMILY = replace(
        demo.FAMILY,
        name="toy",
        model_types=("toy",),
        architectures=("ToyModel",),
        media_knobs=MediaKnobs(image=((96, 1),), audio=(), export=export, rows=rows),
        finetune=None,
        prunable=replace(demo.PRUNABLE, stack=stack),
    )
    monkeypatch.setitem(sys.modules, "edgemfm.exporters.toy", module)
    monkeypatch.setattr(exporters, "FAMILIES", (*exporters.FAMILIES, "toy"))
    return calls


def test_a_family_is_one_file_prune_export_and_tune_find_its_capabilities(toy, tmp_path, capsys):
    from edgemfm.profiles import load_profile
    from edgemfm.tune import Space, tune
    from edgemfm.tune.parts import settings_of
    from edgemfm.tune.search import default_space

    source = tiny_demo(tmp_path / "toy")
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "model_type": "toy"}))

    pruned = tmp_path / "toy-pruned"
    assert main(["prune", "--model", str(source), "--out", str(pruned), "--mlp", "0.2"]) == 0
    assert ("stack", "text_decoder") in toy
    argv = ["finetune", "--model", str(pruned), "--data", str(tmp_path), "--out", str(tmp_path / "ft")]
    assert main(argv) == 2  # the toy declares no finetune capability
    assert "unsupported architecture 'toy' for finetune; supported: edgemfm-demo, idefics3, " in capsys.readouterr().err

    bundle = edgemfm.export(edgemfm.ExportConfig(model=pruned, device="host", out=tmp_path / "bundle"))
    manifest = edgemfm.bundle.read_manifest(bundle)
    assert manifest.family == "toy" and manifest.report.pruning is not None
    assert default_space(load_profile("pi5"), manifest, media=True).image == ((96, 1),)  # the toy's own knobs

    space = Space(
        image=((96, 1),), audio=(), seq_lens=(256,), encoder_precisions=("fp32",), decoder_precisions=("fp32",)
    )
    with pytest.raises(
        UnsupportedModelError,
        match="'whisper' for tune's image and audio settings; supported: edgemfm-demo, idefics3, llava, qwen2_5_vl, "
        "qwen2_audio, qwen2_vl, toy",
    ):
        settings_of(space, replace(manifest, family="whisper"), "vision_encoder")
    r = tune("pi5", latency_budget_ms=1e6, model=pruned, bundle=bundle, space=space, scratch=tmp_path)
    assert ("export", "image", (96, 1)) in toy and ("rows", "image", (96, 1)) in toy
    assert dict(r.chosen.candidate.settings)["vision_encoder"] == (96, 1)
    assert r.host is not None and r.host.measured_ms > 0
