"""Write a model's components as ONE ExecuTorch program (`.pte`) with a named method each.

As ExecuTorch's own LLaVA example does, the bundle holds a single `model.pte` whose methods are
the components (`vision_encoder`, `token_embedding`, `text_decoder`, `audio_encoder` where a
family has one). Each is captured with `torch.export`, lowered to XNNPACK with
`to_edge_transform_and_lower`, and checked in the ExecuTorch runtime against PyTorch before the
bundle is sealed. A component with a KV cache is exported in its static-cache form
(`ExportUnit.static_cache`, see exporters/static_decoder.py) sized to `max_seq_len`.

Dynamic axes stay dynamic, bounded by `max_seq_len`, except the item axes (`batch`, `images`,
the demo's `items`): the Pipeline feeds one image or clip at a time, so a program takes exactly
one (torch.export specializes an axis whose example length is 1, which these examples have).

A component torch.export cannot capture fails the export in one line (`ExportError`) naming the
method and torch's reason, not with torch's traceback.

What XNNPACK does not take runs on ExecuTorch's portable kernels; the count of delegated and
non-delegated nodes per method, and the non-delegated operators by name, go into the report.

Example:
    >>> components, parity, delegation = write_units(split.units, stage, 1e-4, print, max_seq_len=256)  # doctest: +SKIP
    >>> delegation["text_decoder"].delegated_nodes > 0                                        # doctest: +SKIP
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from edgemfm.errors import ExportError, InputError
from edgemfm.exporters.family import ExportUnit
from edgemfm.exporters.onnx import ParityError, _flat, _reference, _spec
from edgemfm.manifest import Component
from edgemfm.recipe import FLOAT32, Recipe
from edgemfm.report import Delegation, Parity, Quantization
from edgemfm.runtimes import native

PROGRAM = "model.pte"
ONE_ITEM = ("batch", "images", "items")  # axes fixed to one item in a program (the Pipeline feeds one at a time)
BACKEND = "XnnpackBackend"


def _dynamic_shapes(unit: ExportUnit, max_seq_len: int) -> tuple[Any, ...]:
    dims: dict[str, torch.export.Dim] = {}
    names = iter(unit.input_names)

    def dim(axis: str) -> Any:
        # A multiple of m is m x a dim of up to max_seq_len: Qwen2-VL's patches, 4 per decoder row.
        m = unit.axis_multiples.get(axis, 1)
        return (
            m * torch.export.Dim(f"{axis}_over_{m}", min=1, max=max_seq_len)
            if m > 1
            else torch.export.Dim(axis, min=1, max=max_seq_len)
        )

    def spec(_tensor: torch.Tensor) -> dict[int, Any]:
        return {d: dims[a] if a in dims else dims.setdefault(a, dim(a)) for d, a in _axes(unit, next(names)).items()}

    return tuple(tuple(spec(t) for t in a) if isinstance(a, tuple) else spec(a) for a in unit.args)


def _program_unit(name: str, unit: ExportUnit, max_seq_len: int, kv_cache: str) -> ExportUnit:
    """`unit` as a program takes it: a decoder in its static-cache form, its cache int8 where `kv_cache` says so."""
    if unit.kv_cache is not None and unit.static_cache is None:
        raise InputError(
            f"{name}: this family's decoder has no static-cache form, which --format pte needs; allowed format for it: onnx"
        )
    if unit.static_cache is None:
        return unit
    unit = unit.static_cache(max_seq_len)
    if kv_cache == "int8":  # exporters/llm_ops.py's Int8OpsLayer, on edgemfm's own cache ops
        unit = replace(unit, kv_cache=unit.module.int8_cache(unit.kv_cache))
        native.build("int8_cache")  # now: a machine that cannot build the ops is refused before the export's work
    return unit


def _capture(name: str, unit: ExportUnit, max_seq_len: int) -> tuple[Any, list[torch.Tensor], int, int]:
    """The exported program, the PyTorch reference outputs, the peak activation and the FLOPs of `unit`."""
    state = {key: b.clone() for key, b in unit.module.named_buffers()}
    reference, peak, flops = _reference(unit)
    with torch.no_grad():  # the reference run wrote the cache: the program must start from zeros
        for key, b in unit.module.named_buffers():
            b.copy_(state[key])
        try:
            program = torch.export.export(
                unit.module, unit.args, dynamic_shapes=_dynamic_shapes(unit, max_seq_len), strict=False
            )
        except (
            RuntimeError
        ) as e:  # torch.export's errors (UserError, Unsupported, data-dependent guards) are RuntimeErrors
            raise ExportError(
                f"{name}: torch.export could not capture this component for --format pte: {_reason(e)}"
            ) from e
    table = {torch.ops.aten.gelu.default: _tanh_gelu, torch.ops.aten.scaled_dot_product_attention.default: _sdpa}
    return program.run_decompositions(table), reference, peak, flops


def _reason(error: Exception) -> str:
    """torch's multi-line message in one line: its first line and the detail under it (what was specialized, ...)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    head = lines[0].split(" For more information")[0] if lines else type(error).__name__
    # the detail's first sentence: the rest is torch's advice on its own API (mark_dynamic, Dim.DYNAMIC)
    detail = next(
        (line.lstrip("- ").split(". ")[0].rstrip(".") + "." for line in lines[1:2] if line.startswith("-")), ""
    )
    return f"{head} {detail}".strip()


