"""Idefics3 / SmolVLM image splitting in Pillow and numpy: a grid of square tiles plus a global view.

    image ─► resize longest edge to `longest_edge` ─► resize up to multiples of `tile`
          ─► cut rows x cols tiles (row by row) ─► + the whole image resized to tile x tile

Each tile is one vision-encoder call, so an image streams tile by tile. Matches transformers'
Idefics3ImageProcessorPil (checked in tests/test_idefics3.py); an image that already fits one
tile is not split and gives one view.

Example:
    >>> spec = ImageSplitting(90, 30, "<t>", "\\n", "\\n<g>", "<g>", "</t>")
    >>> tiles, rows, cols = split_image(Image.new("RGB", (320, 240)), image_spec, spec)  # doctest: +SKIP
    >>> tiles.shape, rows, cols                                                          # doctest: +SKIP
    ((10, 3, 30, 30), 3, 3)
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from edgemfm.manifest import ImagePreprocess, ImageSplitting
from edgemfm.runtimes.preprocess import RESAMPLE, ImageLike, load_image, normalize

MAX_IMAGE_SIZE = 4096  # the processor's absolute cap on either side


def _fit_longest_edge(width: int, height: int, longest: int) -> tuple[int, int]:
    """The processor's first resize: longest edge to `longest`, the other side made even."""
    aspect = width / height
    if width >= height:
        width, height = longest, int(longest / aspect)
        height += height % 2
    else:
        height, width = longest, int(longest * aspect)
        width += width % 2
    width, height = max(width, 1), max(height, 1)
    if max(width, height) > MAX_IMAGE_SIZE:  # only when `longest` itself is above the cap
        scale = MAX_IMAGE_SIZE / max(width, height)
        width, height = max(int(width * scale), 1), max(int(height * scale), 1)
    return width, height


def _to_tile_multiples(width: int, height: int, tile: int) -> tuple[int, int]:
    """Round both sides up to multiples of `tile`, the short side derived from the long one as the processor does."""
    aspect = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = math.ceil(int(width / aspect) / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = math.ceil(int(height * aspect) / tile) * tile
    return width, height


def split_image(item: ImageLike, image: ImagePreprocess, spec: ImageSplitting) -> tuple[np.ndarray, int, int]:
    """Float32 tiles [n, 3, tile, tile] (row-major grid, then the global view), and the grid's rows and cols.

    rows == cols == 0 when the image fits one tile and was not split (n == 1).
    """
    resample = RESAMPLE[image.resample]
    img = load_image(item)
    img = img.resize(_fit_longest_edge(*img.size, spec.longest_edge), resample=resample)
    img = img.resize(_to_tile_multiples(*img.size, spec.tile), resample=resample)
    width, height = img.size
    views: list[Image.Image] = []
    rows = cols = 0
    if width > spec.tile or height > spec.tile:
        rows, cols = height // spec.tile, width // spec.tile
        boxes = [
            (c * spec.tile, r * spec.tile, (c + 1) * spec.tile, (r + 1) * spec.tile)
            for r in range(rows)
            for c in range(cols)
        ]
        views = [img.crop(box) for box in boxes]
        img = img.resize((spec.tile, spec.tile), resample=resample)
    views.append(img)
    return np.stack([normalize(np.asarray(v), image) for v in views]), rows, cols


def tiles_text(rows: int, cols: int, placeholder: str, spec: ImageSplitting) -> str:
    """The prompt text of one image: each tile's marker and placeholder, then the global view's.

    Example:
        >>> tiles_text(1, 2, "<image>", ImageSplitting(90, 30, "<r{row}c{col}>", "|", "G", "S", "E"))
        '<r1c1><image><r1c2><image>|G<image>E'
    """
    if rows == cols == 0:
        return f"{spec.single}{placeholder}{spec.end}"
    grid = "".join(
        "".join(spec.tile_text.format(row=r + 1, col=c + 1) + placeholder for c in range(cols)) + spec.row_end
        for r in range(rows)
    )
    return f"{grid}{spec.split_global}{placeholder}{spec.end}"
