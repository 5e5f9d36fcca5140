"""Image pre-processing in numpy and Pillow, matching transformers' image processors (Pil backend).

resize (shortest edge keeping the aspect, or to height x width, or none) -> centre crop (or none)
-> rescale -> normalize -> CHW float32. An image is always made RGB: the encoders take 3 channels
(a processor's do_convert_rgb false changes nothing for an RGB image, and fails on the others).

Example:
    >>> spec = ImagePreprocess(224, 224, "bicubic", 1 / 255, (0.5,) * 3, (0.5,) * 3)
    >>> preprocess_image(Image.new("RGB", (640, 480)), spec).shape
    (3, 224, 224)
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgemfm.errors import InputError
from edgemfm.manifest import ImagePreprocess
from edgemfm.runtimes.audio import preprocess_audio

RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

ImageLike = str | Path | Image.Image | np.ndarray


def load_image(item: ImageLike) -> Image.Image:
    """An RGB Pillow image from a path, a Pillow image or an HxWx3 uint8 array."""
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
            raise InputError(f"image array must be HxWx3 uint8, got {item.dtype} {item.shape}")
        return Image.fromarray(item, "RGB")
    if not isinstance(item, (str, Path)):
        raise InputError(f"image item {item!r} is a {type(item).__name__}; allowed: a path, a PIL image or an array")
    path = Path(item)
    if path.is_dir():
        raise InputError(f"image path {str(path)!r} is a directory; allowed: an image file")
    if not path.is_file():
        raise InputError(f"image file {str(path)!r} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # refused, not decoded with a warning
            with Image.open(path) as img:  # reads the header only: the size is known before decoding
                _check_pixels(img.size, path)
                return img.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        claimed = str(e).split(" exceeds")[0]  # Pillow: "Image size (400000000 pixels) exceeds limit ..."
        raise InputError(
            f"image {str(path)!r} is too large ({claimed}); allowed: at most {Image.MAX_IMAGE_PIXELS} pixels"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):  # Pillow's decoders raise these on bad data
        raise InputError(
            f"{str(path)!r} is not an image Pillow can read (PNG, JPEG, BMP, GIF, WebP, TIFF ...)"
        ) from None


def _check_pixels(size: tuple[int, int], path: Path) -> None:
    """Pillow's own bomb guard only warns below twice its limit; decoding 89 M pixels already costs 268 MB."""
    w, h = size
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and w * h > limit:
        raise InputError(f"image {str(path)!r} is {w}x{h} pixels; allowed: at most {limit} pixels")


def _resize_shortest_edge(img: Image.Image, size: int, resample: str) -> Image.Image:
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return img.resize((new_w, new_h), resample=RESAMPLE[resample])


def normalize(pixels: np.ndarray, spec: ImagePreprocess) -> np.ndarray:
    """HxWx3 pixel values (0..255) -> rescaled, normalized float32 [3, H, W]."""
    pixels = np.asarray(pixels, dtype=np.float32)
    pixels = (pixels * spec.rescale - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)


def _resize(img: Image.Image, spec: ImagePreprocess) -> Image.Image:
    if spec.resize == "shortest_edge":
        return _resize_shortest_edge(img, spec.size, spec.resample)
    if spec.resize == "height_width":
        return img.resize((spec.width, spec.height), resample=RESAMPLE[spec.resample])
    return img


def preprocess_image(item: ImageLike, spec: ImagePreprocess) -> np.ndarray:
    """One image -> a float32 [3, H, W] array ready for the vision encoder ([3, crop, crop] with a crop).

    Example:
        >>> siglip = ImagePreprocess(0, 0, "bicubic", 1 / 255, (0.5,) * 3, (0.5,) * 3, "height_width", 32, 48, False)
        >>> preprocess_image(Image.new("RGB", (61, 37)), siglip).shape
        (3, 32, 48)
    """
    pixels = np.asarray(_resize(load_image(item), spec))
    if not spec.center_crop:
        return normalize(pixels, spec)
    h, w = pixels.shape[:2]
    if h < spec.crop or w < spec.crop:  # only without a resize: the processor would pad, the encoder was not fed that
        raise InputError(
            f"image {w}x{h} is smaller than the {spec.crop}x{spec.crop} crop this bundle's processor takes"
        )
    top, left = (h - spec.crop) // 2, (w - spec.crop) // 2
    return normalize(pixels[top : top + spec.crop, left : left + spec.crop], spec)


# media kind -> (item, the manifest's Preprocess) -> (one encoder input without the batch axis,
# its unpadded length on the last axis for encoders that mask padding, or None)
PREPROCESSORS = {
    "image": lambda item, pre: (preprocess_image(item, pre.image), None),
    "audio": lambda item, pre: preprocess_audio(item, pre.audio),
}
