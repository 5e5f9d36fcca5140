"""Idefics3 / SmolVLM end to end: tiles match the transformers processor, the tile encoder matches
the model, and greedy generation with an image matches transformers token for token.

SmolVLM (same layout, its own classes and chat template) runs with -m slow."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from tiny_models import tiny_idefics3

import edgemfm
from edgemfm.cli import main
from edgemfm.exporters.idefics3 import splitting_preprocess
from edgemfm.runtimes.tiling import split_image

PROMPT = "Describe the picture."
ROWS_PER_TILE = 4  # (30 px / 5 px patches)^2 / 3^2


@pytest.fixture(scope="module", params=["idefics3", pytest.param("smolvlm", marks=pytest.mark.slow)])
def checkpoint(request, tmp_path_factory):
    return tiny_idefics3(tmp_path_factory.mktemp("models") / f"tiny-{request.param}", kind=request.param)


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / f"{checkpoint.name}-host"
    assert main(["export", "--model", str(checkpoint), "--device", "host", "--out", str(out)]) == 0
    return out


def _smolvlm(checkpoint) -> bool:
    return json.loads((checkpoint / "config.json").read_text())["model_type"] == "smolvlm"


def _image_processor(checkpoint):
    from transformers import Idefics3Processor, SmolVLMImageProcessorPil

    if _smolvlm(checkpoint):
        return SmolVLMImageProcessorPil.from_pretrained(checkpoint)
    return Idefics3Processor.from_pretrained(checkpoint).image_processor


def _wide_strip() -> Image.Image:
    img = Image.new("RGB", (411, 97), (10, 200, 90))
    ImageDraw.Draw(img).ellipse((50, 10, 200, 90), fill=(240, 240, 20))
    return img


@pytest.mark.parametrize(("make", "longest_edge", "views"), [("picture", 90, 10), ("wide", 90, 4), ("picture", 30, 1)])
def test_tiles_match_the_transformers_processor(checkpoint, picture, make, longest_edge, views):
    """3x3 tiles + global, 1x3 + global, and (longest edge = one tile) a single view."""
    image = Image.open(picture) if make == "picture" else _wide_strip()
    processor = _image_processor(checkpoint)
    reference = processor(image, size={"longest_edge": longest_edge}, return_tensors="np", return_row_col_info=True)
    pre, splitting = splitting_preprocess(checkpoint)
    tiles, rows, cols = split_image(image, pre, dataclasses.replace(splitting, longest_edge=longest_edge))
    assert (rows, cols) == (reference["rows"][0][0], reference["cols"][0][0])
    assert tiles.shape == reference["pixel_values"][0].shape == (views, 3, 30, 30)
    assert np.abs(tiles - reference["pixel_values"][0]).max() < 1e-5


def _expanded(pipe, images):
    media = pipe.prepare({"image": images})
    ids = pipe.prompt_ids(PROMPT, media)
    image_token = pipe.manifest.prompt.media["image"].token_id
    return ids, [t for i in ids for t in ([i] * ROWS_PER_TILE if i == image_token else [i])]


def test_prompt_matches_the_transformers_processor(checkpoint, exported, picture):
    from transformers import AutoTokenizer, Idefics3Processor
    from transformers.models.smolvlm.processing_smolvlm import get_image_prompt_string

    pipe = edgemfm.load(exported)
    ours, expanded = _expanded(pipe, [picture])
    assert ours.count(pipe.manifest.prompt.media["image"].token_id) == 10  # one slot per tile
    if _smolvlm(checkpoint):  # SmolVLMProcessor needs torchvision (for videos): its prompt function instead
        media = get_image_prompt_string(3, 3, ROWS_PER_TILE, "<fake_token_around_image>", "<image>", "<global-img>")
        theirs = AutoTokenizer.from_pretrained(checkpoint)(
            pipe.manifest.prompt.template.format(media=media, prompt=PROMPT)
        )["input_ids"]
        assert pipe.manifest.prompt.template.startswith("<|im_start|>User:")
    else:
        text = pipe.manifest.prompt.template.format(media="<image>", prompt=PROMPT)
        theirs = Idefics3Processor.from_pretrained(checkpoint)(text=text, images=[Image.open(picture)])["input_ids"][0]
    assert expanded == theirs


def test_components_match_pytorch(checkpoint, exported, picture):
    import onnxruntime as ort
    from transformers import AutoModelForImageTextToText

    manifest = edgemfm.load(exported).manifest
    for name, parity in manifest.report.parity.items():
        assert parity.max_abs_diff <= parity.tolerance * parity.scale, name
    model = AutoModelForImageTextToText.from_pretrained(checkpoint).eval()
    pixels = _image_processor(checkpoint)(Image.open(picture), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        theirs = torch.stack(list(model.model.get_image_features(pixel_values=pixels).pooler_output)).numpy()
    theirs = theirs.reshape(10, ROWS_PER_TILE, -1)
    session = ort.InferenceSession(str(exported / "vision_encoder.onnx"), providers=["CPUExecutionProvider"])
    ours = session.run(None, {"pixel_values": pixels[0].numpy()})[0]
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 1e-4 * max(1.0, np.abs(theirs).max())


def test_greedy_generation_matches_transformers(checkpoint, exported, picture):
    from transformers import AutoModelForImageTextToText

    pipe = edgemfm.load(exported)
    ours = list(pipe.generate_tokens(PROMPT, images=[picture], max_new_tokens=24))
    model = AutoModelForImageTextToText.from_pretrained(checkpoint).eval()
    _, ids = _expanded(pipe, [picture])  # equal to the processor's ids (test above)
    pixels = _image_processor(checkpoint)(Image.open(picture), return_tensors="pt")
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), **pixels, max_new_tokens=24, do_sample=False)
    theirs = [t for t in out[0, len(ids) :].tolist() if t not in pipe.manifest.tokenizer.eos_token_ids]
    assert len(ours) >= 12 and len(set(ours)) > 4  # a real sequence, not an immediate stop or one repeated token
    assert ours == theirs