def _tanh_gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    # executorch 1.5.1's XNNPACK lowering ignores GELU's `approximate` and runs the exact (erf)
    # GELU, 4.7e-4 off the tanh form Gemma and SigLIP use (fixed upstream by pytorch/executorch
    # PR 22851, not released): spell the tanh form out in ops XNNPACK runs exactly.
    if approximate != "tanh":
        return NotImplemented  # exact GELU: XNNPACK's own kernel is right
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


def _sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    # Unmasked attention (Whisper's encoder and cross-attention, vision encoders) as two batched matmuls
    # around a softmax, all of which XNNPACK runs. torch's own decomposition scales K as well as Q,
    # broadcasts both into copies for its bmm and wraps the softmax in a "safe" one (eq, any,
    # logical_not, where: zeros for a row with every key masked): all portable ops over the whole
    # score matrix, 55% of a real tiny.en encoder window and most of a decode step's cross-attention
    # (benchmarks/speech/tiny_en_longform.py). With no mask and no causal cut no row is fully masked,
    # so the plain softmax is exact; a masked, causal or GQA call keeps torch's decomposition.
    if attn_mask is not None or is_causal or dropout_p or enable_gqa or q.dim() != 4:
        return NotImplemented
    # -1 for the lengths: a reshape whose shape holds a symbolic size is not delegated (a portable copy)
    heads, d = q.shape[0] * q.shape[1], q.shape[-1]
    scores = torch.bmm(
        q.reshape(heads, -1, d) * (scale if scale is not None else d**-0.5), k.reshape(heads, -1, d).transpose(1, 2)
    )
    out = torch.bmm(torch.softmax(scores, dim=-1), v.reshape(heads, -1, v.shape[-1]))
    return out.reshape(q.shape[0], q.shape[1], -1, v.shape[-1])


def delegation(graph_module: Any) -> Delegation:
    """Delegated vs non-delegated nodes of a lowered method, and the non-delegated ops by name.

    Example:
        >>> delegation(edge.exported_program("token_embedding").graph_module)  # doctest: +SKIP
        Delegation(backend='XnnpackBackend', subgraphs=0, delegated_nodes=0, non_delegated_nodes=1, non_delegated_ops={'aten_embedding_default': 1})
    """
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(graph_module)
    ops = {op: b.non_delegated for op, b in sorted(info.delegation_by_operator.items()) if b.non_delegated}
    return Delegation(
        backend=BACKEND,
        subgraphs=info.num_delegated_subgraphs,
        delegated_nodes=info.num_delegated_nodes,
        non_delegated_nodes=info.num_non_delegated_nodes,
        non_delegated_ops=ops,
    )


