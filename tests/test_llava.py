"""LLaVA family end to end: export a tiny checkpoint, then match transformers token for token."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from tiny_models import tiny_llava, tiny_llava_siglip

import edgemfm
from edgemfm.cli import main
from edgemfm.runtimes.preprocess import preprocess_image

PROMPT = "Describe the picture."


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_llava(tmp_path_factory.mktemp("models") / "tiny-llava")


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "tiny-llava-pi5"
    assert main(["export", "--model", str(checkpoint), "--device", "pi5", "--out", str(out)]) == 0
    return out


def test_image_preprocessing_matches_the_transformers_processor(checkpoint, picture):
    from transformers import CLIPImageProcessorPil

    reference = CLIPImageProcessorPil.from_pretrained(checkpoint)(Image.open(picture), return_tensors="np")[
        "pixel_values"
    ][0]
    from transformers import AutoConfig

    from edgemfm.exporters.llava import image_preprocess

    ours = preprocess_image(picture, image_preprocess(checkpoint, AutoConfig.from_pretrained(checkpoint).vision_config))
    assert ours.shape == reference.shape == (3, 30, 30)
    assert abs(ours - reference).max() < 1e-5


def test_greedy_generation_matches_transformers(checkpoint, exported, picture):
    from transformers import CLIPImageProcessorPil, LlavaForConditionalGeneration

    pipe = edgemfm.load(exported)
    ours = list(pipe.generate_tokens(PROMPT, images=[picture], max_new_tokens=24))

    model = LlavaForConditionalGeneration.from_pretrained(checkpoint).eval()
    pixels = CLIPImageProcessorPil.from_pretrained(checkpoint)(Image.open(picture), return_tensors="pt")["pixel_values"]
    image_token = model.config.image_token_id
    rows = (30 // 6) ** 2  # patches, CLS dropped by the default feature selection
    ids = [t for i in pipe.prompt_ids(PROMPT, {"image": 1}) for t in ([i] * rows if i == image_token else [i])]
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), pixel_values=pixels, max_new_tokens=24, do_sample=False)
    theirs = [t for t in out[0, len(ids) :].tolist() if t not in pipe.manifest.tokenizer.eos_token_ids]
    assert len(ours) >= 12 and len(set(ours)) > 4  # a real sequence, not an immediate stop or one repeated token
    assert ours == theirs


def test_text_only_prompt_matches_transformers(checkpoint, exported):
    from transformers import LlavaForConditionalGeneration

    pipe = edgemfm.load(exported)
    ours = list(pipe.generate_tokens("Hello there", max_new_tokens=16))
    model = LlavaForConditionalGeneration.from_pretrained(checkpoint).eval()
    ids = pipe.prompt_ids("Hello there")
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=16, do_sample=False)
    assert ours == [t for t in out[0, len(ids) :].tolist() if t not in pipe.manifest.tokenizer.eos_token_ids]


def test_prompt_tokens_match_the_transformers_tokenizer(checkpoint, exported):
    from transformers import AutoTokenizer

    pipe = edgemfm.load(exported)
    text = pipe.manifest.prompt.template.format(media="<image>\n", prompt=PROMPT)
    assert pipe.prompt_ids(PROMPT, {"image": 1}) == AutoTokenizer.from_pretrained(checkpoint)(text)["input_ids"]


def test_unsupported_architecture_is_named(tmp_path, capsys):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "bert", "architectures": ["BertModel"]}')
    assert main(["export", "--model", str(model), "--device", "host", "--out", str(tmp_path / "o")]) == 2
    line = capsys.readouterr().err.strip()
    assert "unsupported architecture 'BertModel'" in line and "LlavaForConditionalGeneration" in line
    assert "\n" not in line and not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_siglip_tower_generates_as_transformers_does(tmp_path):
    """SigLIP's processor stretches to height x width with no crop; saved nested, as transformers 5 writes it."""
    from transformers import LlavaForConditionalGeneration, SiglipImageProcessorPil

    checkpoint = tiny_llava_siglip(tmp_path / "tiny-llava-siglip")
    out = tmp_path / "bundle"
    assert main(["export", "--model", str(checkpoint), "--device", "host", "--out", str(out)]) == 0
    pipe = edgemfm.load(out)
    pre = pipe.manifest.preprocess.image
    assert (pre.resize, pre.height, pre.width, pre.center_crop, pre.resample) == (
        "height_width",
        32,
        32,
        False,
        "bilinear",
    )
    image = Image.fromarray(torch.randint(0, 256, (61, 37, 3), dtype=torch.uint8).numpy(), "RGB")  # odd-sized
    ours = list(pipe.generate_tokens(PROMPT, images=[image], max_new_tokens=24))

    model = LlavaForConditionalGeneration.from_pretrained(checkpoint).eval()
    pixels = SiglipImageProcessorPil.from_pretrained(checkpoint)(image, return_tensors="pt")["pixel_values"]
    rows = (32 // 8) ** 2  # every patch: SigLIP has no CLS token and the strategy is "full"
    image_token = model.config.image_token_id
    ids = [t for i in pipe.prompt_ids(PROMPT, {"image": 1}) for t in ([i] * rows if i == image_token else [i])]
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), pixel_values=pixels, max_new_tokens=24, do_sample=False)
    theirs = [t for t in out[0, len(ids) :].tolist() if t not in pipe.manifest.tokenizer.eos_token_ids]
    assert len(ours) >= 12 and len(set(ours)) > 4  # a real sequence, not an immediate stop or one repeated token
    assert ours == theirs
