"""A visual-token budget: at most N decoder rows per image (per tile where the family tiles), cut inside the export.

`export --visual-tokens N` asks the family's `visual_tokens` capability (exporters/family.py) to
rewrite its split before anything is written, so the exported encoder graph emits the reduced rows
and calibration, parity and the runtime all see the graph the decoder will run with. Two methods:

- `grid_pool` (the demo, LLaVA, Idefics3/SmolVLM): an encoder whose rows are a side x side grid
  (the demo's pooled map, a CLIP/SigLIP patch grid after the projector, an Idefics3 tile after its
  pixel-shuffle connector) gets an average pool over a x b cells of that grid appended, a and b
  dividing the side, as LLaVA-OneVision pools its video frames' projected rows. N must be
  (side / a) x (side / b); anything else is refused naming the values that exist. Idefics3's own
  merge (the connector's pixel shuffle) cannot go further without new projector weights, so its
  tiles are pooled after the connector like the others.

      rows [n, side*side, d] ─► [n, side/a, a, side/b, b, d] ─► mean over (a, b) ─► [n, N, d]

- `pixel_budget` (Qwen2-VL, Qwen2.5-VL): the family's own knob. Each decoder row is one merged
  (patch x merge)^2 pixel square, and the processor resizes an image to at most `max_pixels`, so
  N rows is `max_pixels = N * (patch * merge)^2`: an image never becomes more than N rows (a small
  one fewer), and the M-RoPE positions stay the model's own. N below the processor's `min_pixels`
  floor is refused.

Example:
    >>> allowed_grid(4)
    (1, 2, 4, 8, 16)
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from edgemfm.errors import InputError

ENCODER = "vision_encoder"  # the component whose rows are cut


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def allowed_grid(side: int, width: int | None = None) -> tuple[int, ...]:
    """Every row count an a x b pooling of a side x width grid gives (a dividing side, b width; square by default)."""
    width = side if width is None else width
    return tuple(sorted({(side // a) * (width // b) for a in _divisors(side) for b in _divisors(width)}))


def pool_shape(side: int, n: int, width: int | None = None) -> tuple[int, int]:
    """The (a, b) cells pooled into one row to give `n` rows: the squarest such block, wider first.

    Example:
        >>> pool_shape(2, 2), pool_shape(1, 1, width=2)
        ((1, 2), (1, 2))
    """
    width = side if width is None else width
    shapes = [(a, b) for a in _divisors(side) for b in _divisors(width) if (side // a) * (width // b) == n]
    assert shapes, (side, width, n)
    return min(shapes, key=lambda ab: (abs(ab[0] - ab[1]), ab[0]))


def _refuse(n: int, family: str, allowed: tuple[int, ...] | str) -> InputError:
    text = allowed if isinstance(allowed, str) else ", ".join(map(str, allowed))
    return InputError(f"--visual-tokens {n} is not available for {family}; allowed: {text}")


def _grid_pool_module(encoder: Any, side: int, width: int, a: int, b: int) -> Any:
    import torch

    class GridPool(torch.nn.Module):
        """The encoder, then the mean of each a x b block of its side x width grid of rows."""

        def __init__(self):
            super().__init__()
            self.encoder = encoder

        def forward(self, pixel_values):  # one input: torch.export reads the dynamic axes by position
            x = self.encoder(pixel_values)
            n, _, d = x.shape
            return x.reshape(n, side // a, a, width // b, b, d).mean(dim=(2, 4)).reshape(n, -1, d)

    return GridPool().eval()


def grid_pool(split: Any, n: int, family: str, grid: tuple[int, int] | None = None) -> tuple[Any, str]:
    """`split` with its vision encoder's grid of rows average-pooled to `n`; and the report's note. The
    grid is square unless the family names its (rows, columns), as the demo's [1, 2] checkpoint does.

    Example:
        >>> split, note = grid_pool(split, 2, "edgemfm-demo")  # doctest: +SKIP
        >>> note                                               # doctest: +SKIP
        'visual tokens: 4 -> 2 per image (average pool of 1x2 cells of the 2x2 grid of rows)'
    """
    import torch

    unit = split.units[ENCODER]
    assert len(unit.args) == 1, "grid pooling wraps a one-input encoder"
    with torch.no_grad():
        rows = unit.module(*unit.args).shape[1]
    side, width = grid or (math.isqrt(rows),) * 2
    if side * width != rows:  # a CLS row kept by the feature selection: no grid to pool
        raise _refuse(n, family, f"{rows} (its {rows} rows are no square grid)")
    allowed = allowed_grid(side, width)
    if n not in allowed:
        raise _refuse(n, family, allowed)
    if n == rows:
        return split, f"visual tokens: {rows} per image, the family's own"
    a, b = pool_shape(side, n, width)
    units = {**split.units, ENCODER: replace(unit, module=_grid_pool_module(unit.module, side, width, a, b))}
    note = f"visual tokens: {rows} -> {n} per image (average pool of {a}x{b} cells of the {side}x{width} grid of rows)"
    return replace(split, units=units), note


def pixel_budget(split: Any, n: int, family: str) -> tuple[Any, str]:
    """`split` whose images are resized to at most `n` merged rows (`max_pixels`); and the report's note.

    Example:
        >>> split, note = pixel_budget(split, 16, "qwen2_vl")  # doctest: +SKIP
    """
    patches = split.preprocess.image_patches
    cell = (patches.patch * patches.merge) ** 2  # pixels per decoder row
    least, most = math.ceil(patches.min_pixels / cell), patches.max_pixels // cell
    if not least <= n <= most:
        raise _refuse(n, family, f"{least} to {most} (rows of {patches.patch * patches.merge} px squares)")
    budget = replace(patches, max_pixels=n * cell)
    note = f"visual tokens: at most {n} per image (max_pixels {patches.max_pixels} -> {n * cell}; the 2-D merger unchanged)"
    return replace(split, preprocess=replace(split.preprocess, image_patches=budget)), note


def budget(family: Any, split: Any, n: int) -> Any:
    """`split` cut to at most `n` rows per image by `family`'s method, the budget on its image `Media` and
    the method in the report's notes; a family without the capability, or an `n` it cannot meet, is refused.

    Example:
        >>> budget(find_family({"model_type": "llava"}), split, 4).prompt.media["image"].visual_tokens  # doctest: +SKIP
        4
    """
    from edgemfm.exporters import capability

    cut, note = capability(family, "visual_tokens")(split, n, family.name)
    media = {**cut.prompt.media, "image": replace(cut.prompt.media["image"], visual_tokens=n)}
    notes = dict(cut.report.notes)
    notes[ENCODER] = "; ".join(filter(None, (notes.get(ENCODER), note)))
    return replace(cut, prompt=replace(cut.prompt, media=media), report=replace(cut.report, notes=notes))
