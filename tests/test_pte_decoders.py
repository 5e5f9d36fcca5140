"""exporters/pte_decoders.py: a decoder that cross-attends to an encoder is held to a next-token KL at 8da8w."""

from __future__ import annotations

import pytest
import torch

from edgemfm.exporters import find_family, pte_decoders
from edgemfm.exporters.executorch import _leaves_run, _program_unit
from edgemfm.exporters.pte_quantize import pte_recipe
from edgemfm.model_source import load_checkpoint
from edgemfm.profiles import load_profile
from edgemfm.quantizers.units import unit_name
from edgemfm.report import Quantization

PLANTED = "language_model.layers.0.fc2"


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    """A tiny English Whisper whose layer-0 fc2 has one input column 60x the others: per output channel, that
    column sets every row's int8 scale and the rest of the row rounds to a few levels (as tiny.en's head's one
    column did, exporters/pte_head.py); its teacher-forced feeds on two seeded mel windows."""
    import json

    from tiny_audio import tiny_whisper_en

    path = tiny_whisper_en(tmp_path_factory.mktemp("whisper") / "model", seed=3)
    family = find_family(json.loads((path / "config.json").read_text()))
    split = family.split(load_checkpoint(family.load, path), path)
    fc2 = split.units["text_decoder"].module.decoder.layers[0].fc2
    with torch.no_grad():
        fc2.weight[:, 7] *= 60.0
    torch.manual_seed(0)
    calibration = {"audio_encoder": [(torch.randn(1, 80, 3000),) for _ in range(2)]}
    feeds = pte_decoders.decoder_inputs(split, calibration, max_seq_len=64)["text_decoder"]
    unit = _program_unit("text_decoder", split.units["text_decoder"], 64, "float")
    others = tuple(_leaves_run(split.units["audio_encoder"]))
    return unit, feeds, others


def test_a_cross_attending_decoder_keeps_float_the_linear_whose_int8_costs_its_next_token_kl_the_most(whisper):
    unit, feeds, others = whisper
    recipe = pte_recipe(load_profile("pi5"), "int8")
    assert len(feeds) == 2 and all(f[1].shape[0] > 2 for f in feeds)  # the start, then the float decoder's tokens
    before = pte_decoders.linears_to_keep("text_decoder", unit.module, recipe, feeds, target=1e9, others=others)
    assert before.linears == {} and before.before > 0
    kept = pte_decoders.linears_to_keep(
        "text_decoder", unit.module, recipe, feeds, target=before.before / 4, others=others
    )
    assert next(iter(kept.linears)) == PLANTED
    assert kept.after <= before.before / 4 < kept.before == pytest.approx(before.before)
    # the cross K/V projections are the encoder's, the head never a candidate
    assert not any("encoder_attn.k_proj" in f or "encoder_attn.v_proj" in f or f == "lm_head" for f in kept.linears)
    assert all(float(b.abs().max()) == 0 for b in unit.module.buffers() if b.is_floating_point())  # cache left at 0
    assert f"{len(kept.linears)} linears float: next-token KL" in kept.note
    held = pte_decoders.keeping(recipe, "text_decoder", kept)
    assert held.spec_for(unit_name("text_decoder", PLANTED)) is None
    assert held.spec_for(unit_name("text_decoder", "language_model.layers.1.fc2")) is not None


def test_the_manifest_recipe_keeps_float_what_the_decoder_judge_kept():
    """with_float_linears reads the report's reasons back into the recipe: a bundle's fake-quantized reference
    (tests/fake_quantized.py quantizes by the manifest's recipe) then runs those linears float as the program does."""
    recipe = pte_recipe(load_profile("pi5"), "int8")
    kept = pte_decoders.Kept({PLANTED: 0.001}, 0.01, 0.001, 2)
    done = Quantization((), 1, pte_decoders.reasons(kept), {}, {}, 0)
    held = pte_decoders.with_float_linears(recipe, {"text_decoder": done})
    assert held.spec_for(unit_name("text_decoder", PLANTED)) is None
    assert held.spec_for(unit_name("text_decoder", "language_model.layers.0.fc1")).bits == 8
