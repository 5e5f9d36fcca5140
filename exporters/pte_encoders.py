"""Quantize a pte program's encoders to int8 with PT2E, calibrated, as ExecuTorch's own examples do for XNNPACK.

A decoder is quantized on its modules (exporters/pte_quantize.py: dynamic int8 activations, nothing
to calibrate). An encoder's convolutions and linears get static int8 instead, which XNNPACK runs
as QS8 kernels with no run-time range search:

    torch.export ─► prepare_pt2e(XNNPACKQuantizer: symmetric int8, per-channel weights, per-tensor activations)
        │ the calibration items through the prepared module: observers record the activation ranges
        ▼ convert_pt2e ─► q/dq around every annotated conv and linear ─► captured again, lowered to XNNPACK

The calibration items are the same as the ONNX path's (quantizers/calibration.py): the images and
WAVs of `--calibration DIR`, or the built-in drawings and spoken clips, pre-processed by the
runtime's own PREPROCESSORS. An encoder whose whole static int8 module is broken on its own calibration items
(output SQNR under BROKEN_DB: per-tensor ranges cannot hold the real Whisper encoder's linear and residual
outliers) runs its linears at dynamic int8 instead, the activations' ranges taken per row at run time as
faster-whisper does, and only its convolutions static; the report's notes say so, with the dB.
An encoder whose items are tiled or patched before encoding
(Idefics3, Qwen2-VL), or that no item reaches (a folder without WAVs), stays float, and the
report says why. The converted module IS the fake-quantized PyTorch model the program is checked against.

Example:
    >>> inputs, floats = encoder_inputs(split, folder=None)                          # doctest: +SKIP
    >>> unit, done = quantize_encoder("vision_encoder", split.units["vision_encoder"], inputs["vision_encoder"], shapes)  # doctest: +SKIP
    >>> done.quantized_nodes                                                           # doctest: +SKIP
    {'conv2d_int8': 33, 'linear_int8': 1}
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgemfm.exporters.family import ExportUnit, Split
from edgemfm.quantizers import conv_qlinear
from edgemfm.recipe import Recipe, Rule
from edgemfm.report import AppliedScheme, Quantization

ENCODERS = ("vision_encoder", "audio_encoder")  # the components quantized here; the rest by pte_quantize
METHOD = "pt2e-minmax"  # XNNPACKQuantizer's default observers: min/max of the calibration activations
WEIGHTED = {"conv1d", "conv2d", "linear"}  # aten ops whose weight XNNPACKQuantizer quantizes per channel
SENSITIVE = "int8 alone: output"  # how the report names a conv `sensitive` kept float
SENSITIVE_DB = conv_qlinear.SENSITIVE_DB  # a conv whose int8 alone takes the output under it stays float (`sensitive`)
# what lies between two chained convs of a CNN in a captured graph, as conv_qlinear's _THROUGH in an ONNX one; batch
# norm (and its getitem) and pad too: not yet folded into the conv here (EfficientNet-Lite pads before each conv)
THROUGH = {"relu", "relu_", "hardtanh", "hardtanh_", "clamp", "add", "add_", "batch_norm", "getitem", "pad"}
THROUGH |= {"_native_batch_norm_legit_no_training", "constant_pad_nd"}
# an encoder whose whole static int8 module is under this output SQNR on its own calibration items is broken, not
# rounded: the real Whisper tiny.en's was 3.6 dB (per-tensor ranges over its linears' and residual adds' outliers)
BROKEN_DB = 10.0
DYNAMIC = "linears dynamic int8"  # the report's name for the fallback: per-row ranges at run time, convs static
# an int8 encoder under this output SQNR on its calibration items keeps float the linears whose int8 costs it the most
# (`linears_to_keep`): tiny.en's dynamic-linear encoder was 21.0 dB, its 4 fc2 (inputs: GELU outliers) the worst
TARGET_DB = 25.0
# the target of an encoder whose outputs are a decoder's cross-attention keys and values (`target_db`): its noise
# reaches every token the decoder writes. Real Whisper tiny.en at 25 dB (program: 25.0 dB on whole long-form windows)
# cost 1.1 WER points pooled over 10 long-form passes against its float encoder, with the decoder fp32
CROSS_TARGET_DB = 30.0
# a linear whose int8 alone leaves the output over TARGET_DB + this is not why the encoder is under TARGET_DB (its
# noise is under a tenth of the target's): it stays int8, so an encoder whose noise is its convs' keeps its linears
LINEAR_MARGIN_DB = 10.0


def encoder_inputs(split: Split, folder: str | Path | None) -> tuple[dict[str, list[tuple]], dict[str, str]]:
    """The calibration inputs of each encoder of `split` (as its unit's positional args), and why the
    encoders without any stay float.

    Example:
        >>> inputs, floats = encoder_inputs(split, "my-domain-data")  # doctest: +SKIP
        >>> floats  # doctest: +SKIP
        {'audio_encoder': 'no audio clips in the calibration folder to fit its int8 ranges to'}
    """
    import torch

    from edgemfm.quantizers.calibration import MAX_ITEMS, drawings, read_folder, speech
    from edgemfm.runtimes.preprocess import PREPROCESSORS

    pre = split.preprocess
    if folder is not None:
        images, clips, _ = read_folder(folder)
    else:
        images, clips = drawings(), speech(pre.audio) if pre.audio is not None else []
    items = {"image": images, "audio": clips}
    wanted = {m.encoder: (kind, m.input, m.length) for kind, m in split.prompt.media.items()}
    for unit in split.units.values():
        if unit.cross_attention is not None:  # Whisper: its encoder takes the clip, and only the clip
            wanted[unit.cross_attention.encoder] = (unit.cross_attention.media, unit.cross_attention.input, None)
    inputs, floats = {}, {}
    for encoder, (kind, name, length) in wanted.items():
        unit = split.units[encoder]
        if kind == "image" and (pre.image_splitting is not None or pre.image_patches is not None):
            floats[encoder] = "its images are tiled or patched before encoding: no int8 calibration for pte yet"
        elif set(unit.input_names) - {name, length}:
            floats[encoder] = f"it takes inputs beside the {kind} item ({', '.join(unit.input_names)})"
        elif not items[kind]:
            floats[encoder] = f"no {'audio clips' if kind == 'audio' else 'images'} to fit its int8 ranges to"
        else:
            inputs[encoder] = []
            for item in items[kind][:MAX_ITEMS]:
                x, n = PREPROCESSORS[kind](item, pre)
                feeds = {name: torch.from_numpy(x[None]), length: torch.tensor([n if n is not None else x.shape[-1]])}
                inputs[encoder].append(tuple(feeds[i] for i in unit.input_names))
    return inputs, floats


def target_db(name: str, units: dict[str, ExportUnit]) -> float:
    """The output SQNR (dB) the int8 encoder `name` is held to: CROSS_TARGET_DB where another of `units` attends
    to its outputs (Whisper's decoder), TARGET_DB otherwise.

    Example:
        >>> target_db("audio_encoder", split.units)  # doctest: +SKIP
        30.0
    """
    attended = {u.cross_attention.encoder for u in units.values() if u.cross_attention is not None}
    return CROSS_TARGET_DB if name in attended else TARGET_DB


def quantize_encoder(
    name: str, unit: ExportUnit, inputs: list[tuple], dynamic_shapes: Any, target: float = TARGET_DB
) -> tuple[ExportUnit, Quantization]:
    """`unit` with its module replaced by the PT2E int8 module calibrated on `inputs`, its sensitive convolutions
    float (`sensitive`), and the weighted ops costing it the most float while under `target` dB (`linears_to_keep`);
    what was done.

    Example:
        >>> unit, done = quantize_encoder("audio_encoder", unit, inputs, shapes, target_db("audio_encoder", units))  # doctest: +SKIP
    """
    import torch

    with torch.no_grad():
        captured = torch.export.export(unit.module, unit.args, dynamic_shapes=dynamic_shapes, strict=False)
        worst = sensitive(captured, inputs)
        converted = _converted(captured, inputs, lambda node: node.name not in worst)
        db = _sqnr(captured, converted, inputs)
        dynamic = False
        note = f"static int8 activations, ranges from {len(inputs)} calibration items"
        if db < BROKEN_DB:
            # as faster-whisper runs Whisper's encoder: its linears' activations quantized per row at run time
            dynamic = True
            converted = _converted(captured, inputs, lambda n: n.name not in worst and _op(n) in WEIGHTED, dynamic=True)
            note = f"{DYNAMIC}, convs static: all static int8 was {db:.1f} dB < {BROKEN_DB:g} on calibration"
            db = _sqnr(captured, converted, inputs)
        costliest: dict[str, float] = {}
        if db < target:
            costliest, converted, after = linears_to_keep(captured, inputs, worst, dynamic, (converted, db), target)
            convs = sum(_op(n) != "linear" for n in captured.module().graph.nodes if n.name in costliest)
            note += f"; {len(costliest) - convs} linears float" + (f", {convs} convs float" if convs else "")
            note += f": {db:.1f} -> {after:.1f} dB (target {target:g})"
            worst |= costliest
    done, floats = _count(converted.graph)
    kept = {
        f"{name}/{_module(n)}": _why(n, worst[n.name], target, n.name in costliest) for n in floats if n.name in worst
    }
    return replace(unit, module=converted), Quantization(
        schemes=(AppliedScheme(bits=8, group_size=0, method=f"xnnpack {METHOD}"),),
        quantized_units=sum(done.values()),
        float_units={
            **{f"{name}/{_module(n)}": "not annotated by XNNPACKQuantizer" for n in floats if n.name not in worst},
            **kept,
        },
        notes={name: note},
        quantized_nodes=done,
        weight_bytes=0,  # filled by the writer from the captured program
    )


def with_float_convs(recipe: Recipe, quantization: dict[str, Quantization]) -> Recipe:
    """`recipe` with a float rule first for each convolution and linear an encoder's quantization kept float
    (`sensitive`, `linears_to_keep`), so the manifest's recipe says what the program runs.

    Example:
        >>> with_float_convs(recipe, quantization).spec_for("vision_encoder/model.vision_tower._conv_stem")  # doctest: +SKIP
    """
    kept = tuple(
        Rule(unit, None)
        for name in ENCODERS
        for unit, why in (quantization[name].float_units if name in quantization else {}).items()
        if why.startswith(SENSITIVE)
    )
    return replace(recipe, rules=(*kept, *recipe.rules))


def sensitive(captured: Any, inputs: list[tuple]) -> dict[str, float]:
    """Convolution node -> the encoder's output SQNR (dB) on `inputs` with only that convolution int8 (its annotation
    as XNNPACKQuantizer makes it: input and weights, and the output where the activation after it shares its range),
    for those under SENSITIVE_DB: the ONNX path's judge (quantizers/conv_qlinear.py), on the PT2E module the program runs.
    Only the convolutions the ONNX judge judges: those chained to another through an activation or a residual add
    (`chained`), a CNN's; Whisper's two convs around a GELU are not, and stay int8 as its linears.

    On the demo's EfficientNet-Lite0 the stem alone took the output to 11 dB on the built-in drawings and the first
    blocks' depthwise convs under 30: 15.4 dB on held-out pictures for the whole int8 encoder (BENCHMARKS.md, result
    quantization-demo-pte-int8).

    Example:
        >>> sensitive(torch.export.export(module, args), inputs)  # doctest: +SKIP
        {'conv2d': 11.1, 'conv2d_1': 12.4}
    """
    reference = [_leaves(captured.module()(*args)) for args in inputs]
    convs = [n.name for n in chained(captured.module().graph)]
    out = {}
    for conv in convs:
        trial = _converted(captured, inputs, lambda node, conv=conv: node.name == conv, only=True)
        db = _sqnr(captured, trial, inputs, reference)
        if db < SENSITIVE_DB:
            out[conv] = round(db, 1)
    return out


def linears_to_keep(
    captured: Any,
    inputs: list[tuple],
    worst: dict[str, float],
    dynamic: bool,
    whole: tuple[Any, float],
    target: float = TARGET_DB,
) -> tuple[dict[str, float], Any, float]:
    """The linears to keep float (node -> the output SQNR in dB with that linear alone int8) so that the encoder,
    `whole` (its converted module and dB) with them int8, reaches `target` on `inputs`; the module so converted
    and its dB. The convs in `worst` stay float; `dynamic`: the linears' activations quantized at run time, and the
    convs, then the only static ranges left, judged beside the linears (real tiny.en's two convs alone cost its
    output as much as its costliest fc2: 26.6 dB on whole long-form windows, all linears float). Each is judged
    alone; the noisiest are taken off (their noise powers summed as if independent) until the rest is within the
    target, then the whole is measured and one more taken off while it is still under, among those under
    target + LINEAR_MARGIN_DB only.

    Example:
        >>> linears_to_keep(captured, inputs, {}, True, (converted, 21.0))[0]  # doctest: +SKIP
        {'linear_5': 29.1, 'linear_11': 30.4, 'linear_17': 31.2, 'linear_23': 33.0}
    """
    reference = [_leaves(captured.module()(*args)) for args in inputs]
    judged = {}
    ops = WEIGHTED if dynamic else {"linear"}
    for node in [n for n in captured.module().graph.nodes if n.op == "call_function" and _op(n) in ops]:
        if node.name in worst:
            continue
        trial = _converted(captured, inputs, lambda n, x=node.name: n.name == x, only=True, dynamic=dynamic)
        judged[node.name] = round(_sqnr(captured, trial, inputs, reference), 1)
    ranked = sorted((n for n, d in judged.items() if d < target + LINEAR_MARGIN_DB), key=judged.get)
    if not ranked:  # the encoder's noise is its convs' (a CNN's head), not its linears'
        return {}, *whole
    db = whole[1]
    # in units of the signal: 10^(-dB/10) is a noise power; the linears' add up to at most the whole's
    noise, allowed = 10 ** (-db / 10), 10 ** (-target / 10)
    count = 0
    while count < len(ranked) and noise > allowed:
        noise -= 10 ** (-judged[ranked[count]] / 10)
        count += 1
    while True:
        kept = set(ranked[:count])
        converted = _converted(captured, inputs, _keeper(worst, kept, dynamic), dynamic=dynamic)
        after = _sqnr(captured, converted, inputs, reference)
        if after >= target or count == len(ranked):
            return {n: judged[n] for n in ranked[:count]}, converted, after
        count += 1


def _why(node: Any, db: float, target: float, costliest: bool) -> str:
    """Why the report says `node` stays float, `db` its int8 alone: one of the `costliest` (`linears_to_keep`) may be
    over `target` (the noise of an encoder under it is several ops'); a `sensitive` conv's is under SENSITIVE_DB."""
    if costliest:
        return f"{SENSITIVE} {db:.1f} dB, among the costliest in an encoder under {target:g} dB on calibration"
    return f"{SENSITIVE} {db:.1f} dB < {SENSITIVE_DB:g} on calibration"


def _keeper(worst: dict[str, float], linears: set[str], dynamic: bool) -> Any:
    """Which nodes `_converted` annotates: all but the float convs and linears (`dynamic`: and only weighted ops,
    the residual adds' static ranges being what broke the encoder)."""
    return lambda n: n.name not in worst and n.name not in linears and (not dynamic or _op(n) in WEIGHTED)


def _sqnr(captured: Any, trial: Any, inputs: list[tuple], reference: list[list[Any]] | None = None) -> float:
    """The output SQNR (dB) of `trial` against the float `captured` module over `inputs`."""
    reference = reference or [_leaves(captured.module()(*args)) for args in inputs]
    got = [_leaves(trial(*args)) for args in inputs]
    signal = sum(float((r**2).sum()) for rs in reference for r in rs)
    noise = sum(float(((r - g) ** 2).sum()) for rs, gs in zip(reference, got, strict=True) for r, g in zip(rs, gs))
    return 10 * math.log10(signal / max(noise, 1e-30)) if signal else math.inf


def chained(graph: Any) -> list[Any]:
    """The convolution nodes of `graph` with another convolution before or after, through at most three of
    THROUGH (an activation, a batch norm, a residual add): conv_qlinear.chained on a captured graph.

    Example:
        >>> [n.name for n in chained(torch.export.export(module, args).module().graph)]  # doctest: +SKIP
        ['conv2d', 'conv2d_1']
    """
    convs = {n for n in graph.nodes if n.op == "call_function" and _op(n) in WEIGHTED - {"linear"}}

    def reaches(node: Any, step: Any, depth: int = 3) -> bool:
        for nxt in step(node):
            if nxt in convs or (depth and _name(nxt) in THROUGH and reaches(nxt, step, depth - 1)):
                return True
        return False

    def before(n: Any) -> list[Any]:
        return [a for a in n.args[:1] if hasattr(a, "users")]

    def after(n: Any) -> list[Any]:
        return list(n.users)

    return [n for n in graph.nodes if n in convs and (reaches(n, before) or reaches(n, after))]


def _name(node: Any) -> str:
    """The aten op's name of `node`, or the function's (operator.getitem has no schema)."""
    return _op(node) or getattr(node.target, "__name__", "")


def _converted(captured: Any, inputs: list[tuple], keep: Any, only: bool = False, dynamic: bool = False) -> Any:
    """The PT2E int8 module of `captured`, calibrated on `inputs`; a node for which `keep(node)` is false is left
    float (`only`: and every node but those and what shares their ranges); `dynamic`: the linears' activations
    quantized at run time (XNNPACK's per-row qd8 kernels), not from the calibrated ranges."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    class Quantizer(XNNPACKQuantizer):
        def transform_for_annotation(self, model):
            return _integer_scalars(super().transform_for_annotation(model))

        def annotate(self, model):
            # XNNPACKQuantizer.set_module_name(name, None) is refused, and naming a conv's module alone quantizes
            # nothing (its conv+BN pattern spans two modules): the annotations are taken off the chosen nodes instead
            return _unannotated(super().annotate(model), keep, only)

    quantizer = Quantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    if dynamic:
        quantizer.set_module_type(
            torch.nn.Linear, get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)
        )
    prepared = prepare_pt2e(captured.module(), quantizer)
    for args in inputs:
        prepared(*args)
    return convert_pt2e(prepared)


def _unannotated(model: Any, keep: Any, only: bool) -> Any:
    """`model` with the quantization annotations off each node `keep` rejects, and off every node whose ranges are
    shared with or derived from one so left (`only`: off every node but those `keep` takes and what shares theirs)."""
    key = "quantization_annotation"
    annotated = [n for n in model.graph.nodes if key in n.meta]
    refs = {n: _references(n.meta[key]) for n in annotated}
    chosen = {n for n in annotated if keep(n)}
    if only:
        chosen |= {n for n in annotated if refs[n] & chosen}
    gone = set(annotated) - chosen
    while True:
        more = {n for n in annotated if n not in gone and refs[n] & gone}
        if not more:
            break
        gone |= more
    for node in gone:
        del node.meta[key]
    return model


def _references(annotation: Any) -> set[Any]:
    """The nodes whose ranges `annotation` shares or derives from (a SharedQuantizationSpec's edge or node, a
    DerivedQuantizationSpec's)."""
    specs = [*annotation.input_qspec_map.values(), annotation.output_qspec]
    found = []
    for spec in specs:
        found += [getattr(spec, "edge_or_node", None), *(getattr(spec, "derived_from", None) or ())]
    return {n for e in found if e is not None for n in (e if isinstance(e, tuple) else (e,))}


def _integer_scalars(model: Any) -> Any:
    """`model` with the scalars XNNPACKQuantizer made float tensors cast back to the integer ops' dtype.

    Its transform_for_annotation turns every scalar operand of an add or mul into a float32 constant, integer
    arithmetic included: Qwen2-Audio's encoder counts its positions ((frames - 1) // 2 + 1) and masks with
    them, and a float count or index fails in the converted module ("tensors used as indices must be long ...").
    An integer result has only integer operands, so a float constant feeding one is exactly such a scalar.
    """
    import torch

    for node in model.graph.nodes:
        dtype = getattr(node.meta.get("val"), "dtype", None)
        if node.target not in (torch.ops.aten.add.Tensor, torch.ops.aten.mul.Tensor) or not _integer(dtype):
            continue
        for arg in node.all_input_nodes:
            constant = getattr(model, arg.target, None) if arg.op == "get_attr" else None
            if isinstance(constant, torch.Tensor) and constant.dtype.is_floating_point:
                model.register_buffer(arg.target, constant.to(dtype))
                arg.meta["val"] = arg.meta["val"].fake_mode.from_tensor(getattr(model, arg.target), static_shapes=True)
    model.recompile()
    return model


def _integer(dtype: Any) -> bool:
    return dtype is not None and not (dtype.is_floating_point or dtype.is_complex)


def _count(graph: Any) -> tuple[dict[str, int], list[Any]]:
    """Weighted ops whose weight comes through a per-channel dequantize (quantized), and the nodes left float."""
    done: dict[str, int] = {}
    floats = []
    for node in graph.nodes:
        op = _op(node)
        if node.op != "call_function" or op not in WEIGHTED:
            continue
        weight = node.args[1]
        if "dequantize_per_channel" in str(getattr(weight, "target", "")):
            done[f"{op}_int8"] = done.get(f"{op}_int8", 0) + 1
        else:
            floats.append(node)
    return done, floats


def _op(node: Any) -> str:
    return getattr(getattr(node.target, "_schema", None), "name", "").removeprefix("aten::")


def _module(node: Any) -> str:
    """The dotted path of the module that ran `node` (its node name when torch.export recorded none)."""
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack.values()))[0] if stack else node.name


def _leaves(output: Any) -> list[Any]:
    import torch

    return [t.float() for t in torch.utils._pytree.tree_leaves(output) if isinstance(t, torch.Tensor)]