def _check(
    path: Path,
    units: dict[str, ExportUnit],
    references: dict[str, list[torch.Tensor]],
    tolerances: dict[str, float],
    floats: dict[str, list[torch.Tensor]],
) -> dict[str, Parity]:
    """Run every method once in the ExecuTorch runtime on its example inputs, against PyTorch.

    `floats`: a torchao-quantized method's outputs before it was quantized. Its program also passes where it is
    nearer its fake-quantized module than that module is to float: `pte_quantize.NOISE_SHARE` of the
    quantization noise, RMS. A deep decoder's max difference on random inputs is chaotic (each per-token int8
    rounding that falls the other way moves every later layer): session 7's all-8da8w demo program, which passed
    here, was 2.0 to 8.4 from its module on 5 random inputs (scale 29-32: 3 of 5 over 0.1 x scale), and 0.05 to
    0.41 of the module's noise from float. A program that skips its quantization is 1.0 of it.
    """
    from executorch.runtime import Runtime

    from edgemfm.exporters.pte_quantize import NOISE_SHARE
    from edgemfm.runtimes.executorch import load_kernels

    load_kernels(units.values())  # an int8 cache's write and attention, as the runtime loads them
    program = Runtime.get().load_program(path)
    parity = {}
    for name, unit in units.items():
        got = program.load_method(name).execute(_flat(unit.args))
        reference, tolerance = references[name], tolerances[name]
        diff = max(float((g - r).abs().max()) if r.numel() else 0.0 for g, r in zip(got, reference))
        # Relative to the outputs' magnitude, as for ONNX: float32 sums of large activations carry larger errors.
        scale = max([1.0] + [float(r.abs().max()) for r in reference if r.numel()])
        share = _noise_share(got, reference, floats[name]) if name in floats else None
        if not (diff <= tolerance * scale or (share is not None and share <= NOISE_SHARE)):
            shared = "" if share is None else f", and by {share:.2g} of its quantization noise > {NOISE_SHARE:g}"
            raise ParityError(
                f"{name}: ExecuTorch output differs from PyTorch by {diff:.3g} > tolerance {tolerance:g} x scale {scale:.3g}"
                + shared
            )
        parity[name] = Parity(max_abs_diff=diff, scale=scale, tolerance=tolerance)
    return parity


def _noise_share(got: list[torch.Tensor], reference: list[torch.Tensor], floats: list[torch.Tensor]) -> float:
    """The RMS of the program's difference from its fake-quantized module, over the module's from float."""
    off = sum(float((g - r).pow(2).sum()) for g, r in zip(got, reference))
    noise = sum(float((r - f).pow(2).sum()) for r, f in zip(reference, floats))
    return math.sqrt(off / noise) if noise else math.inf


def _outputs(unit: ExportUnit) -> list[torch.Tensor]:
    """`unit`'s outputs on its example inputs, its buffers (a decoder's cache) left as they were."""
    state = {key: b.clone() for key, b in unit.module.named_buffers()}
    with torch.no_grad():
        out = unit.module(*unit.args)
        for key, b in unit.module.named_buffers():
            b.copy_(state[key])
    return list(out) if isinstance(out, (tuple, list)) else [out]


def write_units(
    units: dict[str, ExportUnit],
    stage: Path,
    tolerance: float,
    advance: Callable[[str], None],
    *,
    max_seq_len: int,
    fuse: bool = True,
) -> tuple[dict[str, Component], dict[str, Parity], dict[str, Delegation]]:
    """Export `units` as the methods of `stage/model.pte`, check them, and describe them for the manifest.

    `advance(description)` is called as each step starts (one per unit, then lowering, then checking).
    `fuse` is accepted for the writers' common signature: it names the ONNX graph fusions, and
    XNNPACK's partitioner and its own passes do that job for a pte program.
    Returns the components, the parity per method and the delegation per method.
    """
    return write_program(units, stage, tolerance, advance, max_seq_len=max_seq_len, recipe=FLOAT32)[:3]


