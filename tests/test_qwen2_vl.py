"""Qwen2-VL and Qwen2.5-VL end to end: patches match the transformers processor, the patch encoder
matches the model at two resolutions, M-RoPE positions match the model's, and greedy generation
with an image matches transformers token for token."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
import torch
from PIL import Image, ImageDraw
from tiny_models import tiny_qwen2_vl

import edgemfm
from edgemfm.cli import main
from edgemfm.exporters.qwen2_vl import patches_preprocess
from edgemfm.runtimes.patches import patchify
from edgemfm.runtimes.positions import patch_positions

PROMPT = "Describe the picture."


# Qwen2.5-VL's full export runs with -m slow; its windowed tower is checked in PyTorch by default.
@pytest.fixture(scope="module", params=["2", pytest.param("2.5", marks=pytest.mark.slow)])
def checkpoint(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / f"tiny-qwen{request.param}-vl"
    return tiny_qwen2_vl(path, seed=1, version=request.param)  # seed 0 of Qwen2-VL ends its answer after 6 tokens


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / f"{checkpoint.name}-host"
    assert main(["export", "--model", str(checkpoint), "--device", "host", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def model(checkpoint):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(checkpoint).eval()


def _image(picture, kind: str) -> Image.Image:
    if kind == "picture":
        return Image.open(picture)
    img = Image.new("RGB", (37, 151), (200, 40, 90))  # tall and small: scaled up to the minimum pixels
    ImageDraw.Draw(img).rectangle((5, 30, 30, 120), fill=(20, 20, 220))
    return img


def _reference(checkpoint, image):
    from transformers import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil.from_pretrained(checkpoint)(images=[image], return_tensors="pt")


@pytest.mark.parametrize("kind", ["picture", "tall"])
def test_patches_match_the_transformers_processor(checkpoint, model, picture, kind):
    image = _image(picture, kind)
    reference = _reference(checkpoint, image)
    patches, grid = patchify(image, *patches_preprocess(checkpoint, model.config.vision_config))
    assert grid == tuple(reference["image_grid_thw"][0].tolist())
    assert patches.shape == tuple(reference["pixel_values"].shape)
    assert np.abs(patches - reference["pixel_values"].numpy()).max() < 1e-5


def test_patch_positions_match_transformers():
    from transformers.vision_utils import get_vision_position_ids

    theirs = get_vision_position_ids(torch.tensor([[1, 6, 10]]), 2).numpy()
    assert (patch_positions(6, 10, 2) == theirs).all()


@pytest.mark.parametrize("kind", ["picture", "tall"])
def test_vision_encoder_matches_pytorch_at_any_resolution(checkpoint, model, exported, picture, kind):
    import onnxruntime as ort

    reference = _reference(checkpoint, _image(picture, kind))
    with torch.no_grad():
        theirs = (
            model.model.get_image_features(reference["pixel_values"], reference["image_grid_thw"])
            .pooler_output[0]
            .numpy()
        )
    _, h, w = reference["image_grid_thw"][0].tolist()
    session = ort.InferenceSession(str(exported / "vision_encoder.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"pixel_values": reference["pixel_values"].numpy(), "patch_positions": patch_positions(h, w, 2)}
    ours = session.run(None, feeds)[0]
    assert ours.shape == theirs.shape == (h * w // 4, 84)
    assert np.abs(ours - theirs).max() <= 1e-4 * max(1.0, np.abs(theirs).max())


def _expanded(pipe, prompt, images):
    """Our prompt ids with the image slot expanded to its rows, as the Qwen2-VL processor writes them."""
    media = pipe.prepare({"image": images})
    ids = pipe.prompt_ids(prompt, media)
    token = pipe.manifest.prompt.media["image"].token_id
    rows = [t * h * w for p in media.get("image", []) for t, h, w in (c.grid for c in p.calls)]
    counts = iter(rows)
    return [t for i in ids for t in ([i] * next(counts) if i == token else [i])], token


def test_mrope_positions_match_the_model(model, exported, picture):
    from edgemfm.runtimes.positions import mrope_prompt

    pipe = edgemfm.load(exported)
    ids, token = _expanded(pipe, PROMPT, [picture])
    grid = pipe.prepare({"image": [picture]})["image"][0].calls[0].grid
    start = ids.index(token)
    n = grid[0] * grid[1] * grid[2]
    ours, shift = mrope_prompt([start, grid, len(ids) - start - n])
    input_ids = torch.tensor([ids])
    theirs, delta = model.model.get_rope_index(
        input_ids,
        mm_token_type_ids=(input_ids == token).int(),
        image_grid_thw=torch.tensor([[grid[0], grid[1] * 2, grid[2] * 2]]),
    )
    assert (ours == theirs.numpy()[:, 0]).all() and shift == int(delta)


def test_components_match_pytorch(exported):
    report = edgemfm.load(exported).manifest.report.parity
    assert set(report) == {"vision_encoder", "token_embedding", "text_decoder"}
    for name, parity in report.items():
        assert parity.max_abs_diff <= parity.tolerance * parity.scale, name


@pytest.mark.parametrize("kind", ["picture", "text", "picture in chunks"])
def test_greedy_generation_matches_transformers(checkpoint, model, exported, picture, kind):
    # in chunks: the prompt's 3-D positions cut across prefill calls of 16 rows
    pipe = edgemfm.load(exported, prefill_chunk=16) if kind.endswith("chunks") else edgemfm.load(exported)
    images = [picture] if kind.startswith("picture") else []
    ours = list(pipe.generate_tokens(PROMPT, images=images, max_new_tokens=24))
    ids, token = _expanded(pipe, PROMPT, images)
    input_ids = torch.tensor([ids])
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if images:
        reference = _reference(checkpoint, Image.open(picture))
        inputs |= {**reference, "mm_token_type_ids": (input_ids == token).int()}
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    theirs = [t for t in out[0, len(ids) :].tolist() if t not in pipe.manifest.tokenizer.eos_token_ids]
    assert len(ours) >= 12 and len(set(ours)) > 4  # a real sequence, not an immediate stop or one repeated token
    assert ours == theirs


@pytest.mark.parametrize("kind", ["picture", "tall"])
def test_windowed_patch_encoder_matches_qwen2_5_vl(tmp_path_factory, picture, kind):
    """The exported module of Qwen2.5-VL (window masks from patch positions, no reordering) against
    the model's own windowed tower, in PyTorch, at two resolutions."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from edgemfm.exporters.qwen2_vl import split

    path = tiny_qwen2_vl(tmp_path_factory.mktemp("models") / "qwen2.5-vl", seed=1, version="2.5")
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path).eval()
    encoder = split(model, path).units["vision_encoder"].module
    assert encoder.window == 4 and encoder.full_blocks == {2}  # 16 px windows of 4 px patches
    reference = _reference(path, _image(picture, kind))
    _, h, w = reference["image_grid_thw"][0].tolist()
    with torch.no_grad():
        theirs = model.model.get_image_features(reference["pixel_values"], reference["image_grid_thw"]).pooler_output[0]
        ours = encoder(reference["pixel_values"], torch.from_numpy(patch_positions(h, w, 2)))
    assert ours.shape == theirs.shape and h > 4 and w > 4  # several windows each way
    assert (ours - theirs).abs().max() <= 1e-5 * max(1.0, theirs.abs().max())


