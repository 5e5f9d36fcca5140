"""The ExecuTorch backend: a bundle's `.pte` program, one loaded method per component.

It runs through the ExecuTorch Python runtime (`executorch.runtime`, in the executorch wheel).
That runtime is NOT torch-free: its pybindings link libtorch and `import torch` when loaded
(executorch 1.5.1), and methods take and return torch tensors. So this module is imported only
when a bundle holds a pte component: `import edgemfm` and ONNX bundles stay free of torch, and a
device running pte bundles from Python needs `pip install executorch` (which brings torch).

All components of a program share one loaded `Program`, so its weights are mapped once.

Example:
    >>> sessions = open_components(Path("bundle"), manifest.components, manifest, profile)  # doctest: +SKIP
    >>> sessions["token_embedding"].run({"input_ids": np.array([[1, 2]])})["inputs_embeds"].shape  # doctest: +SKIP
    (1, 2, 192)
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from edgemfm.errors import BundleError, InputError, MissingExtraError
from edgemfm.manifest import Component, Manifest
from edgemfm.profiles import DeviceProfile
from edgemfm.runtimes import native

BACKEND = "XnnpackBackend"  # what exporters/executorch.py lowers to


class PteSession:
    """One method of a loaded program (the backend protocol: load, run, input/output names)."""

    provider = f"ExecuTorch ({BACKEND})"

    def __init__(self, method: Any, input_names: tuple[str, ...], output_names: tuple[str, ...]):
        self.method, self.input_names, self.output_names = method, input_names, output_names
        meta = method.metadata
        # Planned (upper-bound) sizes: ExecuTorch refuses larger inputs with a bare error code.
        self.bounds = {n: tuple(meta.input_tensor_meta(i).sizes()) for i, n in enumerate(input_names)}

    @classmethod
    def load(cls, program: Any, component: Component) -> PteSession:
        if component.method not in program.method_names:
            raise BundleError(
                f"{component.file} has no method {component.method!r}; it has: {', '.join(sorted(program.method_names))}"
            )
        return cls(
            program.load_method(component.method),
            tuple(t.name for t in component.inputs),
            tuple(t.name for t in component.outputs),
        )

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        for name, bound in self.bounds.items():
            if any(n > b for n, b in zip(feeds[name].shape, bound)):
                raise InputError(
                    f"input {name!r} of shape {feeds[name].shape} is larger than the program takes, {bound}: its "
                    "dynamic axes are bounded by the bundle's max_seq_len (export with a larger --max-seq-len)"
                )
        out = self.method.execute([torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.input_names])
        return {n: t.numpy() for n, t in zip(self.output_names, out)}


def open_components(
    path: Path, components: dict[str, Component], manifest: Manifest, profile: DeviceProfile, threads: int = 0
) -> dict[str, PteSession]:
    """A session per pte component, each program file loaded once."""
    try:
        # the kernels of ExecuTorch's LLM ops (llama::update_cache, llama::custom_sdpa) a decoder's program calls
        import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401
        import executorch.kernels.quantized  # noqa: F401  (quantized_decomposed::embedding_4bit/byte: quantized tables)
        from executorch.runtime import Runtime
    except ImportError:
        raise MissingExtraError("executorch") from None
    runtime = Runtime.get()
    if not runtime.backend_registry.is_available(BACKEND):
        have = ", ".join(runtime.backend_registry.registered_backend_names) or "none"
        raise BundleError(f"this executorch build has no {BACKEND}, which the bundle's program needs; it has: {have}")
    if threads > 0:
        set_threads(threads)
    load_kernels(components.values())
    programs = {file: runtime.load_program(path / file) for file in {c.file for c in components.values()}}
    return {name: PteSession.load(programs[c.file], c) for name, c in components.items()}


def load_kernels(components: Iterable[Component]) -> None:
    """Load what the programs of `components` call beyond ExecuTorch's own kernels: an int8 KV cache's write and
    attention (edgemfm::cache_int8, edgemfm::sdpa_int8), built on this machine the first time (runtimes/native.py).

    Example:
        >>> load_kernels(read_manifest(Path("bundle")).components.values())  # doctest: +SKIP
    """
    if any(c.kv_cache is not None and c.kv_cache.dtype == "int8" for c in components):
        native.load("int8_cache")


def set_threads(threads: int) -> None:
    """Run a program's kernels on `threads` threads: ExecuTorch's threadpool and torch's intra-op pool both.

    XNNPACK's delegate runs on ExecuTorch's pool, but llama::custom_sdpa's kernel (the LLM ops
    library) splits its work on torch's: left at torch's default it ran a second thread beside a
    1-thread pool, and on a loaded machine the two spun waiting for each other (a decode step at
    1,024 cached positions cost 130 to 1,590 CPU ms, 23 ms with both pools at 1).

    Example:
        >>> set_threads(1); torch.get_num_threads()  # doctest: +SKIP
        1
    """
    import torch
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(threads)  # the only thread-count control the pybindings expose
    torch.set_num_threads(threads)
