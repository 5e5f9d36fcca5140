"""`finetune` on every family's tiny checkpoint: the projector learns a small synthetic task (the
colour of a picture, the pitch of a tone) through the frozen decoder, held-out exact match rises
(measured before and after in the same run), and the result is a checkpoint `export` takes, whose
bundle answers as the trained model did. LoRA on the decoder merges into the weights on save."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from tiny_audio import tiny_qwen2_audio
from tiny_models import tiny_idefics3, tiny_llava, tiny_qwen2_vl

import edgemfm
from edgemfm.configs import FinetuneConfig
from edgemfm.errors import InputError
from edgemfm.exporters.trainee import read_examples
from edgemfm.finetune import finetune

COLOURS = {"r": (200, 30, 30), "g": (30, 180, 40), "b": (30, 50, 210)}  # one-token answers of the byte tokenizers
TONES = {"l": 220.0, "m": 1000.0, "h": 3200.0}


def _picture(path: Path, rgb: tuple[int, int, int], rng: np.random.Generator, side: int) -> None:
    """A mostly-`rgb` picture with a shade and a pale square of another size each time."""
    shade = tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in rgb)
    img = Image.new("RGB", (side, side), shade)
    x, y, w = (int(v) for v in rng.integers(0, side // 2, 3))
    ImageDraw.Draw(img).rectangle((x, y, x + w // 2 + 2, y + w // 2 + 2), fill=(235, 235, 225))
    img.save(path)


def _tone(path: Path, hertz: float, rng: np.random.Generator) -> None:
    """One second of a sine at `hertz` (±3%), 16 kHz mono, at a random level, with a little noise."""
    t = np.arange(16000) / 16000
    wave_ = rng.uniform(0.2, 0.6) * np.sin(2 * np.pi * hertz * rng.uniform(0.97, 1.03) * t)
    pcm = np.clip(wave_ + rng.normal(0, 0.01, t.shape), -1, 1)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((pcm * 32767).astype("<i2").tobytes())


def synthetic_task(root: Path, kind: str, train: int = 8, held_out: int = 4, side: int = 40) -> Path:
    """train.jsonl / eval.jsonl: per class `train` and `held_out` different items, one question."""
    rng = np.random.default_rng(0)
    (root / "media").mkdir(parents=True)
    classes = COLOURS if kind == "image" else TONES
    prompt = "What colour is it?" if kind == "image" else "Is the tone low, mid or high?"
    for split, n in (("train", train), ("eval", held_out)):
        rows = []
        for i in range(n):
            for label, value in classes.items():
                name = f"media/{split}-{label}-{i}.{'png' if kind == 'image' else 'wav'}"
                if kind == "image":
                    _picture(root / name, value, rng, side)
                else:
                    _tone(root / name, value, rng)
                rows.append({kind: name, "prompt": prompt, "answer": label})
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


FAMILIES = {  # builder, media kind, steps: tiny towers, a few seconds of training each
    "llava": (tiny_llava, "image"),
    "idefics3": (tiny_idefics3, "image"),
    "qwen2_vl": (tiny_qwen2_vl, "image"),
    "qwen2_5_vl": (lambda p: tiny_qwen2_vl(p, version="2.5"), "image"),
    "qwen2_audio": (tiny_qwen2_audio, "audio"),
}
# A few seconds of training each. The tiny decoders are random (and widened: decisive greedy
# choices), so the projector alone cannot steer them to a format in so few steps (measured: loss
# 8.3 -> 1.3, held-out 0%); with rank-4 LoRA on the decoder the loss falls under 0.01 and held-out
# exact match reaches 100% on every family.
SETTINGS = dict(steps=30, align_steps=20, batch_size=6, lr=1e-2, align_lr=1e-2, checkpoint_every=30, lora_rank=4)


pytestmark = pytest.mark.usefixtures("one_thread")


def _trained(tmp_path: Path, family: str, **extra):
    build, kind = FAMILIES[family]
    model, data = build(tmp_path / family), synthetic_task(tmp_path / "data", kind)
    out = tmp_path / f"{family}-ft"
    return out, data, kind, finetune(FinetuneConfig(model, data, out, **{**SETTINGS, **extra}))


def _runs_as_trained(out: Path, data: Path, kind: str, report, tmp_path: Path) -> None:
    """The checkpoint exports with parity and its bundle answers the held-out questions as finetune measured."""
    bundle = edgemfm.export(edgemfm.ExportConfig(model=out, device="host", out=tmp_path / "bundle"))
    manifest = edgemfm.bundle.read_manifest(bundle)
    assert manifest.report.parity and all(
        p.max_abs_diff <= p.tolerance * p.scale for p in manifest.report.parity.values()
    )
    pipe = edgemfm.load(bundle)
    held_out = read_examples(data, "eval")
    right = sum(
        "".join(pipe.generate(e.prompt, **{"images" if kind == "image" else "audio": [e.media]}, max_new_tokens=6))
        .strip()
        .__eq__(e.answer)
        for e in held_out
    )
    assert right / len(held_out) == pytest.approx(report.accuracy[kind], abs=1.5 / len(held_out))


def test_llava_finetune_raises_held_out_exact_match_and_writes_a_llava_checkpoint_with_no_extra_tensors(tmp_path):
    import torch
    from safetensors.torch import load_file

    out, _, kind, report = _trained(tmp_path, "llava")
    assert report.accuracy_before[kind] <= 0.34 and report.accuracy[kind] >= 0.75, report
    assert report.lora_rank == 4 and json.loads((out / "config.json").read_text())["model_type"] == "llava"
    for name in ("tokenizer.json", "preprocessor_config.json", "model.safetensors", "adapter.safetensors"):
        assert (out / name).is_file(), name
    saved, base = load_file(str(out / "model.safetensors")), load_file(str(tmp_path / "llava" / "model.safetensors"))
    assert set(saved) == set(base) and all(saved[k].shape == base[k].shape for k in saved)  # LoRA merged, no extras
    moved = {k for k in saved if not torch.equal(saved[k], base[k])}
    assert any("multi_modal_projector" in k for k in moved) and any("q_proj" in k for k in moved)
    assert not any("vision_tower" in k or "embed_tokens" in k for k in moved)  # the tower and the table stay frozen


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_finetunes_exports_with_parity_and_runs(tmp_path, family):
    out, data, kind, report = _trained(tmp_path, family)
    assert report.accuracy_before[kind] <= 0.34 and report.accuracy[kind] >= 0.75, report
    _runs_as_trained(out, data, kind, report, tmp_path)


def test_lora_merges_into_the_weights_as_base_plus_b_a_scale():
    """Merged weights are W + B @ A * alpha / rank, and the merged layer computes what the hooked one did."""
    import torch

    from edgemfm import lora

    torch.manual_seed(0)
    decoder = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.GELU(), torch.nn.Linear(5, 4))
    base = [decoder[0].weight.detach().clone(), decoder[2].weight.detach().clone()]
    x = torch.randn(2, 6)
    with torch.no_grad():
        plain = decoder(x)
    adapters = lora.attach(decoder, rank=3, alpha=6.0, seed=0)
    assert [ad.name for ad in adapters] == ["0", "2"] and len(lora.parameters(adapters)) == 4
    with torch.no_grad():
        assert torch.equal(decoder(x), plain)  # B = 0: starts as the base model
        for ad in adapters:
            ad.b.normal_()
        hooked = decoder(x)
        expected = [w + ad.b @ ad.a * 2.0 for w, ad in zip(base, adapters)]
    lora.merge(adapters)
    assert all(ad.handle is None for ad in adapters)
    assert torch.equal(decoder[0].weight, expected[0]) and torch.equal(decoder[2].weight, expected[1])
    with torch.no_grad():
        assert torch.allclose(decoder(x), hooked, atol=1e-6)
    assert set(decoder.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_a_placeholder_typed_into_a_question_is_refused_naming_its_line(tmp_path):
    data = synthetic_task(tmp_path / "data", "image", train=1, held_out=1)
    rows = (data / "eval.jsonl").read_text().splitlines()
    row = json.loads(rows[1])
    (data / "eval.jsonl").write_text("\n".join([rows[0], json.dumps({**row, "prompt": "<image> colour?"}), *rows[2:]]))
    model = tiny_llava(tmp_path / "llava")
    with pytest.raises(InputError, match=r"eval.jsonl:2: the prompt must not contain the image placeholder '<image>'"):
        finetune(FinetuneConfig(model, data, tmp_path / "out", steps=1, align_steps=1))
    assert not (tmp_path / "out").exists()


TUNED = {  # family: (a smaller setting, a larger one: the checkpoint's own for the 40 px pictures)
    "qwen2_vl": ((16,), (40,)),  # pixel budget side: 4 visual tokens instead of 25
    "idefics3": ((15, 1), (30, 3)),  # (tile px, tiles per side): 1 row instead of 10 tiles of 4
    "llava": ((18,), (30,)),  # image size: the CLIP tower's positions interpolated to 3x3 patches instead of 5x5
    # audio window: 25 rows at most instead of 100 (the tones last 1 s; the checkpoint's own 30 s, 750 rows,
    # does not fit the 256-position cache)
    "qwen2_audio": ((1.0,), (4.0,)),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(TUNED))
def test_tune_turns_a_family_media_knob_and_its_chosen_point_exports_and_runs(tmp_path, family):
    """`tune` searches the family's own media knob on a finetuned checkpoint's held-out questions:
    the front covers both settings, the chosen point is written as a bundle whose runtime
    pre-processes at that setting, and it answers."""
    from edgemfm.exporters import family_named
    from edgemfm.tune import Space, tune
    from edgemfm.tune.parts import variant_preprocess

    small, own = TUNED[family]
    out, data, kind, report = _trained(tmp_path, family)
    encoder = "vision_encoder" if kind == "image" else "audio_encoder"
    bundle = edgemfm.export(edgemfm.ExportConfig(model=out, device="host", out=tmp_path / "float"))
    # Space lists image settings as tuples and audio windows as seconds; a setting is always a tuple
    settings = {"image": (), "audio": (), kind: (small, own) if kind == "image" else (small[0], own[0])}
    space = Space(**settings, seq_lens=(256,), encoder_precisions=("fp32",), decoder_precisions=("fp32",))
    r = tune("pi5", 1e6, model=out, bundle=bundle, data=data, space=space, scratch=tmp_path, apply=tmp_path / "tuned")
    points = {dict(p.candidate.settings)[encoder]: p for p in r.points}
    assert set(points) == {small, own} and any(p.frontier for p in r.points)
    assert points[small].latency_ms < points[own].latency_ms  # fewer visual (audio) tokens
    assert points[own].quality == pytest.approx(report.accuracy[kind], abs=0.09)  # as finetune measured it
    chosen = dict(r.chosen.candidate.settings)[encoder]
    knobs = family_named(family).media_knobs
    tuned = edgemfm.bundle.read_manifest(tmp_path / "tuned")
    assert tuned.preprocess == variant_preprocess(r.manifest, kind, chosen)  # the family's knobs.preprocess, or size
    pipe = edgemfm.load(tmp_path / "tuned")
    media = read_examples(data, "eval")[0].media
    (item,) = pipe.prepare({kind: [media]})[kind]
    assert sum(pipe.encode(kind, call).shape[-2] for call in item.calls) <= knobs.rows(out, kind, chosen)
    prompt = read_examples(data, "eval")[0].prompt
    assert "".join(pipe.generate(prompt, **{"images" if kind == "image" else "audio": [media]}, max_new_tokens=4))
