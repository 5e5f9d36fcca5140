"""Qwen2-VL dynamic-resolution pre-processing in Pillow and numpy: smart resize, then flat patches.

    image ─► resize to multiples of patch * merge within [min_pixels, max_pixels] (aspect kept)
          ─► rescale, normalize ─► patches [grid_h * grid_w, C * temporal * patch * patch]

Patches are laid out block-major: each merge x merge block of neighbouring patches is contiguous,
so the encoder's patch merger folds consecutive rows. Matches transformers' Qwen2VLImageProcessorPil
(checked in tests/test_qwen2_vl.py).

Example:
    >>> spec = ImagePatches(patch=4, temporal_patch=2, merge=2, min_pixels=64, max_pixels=4096)
    >>> patches, grid = patchify(Image.new("RGB", (320, 240)), image_spec, spec)  # doctest: +SKIP
    >>> patches.shape, grid                                                        # doctest: +SKIP
    ((216, 96), (1, 12, 18))
"""

from __future__ import annotations

import math

import numpy as np

from edgemfm.errors import InputError
from edgemfm.manifest import ImagePatches, ImagePreprocess
from edgemfm.runtimes.preprocess import RESAMPLE, ImageLike, load_image, normalize


def smart_size(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width) divisible by `factor`, with height * width within the pixel budget.

    Example:
        >>> smart_size(240, 320, 28, 56 * 56, 28 * 28 * 1280)
        (252, 308)
    """
    if max(height, width) / min(height, width) > 200:
        raise InputError(f"image of {width}x{height} has an aspect ratio above 200; allowed: up to 200")
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def patchify(item: ImageLike, image: ImagePreprocess, spec: ImagePatches) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Flat float32 patches [n, C * T * P * P] of one image, and its patch grid (t, grid_h, grid_w)."""
    img = load_image(item)
    factor = spec.patch * spec.merge
    h, w = smart_size(img.height, img.width, factor, spec.min_pixels, spec.max_pixels)
    pixels = normalize(np.asarray(img.resize((w, h), resample=RESAMPLE[image.resample])), image)  # [C, h, w]
    c, gh, gw, m, p = pixels.shape[0], h // spec.patch, w // spec.patch, spec.merge, spec.patch
    blocks = pixels.reshape(c, gh // m, m, p, gw // m, m, p).transpose(1, 4, 2, 5, 0, 3, 6)  # gh/m, gw/m, m, m, C, P, P
    frames = np.broadcast_to(blocks[:, :, :, :, :, None], (*blocks.shape[:5], spec.temporal_patch, p, p))
    return np.ascontiguousarray(frames.reshape(gh * gw, -1), dtype=np.float32), (1, gh, gw)
