"""Idefics3 / SmolVLM end to end: tiles match the transformers processor, the tile encoder matches
the model, and greedy generation with an image matches transformers token for token."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import edgemfm
from edgemfm.cli import main
from edgemfm.exporters.idefics3 import splitting_preprocess
from edgemfm.runtimes.tiling import split_image
from tiny_models import tiny_idefics3

PROMPT = "Describe the picture."
ROWS_PER_TILE = 4  # (30 px / 5 px patches)^2 / 3^2


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_idefics3(tmp_path_factory.mktemp("models") / "tiny-idefics3")


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "tiny-idefics3-host"
    assert main(["export", "--model", str(checkpoint), "--device", "host", "--out", str(out)]) == 0
    return out


def _processor(checkpoint):
    from transformers import Idefics3Processor

    return Idefics3Processor.from_pretrained(checkpoint)


def _wide_strip() -> Image.Image:
    img = Image.new("RGB", (411, 97), (10, 200, 90))
    ImageDraw.Draw(img).ellipse((50, 10, 200, 90), fill=(240, 240, 20))
    return img


@pytest.mark.parametrize(("make", "longest_edge", "views"), [("picture", 90, 10), ("wide", 90, 4), ("picture", 30, 1)])
def test_tiles_match_the_transformers_processor(checkpoint, picture, make, longest_edge, views):
    """3x3 tiles + global, 1x3 + global, and (longest edge = one tile) a single view."""
    image = Image.open(picture) if make == "picture" else _wide_strip()
    processor = _processor(checkpoint).image_processor
    reference = processor(image, size={"longest_edge": longest_edge}, return_tensors="np", return_row_col_info=True)
    pre, splitting = splitting_preprocess(checkpoint)
    tiles, rows, cols = split_image(image, pre, dataclasses.replace(splitting, longest_edge=longest_edge))
    assert (rows, cols) == (reference["rows"][0][0], reference["cols"][0][0])
    assert tiles.shape == reference["pixel_values"][0].shape == (views, 3, 30, 30)
    assert np.abs(tiles - reference["pixel_values"][0]).max() < 1e-5


def test_prompt_matches_the_transformers_processor(checkpoint, exported, picture):
    pipe = edgemfm.load(exported)
    media = pipe.prepare({"image": [picture]})
    ours = pipe.prompt_ids(PROMPT, media)
    image_token = pipe.manifest.prompt.media["image"].token_id
    assert ours.count(image_token) == 10  # one slot per tile
    expanded = [t for i in ours for t in ([i] * ROWS_PER_TILE if i == image_token else [i])]
    text = pipe.manifest.prompt.template.format(media="<image>", prompt=PROMPT)
    assert expanded == _processor(checkpoint)(text=text, images=[Image.open(picture)])["input_ids"][0]


def test_components_match_pytorch(checkpoint, exported, picture):
    import onnxruntime as ort
    from transformers import Idefics3ForConditionalGeneration

    manifest = edgemfm.load(exported).manifest
    for name, parity in manifest.report["parity"].items():
        assert parity["max_abs_diff"] <= parity["tolerance"] * parity["scale"], name
    model = Idefics3ForConditionalGeneration.from_pretrained(checkpoint).eval()
    pixels = _processor(checkpoint).image_processor(Image.open(picture), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        theirs = torch.stack(list(model.model.get_image_features(pixel_values=pixels).pooler_output)).numpy()
    theirs = theirs.reshape(10, ROWS_PER_TILE, -1)
    session = ort.InferenceSession(str(exported / "vision_encoder.onnx"), providers=["CPUExecutionProvider"])
    ours = session.run(None, {"pixel_values": pixels[0].numpy()})[0]
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 1e-4 * max(1.0, np.abs(theirs).max())


def test_greedy_generation_matches_transformers(checkpoint, exported, picture):
    from transformers import Idefics3ForConditionalGeneration

    pipe = edgemfm.load(exported)
    ours = list(pipe.generate_tokens(PROMPT, images=[picture], max_new_tokens=24))
    model = Idefics3ForConditionalGeneration.from_pretrained(checkpoint).eval()
    text = pipe.manifest.prompt.template.format(media="<image>", prompt=PROMPT)
    inputs = _processor(checkpoint)(text=text, images=[Image.open(picture)], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    theirs = [t for t in out[0, inputs["input_ids"].shape[1] :].tolist() if t not in pipe.manifest.tokenizer.eos_token_ids]
    assert len(ours) >= 12 and len(set(ours)) > 4  # a real sequence, not an immediate stop or one repeated token
    assert ours == theirs
