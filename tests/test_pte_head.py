"""A pte decoder's head quantized at 8da8w reads its final LayerNorm folded into it and rotated
(exporters/pte_head.py): float logits stay as they were, the 8da8w logits come nearer float where the norm's gain and
bias are large and its head has an outlier column (as the real Whisper tiny.en's: gain ~11, and a column 10x the
median where the gain is -0.8 and the bias -11), the report says so, and a head that is
not 8-bit per channel or reads an RMSNorm is left as it was.

The tiny Whisper's (-m slow) program against its fake-quantized units is tests/test_pte_quantized.py's Whisper row:
its reference folds the head as the export did, through the same quantize_module.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_audio import tiny_whisper

PLANTED = 3  # the channel given the real head's outlier column


@pytest.fixture(scope="module")
def unit(tmp_path_factory):
    """The tiny Whisper's static pte decoder, its final LayerNorm given a real Whisper's large gain and bias."""
    from edgemfm.exporters import find_family

    checkpoint = tiny_whisper(tmp_path_factory.mktemp("models") / "tiny-whisper", seed=1)
    family = find_family({"model_type": "whisper", "architectures": ["WhisperForConditionalGeneration"]})
    decoder = family.split(family.load(checkpoint), checkpoint).units["text_decoder"].static_cache(32)
    norm, head = decoder.module.language_model.layer_norm, decoder.module.lm_head
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        norm.weight.copy_(torch.empty(norm.weight.shape).uniform_(5, 15, generator=g))
        norm.bias.copy_(torch.randn(norm.bias.shape, generator=g) * 0.5)
        # tiny.en's channel 30-ish: a head column 10x the others' that the gain all but mutes (-0.8) and a bias of -11
        norm.weight[PLANTED], norm.bias[PLANTED] = -0.8, -11.0
        head.weight[:, PLANTED] *= 10
    return decoder


def _calls(unit, n: int = 4) -> list[tuple]:
    g = torch.Generator().manual_seed(2)
    embeds, positions, cross = unit.args
    width = embeds.shape[-1]
    return [(torch.randn(1, 12, width, generator=g), torch.arange(12), cross) for _ in range(n)]


def _recipe(precision: str = "int8"):
    from edgemfm.exporters.pte_quantize import pte_recipe
    from edgemfm.profiles import load_profile

    return pte_recipe(load_profile("pi5"), precision)


def _head_only():
    """int8's head, the rest float: the random tiny decoder's layers at 8da8w drown the head's own error."""
    from edgemfm.exporters.pte_quantize import HEAD
    from edgemfm.recipe import Recipe, Rule

    return Recipe(rules=(Rule(HEAD, _recipe().spec_for(HEAD)), Rule("*", None)))


def test_folding_the_head_leaves_the_float_logits_as_they_were(unit):
    from edgemfm.exporters.pte_head import fold_head
    from edgemfm.exporters.pte_rotation import _logits

    calls = _calls(unit)
    folded = copy.deepcopy(unit.module)
    with torch.no_grad():
        before = _logits(unit.module, calls)
        assert fold_head(folded) is not None
        after = _logits(folded, calls)
    assert float((after - before).abs().max() / before.abs().max()) < 1e-5
    assert fold_head(folded) is None  # folded once: a second call finds nothing to fold
    # the table tied to the head is not folded with it
    table = folded.language_model.embed_tokens.weight
    assert torch.equal(table, unit.module.language_model.embed_tokens.weight)


def test_the_folded_8da8w_head_is_nearer_float_and_the_report_says_so(unit, monkeypatch):
    from edgemfm.exporters import pte_quantize
    from edgemfm.exporters.pte_rotation import _db, _logits, _quantized_logits

    calls, recipe = _calls(unit), _head_only()
    with torch.no_grad():
        reference = _logits(unit.module, calls)
        folded = _db(reference, _quantized_logits("text_decoder", unit.module, recipe, calls))
        with monkeypatch.context() as m:
            m.setattr(pte_quantize, "_fold_head", lambda _module, _spec: {})
            plain = _db(reference, _quantized_logits("text_decoder", unit.module, recipe, calls))
    assert folded > plain + 3.0, (folded, plain)
    done = pte_quantize.quantize_module("text_decoder", copy.deepcopy(unit.module), _recipe())
    assert "folded into the head" in done.notes[pte_quantize.HEAD]


def test_an_int4_head_and_an_rmsnorm_decoder_are_not_folded(unit, tmp_path):
    from tiny_text import tiny_text_model
    from transformers import AutoModelForCausalLM

    from edgemfm.exporters.pte_head import foldable
    from edgemfm.exporters.pte_quantize import quantize_module

    module = copy.deepcopy(unit.module)
    assert quantize_module("text_decoder", module, _recipe("int4")).notes == {}
    assert type(module.language_model.layer_norm) is torch.nn.LayerNorm
    assert not module.language_model.layer_norm._forward_hooks
    path = tiny_text_model("LlamaForCausalLM", tmp_path / "llama")
    llama = AutoModelForCausalLM.from_pretrained(path).eval()

    class Holder(torch.nn.Module):  # as StaticDecoder holds them
        def __init__(self):
            super().__init__()
            self.language_model, self.lm_head = llama.model, llama.lm_head

    assert foldable(Holder()) is None
