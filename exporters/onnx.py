"""Write one component to ONNX with torch.onnx's dynamo exporter, fuse it, and prove its parity.

The dynamo exporter gives much cleaner graphs than the TorchScript one (a Llama decoder: about
200 nodes against 600) and handles the flat KV cache with named dynamic axes; every component is
run in ONNX Runtime against PyTorch on its example inputs before and after fusion.

Example:
    >>> component, parity = write_onnx(unit, Path("stage/text_decoder.onnx"), tolerance=1e-4)  # doctest: +SKIP
    >>> parity.max_abs_diff < 1e-4                                                             # doctest: +SKIP
    True
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgemfm.errors import EdgemfmError
from edgemfm.exporters.family import ExportUnit
from edgemfm.exporters.fusions import fuse
from edgemfm.manifest import Component, KVCache, TensorSpec
from edgemfm.report import Delegation, Fusion, Parity

OPSET = 18
EXPORT_SIGNATURE = "pkg.torch.export."  # graph metadata torch.export writes: its program's signature and shape ranges


class ParityError(EdgemfmError):
    """An exported graph does not reproduce the PyTorch model within the family's tolerance."""


def _flat(args: tuple[Any, ...]) -> list[torch.Tensor]:
    return [t for a in args for t in (a if isinstance(a, tuple) else (a,))]


def _dynamic_shapes(unit: ExportUnit) -> tuple[Any, ...]:
    dims: dict[str, torch.export.Dim] = {}
    names = iter(unit.input_names)

    def spec(_tensor: torch.Tensor) -> dict[int, Any]:
        axes = unit.dynamic_axes.get(next(names), {})
        return {d: dims.setdefault(a, torch.export.Dim(a)) for d, a in axes.items()}

    return tuple(tuple(spec(t) for t in a) if isinstance(a, tuple) else spec(a) for a in unit.args)


def _spec(name: str, t: torch.Tensor, axes: dict[int, str]) -> TensorSpec:
    dtype = str(t.dtype).removeprefix("torch.")
    return TensorSpec(name, dtype, tuple(axes.get(d, int(n)) for d, n in enumerate(t.shape)))