def write_program(
    units: dict[str, ExportUnit],
    stage: Path,
    tolerance: float,
    advance: Callable[[str], None],
    *,
    max_seq_len: int,
    recipe: Recipe,
    calibration: dict[str, list[tuple]] | None = None,
    kv_cache: str = "float",
    decoder_feeds: dict[str, list[tuple]] | None = None,
) -> tuple[dict[str, Component], dict[str, Parity], dict[str, Delegation], dict[str, Quantization]]:
    """`write_units` with the modules quantized per `recipe` first (exporters/pte_quantize.py); also what was done.

    `calibration`: the encoders to quantize to static int8 (exporters/pte_encoders.py), each with the
    inputs its ranges are fitted to. A quantized method is checked against its fake-quantized PyTorch
    module, within pte_quantize.TOLERANCE. `kv_cache` "int8": the decoder's cache as int8 per token and
    head (exporters/llm_ops.py), checked against the same int8 cache in PyTorch within that tolerance.
    `decoder_feeds`: the decoders that cross-attend to a calibrated encoder, each with its teacher-forced feeds
    (pte_decoders.decoder_inputs): the linears whose int8 costs its next-token KL the most stay float.

    Example:
        >>> write_program(units, stage, 1e-4, print, max_seq_len=256, recipe=pte_recipe(profile, "int4"))[3]  # doctest: +SKIP
    """
    from edgemfm.exporters import pte_decoders, pte_encoders, pte_quantize

    units = {name: _program_unit(name, unit, max_seq_len, kv_cache) for name, unit in units.items()}
    quantization, floats = {}, {}
    # the modules the encoders run, before a calibrated one is replaced by its PT2E module: what they run, not all
    # they hold (the demo's encoders hold the whole model, and its decoder's linears would all count as theirs)
    encoders = tuple(m for name, unit in units.items() if name in pte_encoders.ENCODERS for m in _leaves_run(unit))
    for name, unit in units.items():
        if name in (calibration or {}):
            advance(f"quantizing {name} (int8, calibrated)")
            shapes = _dynamic_shapes(unit, max_seq_len)
            target = pte_encoders.target_db(name, units)
            units[name], done = pte_encoders.quantize_encoder(name, unit, calibration[name], shapes, target)
        else:
            before = _outputs(unit) if recipe is not FLOAT32 and name not in pte_encoders.ENCODERS else None
            kept, held = None, recipe
            if name in (decoder_feeds or {}) and recipe is not FLOAT32:
                advance(f"judging {name}'s linears at int8 (calibrated, against float)")
                kept = pte_decoders.linears_to_keep(name, unit.module, recipe, decoder_feeds[name], others=encoders)
                held = pte_decoders.keeping(recipe, name, kept)
            done = pte_quantize.quantize_module(name, unit.module, held, others=encoders)
            if done is not None and kept is not None:
                reasons = {**done.float_units, **pte_decoders.reasons(kept)}
                done = replace(done, float_units=reasons, notes={**done.notes, f"{name}/linears": kept.note})
            if done is not None:
                floats[name] = before
        if done is not None:
            quantization[name] = done
    programs, references, peaks, flops = {}, {}, {}, {}
    for name, unit in units.items():
        advance(f"exporting {name}")
        programs[name], references[name], peaks[name], flops[name] = _capture(name, unit, max_seq_len)
    advance("lowering to XNNPACK")
    edge = lower(programs)
    delegated = {name: delegation(edge.exported_program(name).graph_module) for name in units}
    path = stage / PROGRAM
    path.write_bytes(edge.to_executorch(_config()).buffer)
    advance("checking in the ExecuTorch runtime")
    int8_cache = {n for n, u in units.items() if u.kv_cache is not None and u.kv_cache.dtype == "int8"}
    tolerances = {n: pte_quantize.TOLERANCE if n in {*quantization, *int8_cache} else tolerance for n in units}
    for name in int8_cache & set(quantization):
        # the cache rounds each row from XNNPACK's activations in the program and torchao's in PyTorch, which
        # differ already (TOLERANCE): SmolLM2 int4 on the random example rows, 0.110 x scale (float cache: 0.094)
        tolerances[name] = 2 * pte_quantize.TOLERANCE
    parity = _check(path, units, references, tolerances, floats)
    components = {
        name: _component(name, unit, programs[name], references[name], peaks[name], flops[name])
        for name, unit in units.items()
    }
    for name, q in quantization.items():
        quantization[name] = replace(q, weight_bytes=components[name].weight_bytes)
    return components, parity, delegated, quantization


def lower(programs: dict[str, Any]) -> Any:
    """The captured methods in ExecuTorch's edge dialect, what XNNPACK takes delegated to it.

    A transpose of a transpose is folded first: transformers' attention turns values to [1, heads, seq, d]
    and the llama:: ops take them back as [1, seq, heads, d], and inside a dynamic-shape XNNPACK subgraph
    every op is re-planned at each call (benchmarks/runtime/pte_step_profile.py: SmolLM2's step ran 180
    transposes that ExecuTorch's own program does not; this folds the 60 of the values).

    Example:
        >>> lower({"text_decoder": torch.export.export(module, args)}).to_executorch()  # doctest: +SKIP
    """
    from executorch.backends.transforms.fuse_cascaded_transpose_or_permute_ops import (
        FuseCascadedTransposeOrPermuteOps,
    )
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS, ViewCopyConfig
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    configs = [_input_views(ViewCopyConfig) if c is ViewCopyConfig else c for c in ALL_PARTITIONER_CONFIGS]
    return to_edge_transform_and_lower(
        programs, transform_passes=[FuseCascadedTransposeOrPermuteOps()], partitioner=[XnnpackPartitioner(configs)]
    )