def test_static_int8_calibrates_the_patch_encoder_across_patch_counts(checkpoint, exported, picture, tmp_path):
    """TensorRT's static int8 (percentile ranges, symmetric activations): the calibration images give the
    patch encoder different patch counts, each collected on its own and the histograms merged; the int8
    encoder stays close to float on images it was not calibrated on."""
    import onnxruntime as ort

    from edgemfm.bundle import read_manifest
    from edgemfm.configs import QuantizeConfig
    from edgemfm.profiles import load_profile
    from edgemfm.quantizers.calibration import component_feeds
    from edgemfm.quantizers.quantize import quantize
    from edgemfm.quantizers.units import weighted_units

    manifest = read_manifest(exported)
    feeds = component_feeds(exported, manifest)["vision_encoder"]
    assert len({f["pixel_values"].shape for f in feeds}) > 1  # what ONNX Runtime's calibrator cannot stack
    stage = tmp_path / "stage"
    shutil.copytree(exported, stage)
    m = quantize(stage, manifest, load_profile("jetson"), QuantizeConfig(precision="int8"), tmp_path / "scratch")
    q = m.report.quantization["vision_encoder"]
    assert [s.method for s in q.schemes] == ["percentile"]
    # every weighted unit: Qwen2-VL's patch embedding, 2 blocks x (qkv, proj, fc1, fc2) and the merger's 2 linears
    units, _ = weighted_units(onnx.load(str(exported / "vision_encoder.onnx")), "vision_encoder")
    g = onnx.load(str(stage / "vision_encoder.onnx")).graph
    gemms = [n for n in g.node if n.op_type == "Gemm"]
    dequantized = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear"}
    assert q.quantized_units == len(gemms) == len(units) >= 11
    assert all(n.input[0] in dequantized and n.input[1] in dequantized for n in gemms)
    zero_points = {i.name: i.data_type for i in g.initializer}
    assert {zero_points[n.input[2]] for n in g.node if n.op_type == "QuantizeLinear"} == {onnx.TensorProto.INT8}
    assert q.cosine >= 0.99
    sessions = [
        ort.InferenceSession(str(d / "vision_encoder.onnx"), providers=["CPUExecutionProvider"])
        for d in (exported, stage)
    ]
    for kind in ("picture", "tall"):
        reference = _reference(checkpoint, _image(picture, kind))
        _, h, w = reference["image_grid_thw"][0].tolist()
        feeds = {"pixel_values": reference["pixel_values"].numpy(), "patch_positions": patch_positions(h, w, 2)}
        ours, theirs = (s.run(None, feeds)[0].ravel() for s in sessions)
        cosine = ours @ theirs / (np.linalg.norm(ours) * np.linalg.norm(theirs))
        print(f"{kind} {h}x{w} patches: int8 vs float cosine {cosine:.4f}")
        assert cosine >= 0.98, kind
