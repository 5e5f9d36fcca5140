"""Pre-processing exactly as the checkpoint's own processor: every supported class, both saved layouts, odd sizes.

Each processor is saved as users have it: alone (`preprocessor_config.json`, the Hub's older layout)
or inside its whole processor (`processor_config.json` with the settings nested, what transformers 5
writes). The reference is transformers' own Pil processor loaded back from the same folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from tiny_models import IDEFICS3_SPECIALS, QWEN2_VL_SPECIALS, _tokenizer_with

from edgemfm.errors import ExportError

SIZES = [(37, 61), (300, 113)]  # width x height: tall and small, wide and large


def _image(size: tuple[int, int]) -> Image.Image:
    pixels = np.random.default_rng(size[0]).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def _tokenizer():
    from transformers import PreTrainedTokenizerFast

    tok, _ = _tokenizer_with(["<|AUDIO|>", *IDEFICS3_SPECIALS, *QWEN2_VL_SPECIALS])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def _save(processor, folder: Path, layout: str, whole: str) -> Path:
    """`processor` saved alone ("legacy") or inside the `whole` processor class ("nested")."""
    import transformers

    if layout == "legacy":
        processor.save_pretrained(folder)
    elif whole == "Qwen2VLProcessor":  # its constructor needs torchvision (videos): what its save_pretrained writes
        folder.mkdir(parents=True)
        saved = {"image_processor": processor.to_dict(), "processor_class": whole}
        (folder / "processor_config.json").write_text(json.dumps(saved))
    else:
        kind = "feature_extractor" if whole == "WhisperProcessor" else "image_processor"
        getattr(transformers, whole)(**{kind: processor}, tokenizer=_tokenizer()).save_pretrained(folder)
    assert (folder / "preprocessor_config.json").is_file() == (layout == "legacy")
    return folder


def _fixed(cls: str, **settings):
    """(make, ours, reference) for a CLIP- or SigLIP-style processor on a LLaVA tower."""
    import transformers

    def ours(folder, image):
        from edgemfm.exporters.processor_config import fixed_size_preprocess
        from edgemfm.runtimes.preprocess import preprocess_image

        return preprocess_image(image, fixed_size_preprocess(folder, "clip_vision_model", 30))

    def reference(folder, image):
        return getattr(transformers, f"{cls}Pil").from_pretrained(folder)(image, return_tensors="np")["pixel_values"][0]

    return lambda: getattr(transformers, f"{cls}Pil")(**settings), "LlavaProcessor", ours, reference


def _tiles(cls: str):
    import transformers

    def ours(folder, image):
        from edgemfm.exporters.idefics3 import splitting_preprocess
        from edgemfm.runtimes.tiling import split_image

        return split_image(image, *splitting_preprocess(folder))[0]

    def reference(folder, image):
        return getattr(transformers, f"{cls}Pil").from_pretrained(folder)(image, return_tensors="np")["pixel_values"][0]

    settings = dict(size={"longest_edge": 90}, max_image_size={"longest_edge": 30}, resample=2, image_mean=[0.4] * 3)
    return lambda: getattr(transformers, f"{cls}Pil")(**settings), "Idefics3Processor", ours, reference


def _patches():
    from transformers import Qwen2VLImageProcessorPil

    vision = SimpleNamespace(patch_size=5, spatial_merge_size=2, temporal_patch_size=2)

    def ours(folder, image):
        from edgemfm.exporters.qwen2_vl import patches_preprocess
        from edgemfm.runtimes.patches import patchify

        return patchify(image, *patches_preprocess(folder, vision))[0]

    def reference(folder, image):
        return Qwen2VLImageProcessorPil.from_pretrained(folder)(images=[image], return_tensors="np")["pixel_values"]

    settings = dict(patch_size=5, merge_size=2, size={"shortest_edge": 40 * 40, "longest_edge": 90 * 90})
    return lambda: Qwen2VLImageProcessorPil(**settings, do_normalize=False), "Qwen2VLProcessor", ours, reference


CASES = {
    "CLIP": _fixed("CLIPImageProcessor", size={"shortest_edge": 34}, crop_size={"height": 30, "width": 30}),
    "CLIP bilinear, not normalized": _fixed(
        "CLIPImageProcessor", size={"shortest_edge": 30}, crop_size=30, resample=2, do_normalize=False
    ),
    "CLIP height x width, no crop": _fixed(
        "CLIPImageProcessor", size={"height": 30, "width": 30}, do_center_crop=False
    ),
    "SigLIP": _fixed("SiglipImageProcessor", size={"height": 30, "width": 30}),
    "SigLIP not rescaled": _fixed("SiglipImageProcessor", size={"height": 30, "width": 30}, do_rescale=False),
    "Idefics3": _tiles("Idefics3ImageProcessor"),
    "SmolVLM": _tiles("SmolVLMImageProcessor"),
    "Qwen2-VL": _patches(),
}


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("layout", ["legacy", "nested"])
@pytest.mark.parametrize("case", CASES)
def test_images_match_the_checkpoints_processor(case, layout, size, tmp_path):
    make, whole, ours, reference = CASES[case]
    folder = _save(make(), tmp_path / "model", layout, whole)
    image = _image(size)
    got, want = ours(folder, image), reference(folder, image)
    assert got.shape == want.shape
    assert np.abs(got - want).max() < 1e-4 * max(1.0, np.abs(want).max())  # 255-scale when not rescaled


@pytest.mark.parametrize("samples", [12345, 40000])
@pytest.mark.parametrize("layout", ["legacy", "nested"])
def test_audio_matches_the_checkpoints_feature_extractor(layout, samples, tmp_path):
    from transformers import WhisperFeatureExtractor

    from edgemfm.exporters.whisper import audio_preprocess
    from edgemfm.runtimes.audio import preprocess_audio

    extractor = WhisperFeatureExtractor(feature_size=64, chunk_length=4, hop_length=128)
    folder = _save(extractor, tmp_path / "model", layout, "WhisperProcessor")
    clip = np.random.default_rng(samples).standard_normal(samples).astype(np.float32) * 0.1
    # an encoder that takes this extractor's windows: 64 mels x (4 s / hop 128 = 500 frames = 250 positions x 2)
    pre = audio_preprocess(folder, SimpleNamespace(num_mel_bins=64, max_source_positions=250))
    assert (pre.n_mels, pre.hop_length, pre.n_samples) == (64, 128, 4 * 16000)
    want = WhisperFeatureExtractor.from_pretrained(folder)(clip, sampling_rate=16000, return_tensors="np")
    got = preprocess_audio(clip, pre)[0]
    assert got.shape == want["input_features"][0].shape
    assert np.abs(got - want["input_features"][0]).max() < 1e-4


@pytest.mark.parametrize(
    "saved, message",
    [
        ({"image_processor_type": "ViTImageProcessor"}, "processor class 'ViTImageProcessor' is not supported"),
        ({"feature_extractor_type": "ViTFeatureExtractor"}, "processor class 'ViTFeatureExtractor' is not supported"),
        ({"image_processor_type": "CLIPImageProcessor", "resample": 7}, "resample 7 is not supported"),
        (
            {"image_processor_type": "CLIPImageProcessor", "do_center_crop": False},
            "CLIPImageProcessor with do_center_crop false needs a height and width resize",
        ),
    ],
)
def test_a_processor_edgemfm_does_not_follow_is_a_one_line_error(saved, message, tmp_path):
    from edgemfm.exporters.processor_config import fixed_size_preprocess

    (tmp_path / "preprocessor_config.json").write_text(json.dumps(saved))
    with pytest.raises(ExportError, match=message) as info:
        fixed_size_preprocess(tmp_path, "clip_vision_model", 30)
    assert "\n" not in str(info.value)
    if "ViT" in message:
        assert "known: CLIPImageProcessor, SiglipImageProcessor" in str(info.value)


def test_without_processor_settings_the_towers_own_class_is_used(tmp_path):
    from edgemfm.exporters.processor_config import fixed_size_preprocess

    siglip = fixed_size_preprocess(tmp_path, "siglip_vision_model", 30)
    assert (siglip.resize, siglip.height, siglip.width, siglip.center_crop, siglip.mean) == (
        "height_width",
        30,
        30,
        False,
        (0.5, 0.5, 0.5),
    )
    with pytest.raises(ExportError, match="processor class None is not supported"):
        fixed_size_preprocess(tmp_path, "dinov2", 30)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"feature_extractor_type": "CLIPFeatureExtractor"}))
    assert fixed_size_preprocess(tmp_path, "siglip_vision_model", 30).resize == "shortest_edge"  # the file's class
