"""A pte decoder's residual stream rotated before 8da8w (exporters/pte_rotation.py): the rotation leaves the float
model as it was, the rotated 8da8w decoder is nearer float than the plain one where its norms plant outlier
channels, a decoder that rotating would change (Gemma's 1 + w norms) or cannot rotate (fused projections) is left
as it was saying why, and (-m slow) the rotated program passes its parity check and its greedy tokens equal the
model's rotated and fake-quantized in PyTorch.

The tiny Llama's residual stream carries a few channels 30x the rest, as a real LLM's does (SmolLM2's).
"""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_text import tiny_text_model

OUTLIERS = [3, 17, 40]  # the planted channels
MASSIVE = [5, 77, 200]  # the planted entries of down_proj's input (SiLU(gate) * up), as SmolLM2's massive activations
SHAPE = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=32)


def _model(architecture: str = "LlamaForCausalLM", tmp_path=None, massive: bool = False):
    """A tiny `architecture` model whose residual stream carries OUTLIERS 30x the rest: the table and every block's
    writers put them there, as a real LLM's do; its norms' gains vary. `massive`: down_proj's inputs carry MASSIVE
    100x the rest too (its up_proj's rows; down_proj's columns for them 100x smaller: the float model is as it was)."""
    from transformers import AutoModelForCausalLM

    path = tiny_text_model(architecture, tmp_path / architecture, **SHAPE)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight[:, OUTLIERS] *= 30
        for name, p in model.named_parameters():
            if p.dim() == 1 and "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                p[OUTLIERS] *= 30
            if massive and name.endswith("up_proj.weight"):
                p[MASSIVE] *= 100
            elif massive and name.endswith("down_proj.weight"):  # the same block output: only its input changes
                p[:, MASSIVE] /= 100
    return model


def _unit(model):
    """The model's static pte decoder: what write_program quantizes."""
    from edgemfm.exporters.decoder import kv_layout
    from edgemfm.exporters.static_decoder import static_decoder_unit

    config = model.config
    return static_decoder_unit(model.model, model.lm_head, config, kv_layout(config), 32)


def _feeds(n: int = 4, seed: int = 1) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "inputs_embeds": torch.randn(1, 12, SHAPE["hidden_size"], generator=g).numpy(),
            "input_pos": torch.arange(12).numpy(),
        }
        for _ in range(n)
    ]


def _recipe():
    from edgemfm.exporters.pte_quantize import pte_recipe
    from edgemfm.profiles import load_profile

    return pte_recipe(load_profile("pi5"), "int8")


@pytest.mark.parametrize("kind", ["hadamard", "orthogonal"])
@pytest.mark.parametrize("width", [576, 128, 84, 9])
def test_the_rotation_is_orthogonal_and_regenerates_from_its_seed(kind, width):
    from edgemfm.exporters.pte_rotation import matrix
    from edgemfm.recipe import Rotation

    r = matrix(Rotation(kind=kind, seed=3), width)
    assert r.shape == (width, width) and (r @ r.T - torch.eye(width)).abs().max() < 1e-5
    assert torch.equal(r, matrix(Rotation(kind=kind, seed=3), width))
    assert not torch.equal(r, matrix(Rotation(kind=kind, seed=4), width))


