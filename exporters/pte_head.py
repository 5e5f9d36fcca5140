"""A decoder's output head made cheap to quantize at 8da8w: its final LayerNorm's gain and bias folded into it, and
its input rotated (SliceGPT's fold, QuaRot's R, for the head alone).

Whisper's head (tiny.en: 384 x 51864, most of a decode step) reads a LayerNorm whose bias and gain are large against
its normalized rows. Quantized per output channel, the head's weights then carry the error of `b W^T`, a vector added
to every row's logits, and of the few channels g amplifies. Folded, the LayerNorm computes only the normalization
and the head reads it in a random basis, where no channel stands out of a row's per-channel int8 grid:

    h ─► LayerNorm(g, b) ─► Linear(W)              becomes     h ─► LayerNorm(1, 0) ─► @R ─► Linear(W diag(g) R, W b)

Exact in float (R orthogonal; `b W^T` an exact float bias); the program adds one width x width float matmul per
row, under 1% of the head's multiply-adds. The layers' own LayerNorms stay as they are: folded, their readers'
per-token int8 inputs lose the gain's damping of a few large channels and the decoder moved further from float.

Measured on the real Whisper tiny.en decoder (fp32 encoder states of 14 long-form windows of both speech files,
teacher-forced on fp32's own tokens; /work/notes/s13/out/wdec13.md): the head alone at 8da8w read next-token KL
0.00136 plain, 0.00032 folded, 0.00013 folded and rotated; the whole int8 decoder 0.00273 -> 0.00149.

Done by pte_quantize.quantize_module when the recipe quantizes the head at 8 bits per channel, so every reference
that quantizes a family's own modules by a bundle's recipe folds them as the export did.

Example:
    >>> fold_head(unit.module)  # doctest: +SKIP
    "final LayerNorm's gain and bias folded into the head, its input rotated (orthogonal, seed 1)"
"""

from __future__ import annotations

from typing import Any

from edgemfm.recipe import Rotation

ROTATION = Rotation(kind="orthogonal", seed=1)  # the head's R: regenerated from this seed (pte_rotation.matrix)
NORMS = ("layer_norm", "norm")  # where a language model keeps its final norm (Whisper's decoder; Llama-style)


def foldable(module: Any) -> Any:
    """The final LayerNorm (with gain and bias) of `module` (a decoder holding `language_model` and `lm_head`) that
    only its head reads; None where there is none (an RMSNorm has no bias: pte_rotation.py rotates those decoders)
    or it is folded already.

    Example:
        >>> foldable(unit.module)  # doctest: +SKIP
        LayerNorm((384,), eps=1e-05, elementwise_affine=True)
    """
    import torch

    language_model, head = getattr(module, "language_model", None), getattr(module, "lm_head", None)
    norm = next((getattr(language_model, n) for n in NORMS if hasattr(language_model, n)), None)
    if type(norm) is not torch.nn.LayerNorm or norm.bias is None or not isinstance(head, torch.nn.Linear):
        return None
    if hasattr(norm, "rotation"):  # folded already: a second fold would add a second rotation for nothing
        return None
    return norm if head.in_features == norm.normalized_shape[-1] else None


def fold_head(module: Any) -> str | None:
    """Fold `module`'s final LayerNorm into its head and rotate the head's input, in place (see the module docstring);
    the report's note, or None where `foldable` finds nothing to fold.

    Example:
        >>> fold_head(unit.module)  # doctest: +SKIP
        "final LayerNorm's gain and bias folded into the head, its input rotated (orthogonal, seed 1)"
    """
    import torch

    from edgemfm.exporters.pte_rotation import fold_gain, matrix

    norm = foldable(module)
    if norm is None:
        return None
    head = module.lm_head
    r = matrix(ROTATION, head.in_features).double()
    with torch.no_grad():
        # the bias first, from the head's weights before the fold: W b, exact in float64
        bias = head.weight.double() @ norm.bias.double() + (head.bias.double() if head.bias is not None else 0)
        # new parameters, not written in place: a table tied to the head (Whisper's) stays as it was
        fold_gain(norm, [head], r)
        head.bias = torch.nn.Parameter(bias.to(head.weight.dtype), requires_grad=False)
        norm.bias = torch.nn.Parameter(torch.zeros_like(norm.bias), requires_grad=False)
    # the rotation as the norm's output hook, as pte_rotation rotates the first block's input: the program's
    # graph gets one float matmul, and no Linear appears for a recipe rule to quantize
    norm.register_buffer("rotation", r.to(head.weight.dtype), persistent=False)
    norm.register_forward_hook(_rotated_output)
    return f"final LayerNorm's gain and bias folded into the head, its input rotated ({ROTATION.kind}, seed {ROTATION.seed})"


def _rotated_output(norm: Any, _args: tuple, out: Any) -> Any:
    """The normalized rows in the basis the head's weights now read."""
    return out @ norm.rotation
