"""Read a checkpoint's image processor or feature extractor settings as transformers does, by class.

transformers 5 writes them nested in `processor_config.json` ("image_processor", "feature_extractor"
or "audio_processor") when a whole processor is saved; older checkpoints keep them in
`preprocessor_config.json`. Like `AutoImageProcessor.from_pretrained`, the nested settings win.
A key the file leaves out takes its processor class's default (never another class's), and a
class edgemfm does not know is an export error naming it and the known ones.

Example:
    >>> image_processor_config(Path("models/smolvlm"))["max_image_size"]  # doctest: +SKIP
    {'longest_edge': 512}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgemfm.errors import ExportError, InputError
from edgemfm.manifest import ImagePreprocess

LEGACY, NESTED = "preprocessor_config.json", "processor_config.json"
# PIL's resample codes (PILImageResampling) as written in the configs
RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
IMAGENET_STANDARD = (0.5, 0.5, 0.5)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# where a processor's settings sit in processor_config.json, by kind
NESTED_KEYS = {"image": ("image_processor",), "audio": ("feature_extractor", "audio_processor")}


def processor_settings(model_dir: Path, kind: str = "image") -> dict[str, Any] | None:
    """The "image" or "audio" processor's saved settings of `model_dir`, None when it has none.

    Example:
        >>> processor_settings(Path("models/whisper-tiny"), "audio")["feature_extractor_type"]  # doctest: +SKIP
        'WhisperFeatureExtractor'
    """
    nested, legacy = model_dir / NESTED, model_dir / LEGACY
    if nested.is_file():
        saved = json.loads(nested.read_text())
        for key in NESTED_KEYS[kind]:
            if isinstance(saved.get(key), dict):
                return saved[key]
    return json.loads(legacy.read_text()) if legacy.is_file() else None


def image_processor_config(model_dir: Path) -> dict[str, Any]:
    """The image processor's settings of `model_dir`; InputError when it has none."""
    if (cfg := processor_settings(model_dir, "image")) is None:
        raise InputError(f"{model_dir}: no image processor settings ({LEGACY} or {NESTED})")
    return cfg


def processor_class(cfg: dict[str, Any], known: tuple[str, ...], model_dir: Path, default: str | None = None) -> str:
    """The settings' processor class, if edgemfm knows it; `default` where the settings name none.

    Its "Fast" and "Pil" backends are the same processor, and an image processor's old name
    (`CLIPFeatureExtractor`) is the new one, as `AutoImageProcessor` reads them.
    """
    name = cfg.get("image_processor_type") or cfg.get("feature_extractor_type") or default
    base = name.removesuffix("Fast").removesuffix("Pil") if name else None
    if base not in known and base and base.replace("FeatureExtractor", "ImageProcessor") in known:
        base = base.replace("FeatureExtractor", "ImageProcessor")
    if base not in known:
        raise ExportError(
            f"{model_dir}: processor class {name!r} is not supported for this model; known: {', '.join(known)}"
        )
    return base


def resample(cfg: dict[str, Any], default: int) -> str:
    """The resize filter's name for the runtime (the config holds PIL's code)."""
    code = cfg.get("resample", default)
    if code not in RESAMPLE:
        raise ExportError(f"resample {code!r} is not supported; known: {', '.join(map(str, RESAMPLE))}")
    return RESAMPLE[code]


def scaling(
    cfg: dict[str, Any], mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[float, tuple[float, ...], tuple[float, ...]]:
    """(rescale, mean, std) with do_rescale / do_normalize false folded in as 1.0 and 0 / 1."""
    rescale = float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 1.0
    if not cfg.get("do_normalize", True):
        return rescale, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return rescale, _triple(cfg.get("image_mean", mean)), _triple(cfg.get("image_std", std))


def _triple(value: Any) -> tuple[float, float, float]:
    values = [float(value)] * 3 if isinstance(value, int | float) else [float(v) for v in value]
    return (values[0], values[1], values[2])


@dataclass(frozen=True)
class FixedSize:
    """A processor class whose images reach the tower at one size: its defaults (the class attributes)."""

    size: dict[str, int]  # {"shortest_edge": n} or {"height": h, "width": w}
    center_crop: bool  # do_center_crop's default
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: int = 3  # bicubic


# transformers' CLIPImageProcessor and SiglipImageProcessor class attributes (image_processing_pil_*.py)
FIXED_SIZE = {
    "CLIPImageProcessor": FixedSize({"shortest_edge": 224}, True, CLIP_MEAN, CLIP_STD),
    "SiglipImageProcessor": FixedSize({"height": 224, "width": 224}, False, IMAGENET_STANDARD, IMAGENET_STANDARD),
}
# a vision tower's model_type -> its processor class, for a checkpoint saved without processor settings
TOWER_PROCESSOR = {"clip_vision_model": "CLIPImageProcessor", "siglip_vision_model": "SiglipImageProcessor"}


def fixed_size_preprocess(model_dir: Path, tower: str, image_size: int) -> ImagePreprocess:
    """A CLIP- or SigLIP-style processor's settings (resize, crop, scaling) for a tower of `image_size` pixels.

    Without processor settings the tower's own processor class is used at the tower's size.

    Example:
        >>> fixed_size_preprocess(Path("models/llava-siglip"), "siglip_vision_model", 384).resize  # doctest: +SKIP
        'height_width'
    """
    cfg = processor_settings(model_dir, "image")
    name = processor_class(cfg or {}, tuple(FIXED_SIZE), model_dir, TOWER_PROCESSOR.get(tower))
    default = FIXED_SIZE[name]
    if cfg is None:
        cfg = {"size": {k: image_size for k in default.size}, "crop_size": {"height": image_size, "width": image_size}}
    size = cfg.get("size", default.size)
    size = {"shortest_edge": size} if isinstance(size, int) else size  # both classes: default_to_square False
    crop = cfg.get("crop_size", {"height": 224, "width": 224})  # CLIP's default (SigLIP does not crop)
    crop = {"height": crop, "width": crop} if isinstance(crop, int) else crop
    do_resize, do_crop = cfg.get("do_resize", True), cfg.get("do_center_crop", default.center_crop)
    mode = "none" if not do_resize else "shortest_edge" if "shortest_edge" in size else "height_width"
    if mode == "height_width" and not {"height", "width"} <= set(size):
        raise ExportError(
            f"{model_dir}: {name} size {size} is not supported; allowed: shortest_edge, or height and width"
        )
    if do_crop and crop["height"] != crop["width"]:
        raise ExportError(f"{model_dir}: crop_size {crop} is not square; allowed: height == width")
    if not do_crop and mode != "height_width":  # the image's own aspect would reach a fixed-size tower
        raise ExportError(f"{model_dir}: {name} with do_center_crop false needs a height and width resize; got {size}")
    rescale, mean, std = scaling(cfg, default.mean, default.std)
    return ImagePreprocess(
        size=int(size.get("shortest_edge", 0)),
        crop=int(crop["height"]) if do_crop else 0,
        resample=resample(cfg, default.resample),
        rescale=rescale,
        mean=mean,
        std=std,
        resize=mode,
        height=int(size.get("height", 0)) if mode == "height_width" else 0,
        width=int(size.get("width", 0)) if mode == "height_width" else 0,
        center_crop=do_crop,
    )


def input_size(pre: ImagePreprocess) -> tuple[int, int]:
    """(height, width) of the images `pre` gives the vision encoder."""
    return (pre.crop, pre.crop) if pre.center_crop else (pre.height, pre.width)
