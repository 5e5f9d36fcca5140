"""A pte decoder's residual stream rotated by an orthogonal R before its linears become 8da8w (QuaRot's invariance).

XNNPACK's 8da8w rounds a linear's input per token row to int8 at run time. Llama-style decoders (SmolLM2, the demo)
carry a few channels of the residual stream hundreds of times larger than the rest: they set each row's scale and
coarsen every other channel. Rotated, a row's energy is spread over all channels; in float nothing changes:

    inputs_embeds ─► @R ─► h' = hR ─► RMSNorm(1) ─► Linear(W diag(g) R)      (readers: q/k/v, gate/up, lm_head)
                            ▲
                            └──── + Linear(R^T W, b R)                       (writers: o_proj, down_proj)

An RMSNorm keeps ||hR|| = ||h||, so with its gain g folded into the linears reading it (g -> 1) it commutes with R.
The program's input stays inputs_embeds (the table and the projector are as they were): the first op is one
hidden x hidden float matmul. R is a random orthogonal matrix (QR of a Gaussian, signs fixed) or a randomized
Hadamard (576 = 9 x 64: a random orthogonal 9 x 9 Kronecker Hadamard 64, rows' signs random); both regenerate from
the recipe's seed, and ROTATION says which the export uses and what each measured.

What it rotates: pre-RMSNorm blocks (Llama, Qwen2 and the families whose decoder is one: the demo, LLaVA, Idefics3,
Qwen2-VL/-Audio). Not rotated: a norm scaling by 1 + w (Gemma) or a post-norm on a block's output (Gemma-2/3) does
not commute with R once folded, and Whisper's LayerNorm subtracts the mean and adds a bias (SliceGPT's fold would
make it rotatable; not built). Which is which is found by rotating and comparing the float logits (EXACT): a decoder
that moves is left as it was. Kept only where measured to help, as quantizers/smoothing.where_it_helps does for
ONNX: the next-token distribution of the module at the program's 8da8w arithmetic on the calibration feeds, rotated
vs not, kept at MIN_GAIN_DB nearer float. The rotation does not reach what down_proj reads (SiLU(gate) * up, whose
massive entries set its rows' scales): an online Hadamard there (pte_online_hadamard.py, QuaRot's R4) is measured
with it and kept where it gains MIN_GAIN_DB more; the recipe's Rotation says whether (`down_proj`).

Example:
    >>> note = rotate_where_it_helps("text_decoder", unit, feeds, pte_recipe(profile, "int8"))  # doctest: +SKIP
    >>> note.kept, round(note.rotated_db - note.plain_db)  # doctest: +SKIP
    (True, 4)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from edgemfm.recipe import Recipe, Rotation

PRECISIONS = ("int8",)  # 8da8w: where per-channel int8 weights leave the activations' rows as the error that matters
# R: on the demo's decoder (12 calibration prompts, all-8da8w next-token SQNR, 14.33 dB plain) a random orthogonal R
# read 17.07 / 18.05 dB at seeds 0 / 1, a randomized Hadamard 13.07 / 15.18; the recipe records the seed, a
# reference regenerates R from it
ROTATION = Rotation(kind="orthogonal", seed=1)
MIN_GAIN_DB = 1.0  # a rotation is an extra matmul per call: kept only where it gains this much
# how far the rotated float logits may move, of their largest magnitude: float32 rounding (the tests' tiny Llama with
# 45x norm gains moves 4e-4 through its float32 ONNX-form decoder), where a norm that does not commute with R moves them
# by tenths (Gemma's 1 + w)
EXACT = 1e-3
READERS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")
WRITERS = ("self_attn.o_proj", "mlp.down_proj")
NORMS = {"input_layernorm": READERS[:3], "post_attention_layernorm": READERS[3:]}


@dataclass(frozen=True)
class Measured:
    """What the rotation of one decoder measured and whether it was kept."""

    kept: bool
    plain_db: float  # next-token distribution SQNR of the 8da8w module against float, unrotated
    rotated_db: float  # the same, rotated (nan: the decoder cannot be rotated)
    reason: str  # why not kept, or "" when kept
    down_proj_db: float = float("nan")  # the same, rotated and down_proj's input by a Hadamard (nan: not measured)
    down_proj: str = ""  # why down_proj's Hadamard is not kept, or "" when kept (with the rotation)

    def note(self, rotation: Rotation) -> str:
        """The report's line for the decoder (`rotation`: the one measured, its down_proj Hadamard as kept)."""
        done = f"rotated ({rotation.kind}, seed {rotation.seed})" if self.kept else f"not rotated ({self.reason})"
        online = f"down_proj's input by a Hadamard {self.down_proj_db:.2f} dB"
        online += f" ({self.down_proj})" if self.down_proj else ", kept"
        return (
            f"residual stream {done}: 8da8w next-token {self.rotated_db:.2f} dB rotated, {self.plain_db:.2f} plain;"
            f" {online}"
        )

    def kept_rotation(self, rotation: Rotation) -> Rotation | None:
        """What the recipe records: `rotation` with its down_proj Hadamard as kept; None if nothing was."""
        return replace(rotation, down_proj=not self.down_proj) if self.kept else None


