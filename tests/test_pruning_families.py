"""`prune` on every family whose checkpoint transformers prunes (`prunable=TRANSFORMERS`): the decoder
of each family's tiny checkpoint (Whisper's encoder and decoder) loses a block and 30% of its MLP channels, the result exports with
parity and the bundle answers a question about its media (slow: one export per family)."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest
from tiny_audio import tiny_qwen2_audio, tiny_whisper
from tiny_models import tiny_idefics3, tiny_llama, tiny_llava, tiny_qwen2_vl

import edgemfm
from edgemfm.cli import main

BUILDERS = {  # family: (tiny checkpoint, the media its question is about, the components pruned)
    "llava": (tiny_llava, "image", ("text_decoder",)),
    "idefics3": (tiny_idefics3, "image", ("text_decoder",)),
    "qwen2_vl": (tiny_qwen2_vl, "image", ("text_decoder",)),
    "qwen2_5_vl": (lambda p: tiny_qwen2_vl(p, version="2.5"), "image", ("text_decoder",)),
    "qwen2_audio": (tiny_qwen2_audio, "audio", ("text_decoder",)),
    "whisper": (tiny_whisper, "audio", ("audio_encoder", "text_decoder")),
    "text": (tiny_llama, None, ("text_decoder",)),
}
CASES = [(family, component) for family, (_, _, components) in sorted(BUILDERS.items()) for component in components]
LAYERS = {"text_decoder": ("decoder_layers", "num_hidden_layers"), "audio_encoder": ("encoder_layers",)}


def test_every_transformers_prunable_family_has_a_tiny_checkpoint_here():
    from edgemfm.exporters import families
    from edgemfm.pruners.checkpoint import TRANSFORMERS

    assert set(BUILDERS) == {f.name for f in families() if f.prunable is TRANSFORMERS}


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """One second of a 440 Hz tone, 16 kHz mono."""
    path = tmp_path_factory.mktemp("audio") / "tone.wav"
    t = np.arange(16000) / 16000
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes((0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2").tobytes())
    return path


@pytest.mark.slow
@pytest.mark.parametrize("family, component", CASES)
def test_each_family_prunes_exports_with_parity_and_runs(tmp_path, family, component, picture, clip):
    build, kind, _ = BUILDERS[family]
    source, pruned, bundle = build(tmp_path / family), tmp_path / "pruned", tmp_path / "bundle"
    before = json.loads((source / "config.json").read_text())
    argv = ["prune", "--model", str(source), "--out", str(pruned), "--component", component]
    assert main([*argv, "--blocks", "1", "--mlp", "0.3"]) == 0
    after = json.loads((pruned / "config.json").read_text())
    layers = [k for k in LAYERS[component] if k in after.get("text_config", after)][0]
    assert after.get("text_config", after)[layers] == before.get("text_config", before)[layers] - 1
    assert main(["export", "--model", str(pruned), "--device", "host", "--out", str(bundle)]) == 0  # parity inside
    pipe = edgemfm.load(bundle)
    parity = pipe.manifest.report.parity[component]
    assert parity.max_abs_diff <= parity.tolerance * parity.scale
    assert pipe.manifest.report.pruning.parameters.removed > 0
    media = {} if kind is None else {"images": [picture]} if kind == "image" else {"audio": [clip]}
    prompt = "" if family == "whisper" else "What is it?"
    assert (
        len(list(pipe.generate_tokens(prompt, **media, max_new_tokens=4))) <= 4
    )  # runs (a random model may stop at once)