def _reference(unit: ExportUnit) -> tuple[list[torch.Tensor], int, int]:
    """PyTorch outputs on the example inputs, the largest tensor any submodule produced, the FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    peak = 0

    def hook(_m, _i, out):
        nonlocal peak
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                peak = max(peak, t.numel() * t.element_size())

    handles = [m.register_forward_hook(hook) for m in unit.module.modules()]
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as flops:
            out = unit.module(*unit.args)
    finally:
        for h in handles:
            h.remove()
    return list(out) if isinstance(out, (tuple, list)) else [out], peak, flops.get_total_flops()


def _parity(
    path: Path, unit: ExportUnit, reference: list[torch.Tensor], tolerance: float
) -> tuple[float, float, int | None]:
    """Max abs difference of the graph at `path` from PyTorch, the outputs' magnitude, and the run's memory.

    An encoder's session is opened as the runtime opens it (no arena: runtimes/onnxruntime.py),
    and the growth of the process's resident memory over the one run is measured from the OS:
    the attention scores and convolution buffers inside the graph that no module output shows.
    None where the OS can't reset its peak counter, or for the decoder (the budget models it).
    """
    import onnxruntime as ort

    from edgemfm.runtimes import budget

    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = unit.kv_cache is not None
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {n: t.numpy() for n, t in zip(unit.input_names, _flat(unit.args))}
    measured = unit.kv_cache is None and budget.release_free_heap() and budget.reset_peak()
    base = budget.resident_bytes()
    got = session.run(list(unit.output_names), feeds)
    grown = budget.peak_resident_bytes() - base if measured else None
    diff = max(float(np.abs(g - r.numpy()).max()) if g.size else 0.0 for g, r in zip(got, reference))
    # Relative to the outputs' magnitude: float32 sums of large activations carry larger errors.
    scale = max([1.0] + [float(r.abs().max()) for r in reference if r.numel()])
    if not diff <= tolerance * scale:
        raise ParityError(
            f"{path.stem}: ONNX output differs from PyTorch by {diff:.3g} > tolerance {tolerance:g} x scale {scale:.3g}"
        )
    return diff, scale, grown


def _with_fused_cache(kv: KVCache | None, proto: Any) -> KVCache | None:
    """The cache layout plus what the fusions wrote of it: the cos/sin table GroupQueryAttention reads, and
    whether past and present may share one buffer."""
    import json

    from edgemfm.exporters.fusions import rotary_attention, shared_cache

    props = {p.key: p.value for p in proto.metadata_props}
    if kv is None:
        return kv
    if shared_cache.METADATA in props:
        kv = replace(kv, shared=True)
    if rotary_attention.METADATA in props:
        table = json.loads(props[rotary_attention.METADATA])
        kv = replace(kv, rotary_table=table["table"], rotary_frequencies=tuple(table["frequencies"]))
    return kv


def write_onnx(
    unit: ExportUnit, path: Path, tolerance: float, fuse_ops: bool = True, max_seq_len: int | None = None
) -> tuple[Component, Parity]:
    """Export `unit` to `path`, fuse it (unless told not to), check it in ONNX Runtime, and describe it;
    `max_seq_len` sizes a decoder's rotary table (exporters/fusions/rotary_attention.py)."""
    import onnx
    import onnx.numpy_helper

    reference, peak, flops = _reference(unit)
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():  # the exporter narrates each stage
        program = torch.onnx.export(
            unit.module,
            unit.args,
            input_names=list(unit.input_names),
            output_names=list(unit.output_names),
            dynamic_shapes=_dynamic_shapes(unit),
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    # torch.export's program signature lists every parameter and buffer of the model the unit was traced from
    # (83 KB in each demo encoder): a pruned draft's vision encoder differed from its target's file though graph
    # and weights were the same. Nothing reads it; without it equal encoders are equal files, and a draft reads
    # its target's encoded media (`runtimes/pipeline.same_encoders`).
    for key in [k for k in program.model.graph.metadata_props if k.startswith(EXPORT_SIGNATURE)]:
        del program.model.graph.metadata_props[key]
    program.save(str(path), external_data=False)
    unfused_diff, _, _ = _parity(path, unit, reference, tolerance)  # the export itself, before any rewrite
    fusion = fuse(path, max_seq_len) if fuse_ops else Fusion(skipped="export --no-fuse")
    diff, scale, measured = _parity(path, unit, reference, tolerance)  # the fused graph is what ships
    proto = onnx.load(str(path), load_external_data=False)
    graph = proto.graph
    weight_bytes = sum(onnx.numpy_helper.to_array(init).nbytes for init in graph.initializer)
    component = Component(
        file=path.name,
        format="onnx",
        dtype="float32",
        inputs=tuple(_spec(n, t, unit.dynamic_axes.get(n, {})) for n, t in zip(unit.input_names, _flat(unit.args))),
        outputs=tuple(_spec(n, t, unit.dynamic_axes.get(n, {})) for n, t in zip(unit.output_names, reference)),
        weight_bytes=weight_bytes,
        peak_activation_bytes=max(peak, measured or 0),
        kv_cache=_with_fused_cache(unit.kv_cache, proto),
        cross_attention=unit.cross_attention,
        flops_per_item=flops // unit.items,
    )
    return component, Parity(
        max_abs_diff=diff,
        max_abs_diff_unfused=unfused_diff,
        scale=scale,
        tolerance=tolerance,
        nodes=len(graph.node),
        fusion=fusion,
    )


def write_units(
    units: dict[str, ExportUnit],
    stage: Path,
    tolerance: float,
    advance: Callable[[str], None],
    *,
    max_seq_len: int,
    fuse: bool = True,
) -> tuple[dict[str, Component], dict[str, Parity], dict[str, Delegation]]:
    """Write each unit as `stage/<name>.onnx` (fused unless `fuse` is False).

    The ONNX decoder's cache grows call by call; `max_seq_len`, the most it holds, sizes only the
    cos/sin table of a rotation fused into GroupQueryAttention. No backend delegation happens at
    export, so the delegation returned is empty.

    Example:
        >>> components, parity, delegation = write_units(split.units, stage, 1e-4, print, max_seq_len=2048)  # doctest: +SKIP
    """
    components, parity = {}, {}
    for name, unit in units.items():
        advance(f"exporting {name}")
        components[name], parity[name] = write_onnx(unit, stage / f"{name}.onnx", tolerance, fuse, max_seq_len)
    return components, parity, {}