@pytest.mark.parametrize("architecture", ["LlamaForCausalLM", "Qwen2ForCausalLM"])
def test_the_rotated_model_gives_the_float_logits(architecture, tmp_path):
    from edgemfm.exporters.pte_rotation import ROTATION, rotate

    model = _model(architecture, tmp_path)
    ids = torch.randint(0, model.config.vocab_size, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        rotate(model.model, model.lm_head, ROTATION)
        after = model(input_ids=ids).logits
    assert (after - before).abs().max() <= 1e-4 * before.abs().max()
    # the residual stream's norms hold no gain any more, and the table (tied or not) is as it was
    assert all(
        torch.equal(n.weight, torch.ones_like(n.weight))
        for n in (model.model.norm, model.model.layers[0].input_layernorm)
    )


def test_the_rotated_8da8w_decoder_is_nearer_float_where_the_residual_stream_has_outlier_channels(tmp_path):
    from edgemfm.exporters.pte_rotation import ROTATION, rotate_where_it_helps

    model = _model(tmp_path=tmp_path)
    unit = _unit(model)
    untouched = copy.deepcopy(unit.module)
    measured = rotate_where_it_helps("text_decoder", unit, _feeds(), _recipe(), ROTATION)
    assert measured.kept and measured.rotated_db >= measured.plain_db + 3, measured
    assert f"rotated ({ROTATION.kind}, seed {ROTATION.seed})" in measured.note(ROTATION)
    # without massive entries in down_proj's input its Hadamard gains nothing worth a run-time matmul
    assert measured.down_proj and measured.kept_rotation(ROTATION) == ROTATION, measured
    assert not hasattr(unit.module.language_model.layers[0].mlp.down_proj, "hadamard_inner")
    args = (torch.randn(1, 7, SHAPE["hidden_size"]), torch.arange(7))
    with torch.no_grad():  # the kept rotation is in the unit's own module, exact in float
        before, after = untouched(*args), unit.module(*args)
    assert (after - before).abs().max() <= 1e-4 * before.abs().max()


@pytest.mark.parametrize(("width", "outer"), [(1536, 12), (256, 2), (96, 12), (12, 12), (64, 1)])
def test_the_online_hadamard_is_a_kronecker_product_of_two_small_hadamards(width, outer):
    from edgemfm.exporters.pte_online_hadamard import INNER, factors

    a, b = factors(width)
    assert a.shape[0] == outer and b.shape[0] <= INNER and a.shape[0] * b.shape[0] == width
    h = torch.kron(a, b)
    assert (h @ h.T - torch.eye(width, dtype=h.dtype)).abs().max() < 1e-12
    assert torch.allclose(h.abs(), torch.full_like(h, width**-0.5))  # a Hadamard: every entry +-1/sqrt(width)


@pytest.mark.parametrize("width", [40, 6, 36])
def test_a_width_without_a_built_hadamard_has_no_factors(width):
    from edgemfm.exporters.pte_online_hadamard import factors

    assert factors(width) is None


def test_the_down_proj_hadamard_gives_the_float_logits(tmp_path):
    from dataclasses import replace

    from edgemfm.exporters.pte_rotation import ROTATION, rotate

    model = _model(tmp_path=tmp_path, massive=True)
    ids = torch.randint(0, model.config.vocab_size, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        rotate(model.model, model.lm_head, replace(ROTATION, down_proj=True))
        after = model(input_ids=ids).logits
    assert (after - before).abs().max() <= 1e-4 * before.abs().max()
    assert all(layer.mlp.down_proj.hadamard_inner.shape == (128, 128) for layer in model.model.layers)


def test_the_down_proj_hadamard_is_kept_where_down_projs_input_has_massive_entries(tmp_path):
    from dataclasses import replace

    from edgemfm.exporters.pte_rotation import ROTATION, rotate_where_it_helps

    unit = _unit(_model(tmp_path=tmp_path, massive=True))
    untouched = copy.deepcopy(unit.module)
    measured = rotate_where_it_helps("text_decoder", unit, _feeds(), _recipe(), ROTATION)
    assert measured.kept and measured.down_proj_db >= measured.rotated_db + 3, measured
    assert measured.kept_rotation(ROTATION) == replace(ROTATION, down_proj=True)
    assert "down_proj's input by a Hadamard" in measured.note(ROTATION) and ", kept" in measured.note(ROTATION)
    args = (torch.randn(1, 7, SHAPE["hidden_size"]), torch.arange(7))
    with torch.no_grad():  # kept in the unit's own module, exact in float
        before, after = untouched(*args), unit.module(*args)
    assert (after - before).abs().max() <= 1e-4 * before.abs().max()
    assert unit.module.language_model.layers[0].mlp.down_proj.hadamard_inner.shape == (128, 128)


@pytest.mark.parametrize(
    ("architecture", "reason"),
    [("GemmaForCausalLM", "moves its float logits"), ("Phi3ForCausalLM", "a layer without self_attn.q_proj")],
)
def test_a_decoder_the_rotation_cannot_keep_exact_is_left_as_it_was_saying_why(architecture, reason, tmp_path):
    from edgemfm.exporters.pte_rotation import ROTATION, rotate_where_it_helps

    model = _model(architecture, tmp_path)
    unit = _unit(model)
    weights = {k: v.clone() for k, v in unit.module.state_dict().items()}
    measured = rotate_where_it_helps("text_decoder", unit, _feeds(2), _recipe(), ROTATION)
    assert not measured.kept and reason in measured.reason
    assert all(torch.equal(v, weights[k]) for k, v in unit.module.state_dict().items())


@pytest.mark.slow
def test_a_rotated_int8_pte_passes_its_parity_check_and_its_tokens_equal_the_rotated_fake_quantized_model(tmp_path):
    from dataclasses import replace

    from test_pte_quantized import PROMPT, TOKENS, _fake_quantized_tokens

    import edgemfm
    from edgemfm.bundle import read_manifest
    from edgemfm.cli import main
    from edgemfm.exporters.pte_rotation import ROTATION

    checkpoint = tmp_path / "LlamaForCausalLM"
    # the planted gains over the checkpoint's own; down_proj's massive inputs: its Hadamard is in the program
    _model(tmp_path=tmp_path, massive=True).save_pretrained(checkpoint)
    out = tmp_path / "pte-int8"
    argv = ["export", "--model", str(checkpoint), "--device", "pi5", "--format", "pte", "--precision", "int8"]
    assert main([*argv, "--max-seq-len", "64", "--out", str(out)]) == 0
    manifest = read_manifest(out)
    assert manifest.recipe.rotation == replace(ROTATION, down_proj=True)
    assert "residual stream rotated" in manifest.report.quantization["text_decoder"].notes["text_decoder"]
    parity = manifest.report.parity["text_decoder"]  # the export checked it: here, that it was checked
    assert parity.max_abs_diff is not None and parity.tolerance is not None
    pipe = edgemfm.load(out)
    ours = list(pipe.generate_tokens(PROMPT, max_new_tokens=TOKENS))
    assert len(ours) > 0 and ours == _fake_quantized_tokens(checkpoint, pipe, "int8")
