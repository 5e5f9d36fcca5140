"""The ONNX Runtime backend: one session per component, providers in the profile's order.

A provider the profile prefers but this machine lacks (TensorRT on a board without it, CUDA in
an emulator) is skipped with one log line naming it and the provider used instead.

Example:
    >>> session = OrtSession.load("bundle/text_decoder.onnx", ("CPUExecutionProvider",))  # doctest: +SKIP
    >>> session.provider                                                                 # doctest: +SKIP
    'CPUExecutionProvider'
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgemfm.errors import BundleError
from edgemfm.manifest import Component, Manifest
from edgemfm.profiles import DeviceProfile
from edgemfm.runtimes import native

log = logging.getLogger("edgemfm")
# What ONNX Runtime raises for feeds its graph refuses (ValueError: a missing input).
REFUSED = (ort.capi.onnxruntime_pybind11_state.InvalidArgument, ValueError)


def choose_providers(preferred: Sequence[str]) -> list[str]:
    """The preferred providers this onnxruntime build has, in order; CPU when it has none of them."""
    available = ort.get_available_providers()
    chosen = [p for p in preferred if p in available] or ["CPUExecutionProvider"]
    if missing := [p for p in preferred if p not in available]:
        log.warning("edgemfm: %s not available here; using %s", ", ".join(missing), chosen[0])
    return chosen


class OrtSession:
    """A component's inference session (the backend protocol of `runtimes/backend.py`).

    A grown cache goes back in as the numpy arrays `run` returned: binding every past and present
    afresh at each call was measured slower on CPU (1.73 against 1.34 ms per step of the default
    model's decoder at 100 cached tokens: the per-input binding calls cost more than the
    conversion they save). A shared cache's buffers are bound once instead (`in_place`).
    """

    def __init__(self, session: ort.InferenceSession, name: str = ""):
        self.session, self.name = session, name
        self.input_names = tuple(i.name for i in session.get_inputs())
        self.output_names = tuple(o.name for o in session.get_outputs())
        self.provider = session.get_providers()[0]

    @classmethod
    def load(
        cls,
        path: str | Path,
        providers: Sequence[str],
        threads: int = 0,
        spin: bool = True,
        arena: bool = True,
        kernels: Sequence[str] = (),
    ) -> OrtSession:
        """A session on the first of `providers` that takes it; `arena=False` returns freed buffers to the OS;
        `kernels`: edgemfm's custom-op libraries the graph calls (built on this machine the first time)."""
        options = ort.SessionOptions()
        for name in kernels:
            options.register_custom_ops_library(str(native.build(name)))
        options.enable_cpu_mem_arena = arena
        options.intra_op_num_threads = threads  # 0: onnxruntime picks one per core
        # Idle sessions that spin their threads slow the busy one on a small CPU.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        options.log_severity_level = 3
        try:
            return cls(ort.InferenceSession(str(path), options, providers=list(providers)), Path(path).name)
        except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidProtobuf) as e:
            reason = str(e).splitlines()[0][:200]
            raise BundleError(
                f"bundle file {Path(path).name!r} is not an ONNX model onnxruntime can load ({reason}); "
                "allowed: the graph the exporter wrote"
            ) from None

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return dict(zip(self.output_names, self.session.run(None, feeds)))
        except REFUSED as e:
            raise self._refused(e) from None

    def in_place(self, buffers: dict[str, tuple[str, np.ndarray]]) -> Callable[[dict[str, np.ndarray]], dict]:
        """A run in which each input named in `buffers` and the output paired with it are one preallocated array
        (input name -> (output name, array)): bound once, so a call binds only its other feeds, and a kernel that
        sees its past and present at one address appends to them in place (GroupQueryAttention). The buffers'
        outputs come back as the arrays themselves, the others as new arrays.

        Example:
            >>> step = session.in_place({"past.0.key": ("present.0.key", np.zeros((1, 2, 256, 64), np.float32))})  # doctest: +SKIP
            >>> step({"inputs_embeds": x, "attention_mask": mask, "position_ids": positions})["logits"]  # doctest: +SKIP
        """
        binding = self.session.io_binding()
        arrays = {}
        for name, (output, array) in buffers.items():
            value = ort.OrtValue.ortvalue_from_numpy(array)  # the array's own memory, on the CPU
            binding.bind_ortvalue_input(name, value)
            binding.bind_ortvalue_output(output, value)
            arrays[output] = array
        others = [name for name in self.output_names if name not in arrays]
        order = [*arrays, *others]  # the binding keeps outputs in the order they were first bound
        sized = _sized_outputs(self.session, others)

        def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            for name, array in feeds.items():
                binding.bind_cpu_input(name, array)
            made = _allocate(sized, feeds)
            for name, array in made.items():  # a new array per call: a caller may keep the last one
                binding.bind_output(name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)
            for name in others:
                if name not in made:  # allocated by the run, whatever this call's shape
                    binding.bind_output(name)
            try:
                self.session.run_with_iobinding(binding)
            except REFUSED as e:
                raise self._refused(e) from None
            if len(made) == len(others):  # every output is an array of ours: no OrtValue to wrap
                return {**arrays, **made}
            got = binding.get_outputs()
            return {
                name: arrays[name] if name in arrays else made[name] if name in made else got[i].numpy()
                for i, name in enumerate(order)
            }

        return run

    def _refused(self, error: Exception) -> BundleError:
        # The feeds follow the manifest (pre-processing sizes, cache layout): a graph that refuses
        # them disagrees with its manifest.
        reason = " ".join(str(error).split())[:300]
        return BundleError(
            f"the graph of {self.name!r} refuses the inputs its manifest describes ({reason}); "
            "allowed: a manifest matching its graphs"
        )