def _input_views(view_copy: type) -> type:
    """XNNPACK's reshape config, less the reshapes of a method's own inputs: those become free views.

    XNNPACK runs a reshape as a copy ("Static Reshape"). Left to ExecuTorch, a reshape with static shapes is a
    view of its input's memory (exir's ReplaceViewCopyWithViewPass), and a method's inputs are the caller's
    tensors (`_config`). A Whisper decode step reshaped the clip's 8 cross-attention K/V (18 MB for tiny.en)
    for its batched matmuls at every call: 1.6 ms of a 5.8 ms int8 step.
    """

    class InputViews(view_copy):
        def check_constraints(self, node: torch.fx.Node, ep: Any) -> bool:
            source = node.args[0]
            if source.op == "placeholder" and source.name in ep.graph_signature.user_inputs:
                return False
            return super().check_constraints(node, ep)

    return InputViews


def _config() -> Any:
    """The program's memory plan: its inputs are the caller's tensors, not copies in planned buffers.

    As ExecuTorch's own LLM export (extension/llm/export/builder.py) plans them: a Whisper decode step takes
    the clip's cross-attention K/V (8 x 2.3 MB for tiny.en) at every call, and copying them in cost 2 ms of
    a step; shared, 0.01 ms. The runtime keeps each input alive through the call (runtimes/executorch.py).
    """
    from executorch.exir import ExecutorchBackendConfig
    from executorch.exir.passes import MemoryPlanningPass

    return ExecutorchBackendConfig(memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False))


def _leaves_run(unit: ExportUnit) -> list[torch.nn.Module]:
    """The leaf modules (Linear, Embedding, ...: no children) that `unit`'s module calls on its example inputs."""
    called: list[torch.nn.Module] = []
    leaves = [m for m in unit.module.modules() if next(m.children(), None) is None]
    hooks = [m.register_forward_pre_hook(lambda m, _args: called.append(m)) for m in leaves]
    try:
        with torch.no_grad():
            unit.module(*unit.args)
    finally:
        for hook in hooks:
            hook.remove()
    return called


def _axes(unit: ExportUnit, name: str) -> dict[int, str]:
    return {d: a for d, a in unit.dynamic_axes.get(name, {}).items() if a not in ONE_ITEM}


def _reached(graph: Any) -> set[str]:
    """Names of the nodes the outputs and the in-place writes (the cache updates) depend on."""
    roots = [
        n for n in graph.nodes if n.op == "output" or getattr(getattr(n.target, "_schema", None), "is_mutable", False)
    ]
    seen: set[str] = set()
    while roots:
        node = roots.pop()
        if node.name not in seen:
            seen.add(node.name)
            roots.extend(node.all_input_nodes)
    return seen


def _component(
    name: str, unit: ExportUnit, program: Any, reference: list[torch.Tensor], peak: int, flops: int
) -> Component:
    # Parameters and persistent buffers the computation reaches: the weights the runtime maps
    # (torch.export lifts every parameter, and keeps layers whose output nothing uses, e.g. CLIP's
    # last layer under vision_feature_layer=-2; ExecuTorch drops them from the program). The KV
    # cache is a non-persistent buffer, planned by ExecuTorch and counted by its layout, not here.
    live = _reached(program.graph)
    lifted = {**program.graph_signature.inputs_to_parameters, **program.graph_signature.inputs_to_buffers}
    weight_bytes = sum(
        program.state_dict[fqn].numel() * program.state_dict[fqn].element_size()
        for placeholder, fqn in lifted.items()
        if placeholder in live and fqn in program.state_dict
    )
    return Component(
        file=PROGRAM,
        format="pte",
        dtype="float32",
        inputs=tuple(_spec(n, t, _axes(unit, n)) for n, t in zip(unit.input_names, _flat(unit.args))),
        outputs=tuple(_spec(n, t, _axes(unit, n)) for n, t in zip(unit.output_names, reference)),
        weight_bytes=weight_bytes,
        peak_activation_bytes=peak,
        kv_cache=unit.kv_cache,
        cross_attention=unit.cross_attention,
        flops_per_item=flops // unit.items,
        method=name,
    )