def matrix(rotation: Rotation, width: int) -> Any:
    """The float32 orthogonal [width, width] matrix `rotation` names (its kind and seed).

    Example:
        >>> r = matrix(Rotation(kind="hadamard", seed=0), 576)
        >>> bool((r @ r.T - torch.eye(576)).abs().max() < 1e-5)  # doctest: +SKIP
        True
    """
    import torch

    generator = torch.Generator().manual_seed(rotation.seed)
    power = width & -width  # the largest power of two dividing width
    if rotation.kind == "orthogonal" or power == 1:
        return _orthogonal(width, generator).float()
    hadamard = torch.ones(1, 1, dtype=torch.float64)
    while hadamard.shape[0] < power:  # Sylvester's construction
        hadamard = torch.cat([torch.cat([hadamard, hadamard], 1), torch.cat([hadamard, -hadamard], 1)])
    blocks = torch.kron(_orthogonal(width // power, generator), hadamard / power**0.5)
    signs = torch.randint(0, 2, (width,), generator=generator).double() * 2 - 1
    return (signs[:, None] * blocks).float()


def _orthogonal(n: int, generator: Any) -> Any:
    import torch

    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return (
        q * torch.sign(torch.diagonal(r))[None, :]
    ).contiguous()  # signs fixed: Haar-distributed, and the same on every machine


def rotatable(module: Any) -> str | None:
    """Why `module` (a decoder holding `language_model` and `lm_head`) has no residual stream to rotate; None if it has."""
    language_model, head = getattr(module, "language_model", None), getattr(module, "lm_head", None)
    layers = getattr(language_model, "layers", None)
    if head is None or layers is None or getattr(language_model, "norm", None) is None:
        return "no language_model.layers, .norm and lm_head"
    needed = (*NORMS, *READERS, *WRITERS)
    missing = next((n for layer in layers for n in needed if _get(layer, n) is None), None)
    return f"a layer without {missing}: not a pre-RMSNorm block" if missing else None


def _get(module: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        module = getattr(module, part, None)
    return module


def rotate(language_model: Any, head: Any, rotation: Rotation) -> None:
    """Rotate the residual stream of `language_model` (its layers and final norm) and `head` by `rotation`'s matrix,
    in place (see the module docstring); exact in float for a pre-RMSNorm decoder (`rotatable`, then the logits).
    `rotation.down_proj`: each down_proj's input by a Hadamard too (pte_online_hadamard.py).

    Example:
        >>> rotate(unit.module.language_model, unit.module.lm_head, Rotation(kind="hadamard", seed=0))  # doctest: +SKIP
    """
    import torch

    r = matrix(rotation, head.in_features).double()
    with torch.no_grad():
        for layer in language_model.layers:
            for norm, readers in NORMS.items():
                fold_gain(_get(layer, norm), [_get(layer, f) for f in readers], r)
            for writer in (_get(layer, f) for f in WRITERS):
                _set(writer, "weight", r.T @ writer.weight.double())
                if writer.bias is not None:
                    _set(writer, "bias", writer.bias.double() @ r)
        fold_gain(language_model.norm, [head], r)  # a head tied to the table is untied here: the table stays unrotated
    # at the first block's input, not the model's: whether the model was given inputs_embeds or looked ids up itself
    # (transformers' generate, the tests' reference), what enters the residual stream is rotated
    first = language_model.layers[0]
    first.register_buffer("rotation", r.float(), persistent=False)
    first.register_forward_pre_hook(_rotated_input, with_kwargs=True)
    if rotation.down_proj:
        from edgemfm.exporters.pte_online_hadamard import rotate_down_projs

        rotate_down_projs(language_model.layers)


def fold_gain(norm: Any, readers: list[Any], r: Any) -> None:
    """The norm's gain into its readers' input columns (gain -> 1), then their inputs rotated: W <- W diag(g) R
    (float64 `r`); new parameters, so a table tied to a reader stays as it was.

    Example:
        >>> fold_gain(layer.input_layernorm, [layer.self_attn.q_proj], matrix(ROTATION, 576).double())  # doctest: +SKIP
    """
    import torch

    gain = norm.weight.double()
    for linear in readers:
        _set(linear, "weight", (linear.weight.double() * gain[None, :]) @ r)
    norm.weight = torch.nn.Parameter(torch.ones_like(norm.weight), requires_grad=False)


def _set(linear: Any, name: str, value: Any) -> None:
    """A new parameter, not written in place: a weight another module shares (a tied table) stays as it was."""
    import torch

    old = getattr(linear, name)
    setattr(linear, name, torch.nn.Parameter(value.to(old.dtype), requires_grad=False))


def _rotated_input(layer: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The decoder's first op: the rows entering its residual stream rotated into the basis its weights now read."""
    if args:
        return (args[0] @ layer.rotation.to(args[0].dtype), *args[1:]), kwargs
    hidden = kwargs["hidden_states"]
    return args, {**kwargs, "hidden_states": hidden @ layer.rotation.to(hidden.dtype)}


def rotate_where_it_helps(
    name: str, unit: Any, feeds: Sequence[dict[str, Any]], recipe: Recipe, rotation: Rotation
) -> Measured:
    """Rotate `unit`'s module by `rotation` if that brings its 8da8w next-token distribution on `feeds` (the ONNX
    path's calibration feeds of component `name`) MIN_GAIN_DB nearer float, and with it each down_proj's input by a
    Hadamard (pte_online_hadamard.py) if that gains MIN_GAIN_DB more; what was measured.

    Example:
        >>> rotate_where_it_helps("text_decoder", unit, feeds, recipe, Rotation(kind="hadamard", seed=0)).kept  # doctest: +SKIP
        True
    """
    import torch

    from edgemfm.exporters.pte_online_hadamard import unrotatable

    nan = float("nan")
    reason = rotatable(unit.module)
    if reason is not None or not feeds:
        return Measured(False, nan, nan, reason or "no calibration feeds")
    calls = [_args(unit, feed) for feed in feeds]
    with torch.no_grad():
        reference = _logits(unit.module, calls)
        plain = _db(reference, _quantized_logits(name, unit.module, recipe, calls))
        db, moved = _rotated(name, unit.module, replace(rotation, down_proj=False), recipe, calls, reference)
        if moved > EXACT:
            return Measured(False, plain, nan, f"rotating moves its float logits by {moved:.1e} of their scale")
        online, why = nan, unrotatable(unit.module.language_model.layers)
        if why is None:
            online, moved = _rotated(name, unit.module, replace(rotation, down_proj=True), recipe, calls, reference)
            why = f"it moves the float logits by {moved:.1e}" if moved > EXACT else ""
            why = why or (f"gains under {MIN_GAIN_DB} dB over the rotation alone" if online < db + MIN_GAIN_DB else "")
    if (db if why else online) < plain + MIN_GAIN_DB:
        return Measured(False, plain, db, f"gains under {MIN_GAIN_DB} dB", online, why or "the rotation is not kept")
    rotate(unit.module.language_model, unit.module.lm_head, replace(rotation, down_proj=not why))
    return Measured(True, plain, db, "", online, why)


def _rotated(
    name: str, module: Any, rotation: Rotation, recipe: Recipe, calls: list[tuple], reference: Any
) -> tuple[float, float]:
    """A copy of `module` rotated by `rotation`: its 8da8w dB against `reference`, and how far its float logits moved
    of their largest magnitude."""
    rotated = copy.deepcopy(module)
    rotate(rotated.language_model, rotated.lm_head, rotation)
    moved = float((_logits(rotated, calls) - reference).abs().max() / reference.abs().max())
    return _db(reference, _quantized_logits(name, rotated, recipe, calls)), moved


def _quantized_logits(name: str, module: Any, recipe: Recipe, calls: list[tuple]) -> Any:
    """`module`'s logits at the program's 8da8w arithmetic (pte_quantize.fake_quantized, on a copy)."""
    from edgemfm.exporters.pte_quantize import fake_quantized

    return _logits(fake_quantized(name, copy.deepcopy(module), recipe), calls)


def _args(unit: Any, feed: dict[str, Any]) -> tuple:
    """An ONNX-form feed (flat inputs by name) as `unit`'s module takes its arguments."""
    import torch
    from torch.utils._pytree import tree_flatten, tree_unflatten

    spec = tree_flatten(unit.args)[1]
    return tree_unflatten([torch.from_numpy(feed[n]) for n in unit.input_names], spec)


def _logits(module: Any, calls: list[tuple]) -> Any:
    """The first output of every call, joined along the positions (float64)."""
    import torch

    got = []
    for args in calls:
        out = module(*args)
        out = out[0] if isinstance(out, (tuple, list)) else out
        got.append(out.detach().double().reshape(-1, out.shape[-1]))
    return torch.cat(got)


def _db(reference: Any, got: Any) -> float:
    from edgemfm.quantizers.metrics import distribution_sqnr_db

    return distribution_sqnr_db(reference.numpy(), got.numpy(), reference.shape[-1])