ELEMENT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}


def _sized_outputs(session: ort.InferenceSession, names: Sequence[str]) -> dict[str, tuple[np.dtype, list]]:
    """The outputs among `names` whose shape follows from the fed inputs' (each dim a number or an axis an input
    names: the logits' [batch, seq, vocab]): name -> (dtype, per dim its size or the (input, position) giving it)."""
    axes = {}
    for i in session.get_inputs():
        for at, dim in enumerate(i.shape):
            if isinstance(dim, str):
                axes.setdefault(dim, (i.name, at))
    sized = {}
    for o in session.get_outputs():
        if o.name in names and o.type in ELEMENT_TYPES and all(isinstance(d, int) or d in axes for d in o.shape):
            sized[o.name] = (np.dtype(ELEMENT_TYPES[o.type]), [d if isinstance(d, int) else axes[d] for d in o.shape])
    return sized


def _allocate(sized: dict[str, tuple[np.dtype, list]], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """An empty array for each sized output whose axes this call's feeds give."""
    made = {}
    for name, (dtype, dims) in sized.items():
        if all(isinstance(d, int) or d[0] in feeds for d in dims):
            made[name] = np.empty([d if isinstance(d, int) else feeds[d[0]].shape[d[1]] for d in dims], dtype)
    return made


def open_components(
    path: Path, components: dict[str, Component], manifest: Manifest, profile: DeviceProfile, threads: int = 0
) -> dict[str, OrtSession]:
    """A session per onnx component, on the profile's providers this machine has.

    Example:
        >>> open_components(Path("bundle"), m.components, m, load_profile("host"))["text_decoder"].provider  # doctest: +SKIP
        'CPUExecutionProvider'
    """
    providers = choose_providers(profile.execution_providers)
    several = len(manifest.components) > 1
    sessions = {
        # Encoders run once per item: without an arena their buffers go back to the OS before the decoder's peak.
        name: OrtSession.load(
            path / c.file,
            providers,
            threads=threads,
            spin=not several,
            arena=c.kv_cache is not None or name == manifest.generation.embedding,
            kernels=c.kernels,
        )
        for name, c in components.items()
    }
    for name, c in components.items():
        _check_io(name, c, sessions[name])
    return sessions


def _check_io(name: str, component: Component, session: OrtSession) -> None:
    """The graph's inputs and outputs are the ones the manifest declares (a renamed input would fail mid-run)."""
    for kind, declared, actual in (
        ("inputs", [t.name for t in component.inputs], session.input_names),
        ("outputs", [t.name for t in component.outputs], session.output_names),
    ):
        if set(declared) != set(actual):
            odd = sorted(set(declared) ^ set(actual))[0]
            raise BundleError(
                f"component {name!r}: the manifest's {kind} {sorted(declared)} differ from its graph's "
                f"{sorted(actual)} (at {odd!r}); allowed: the names in the graph"
            )
