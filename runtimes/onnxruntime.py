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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

log = logging.getLogger("edgemfm")


def choose_providers(preferred: Sequence[str]) -> list[str]:
    """The preferred providers this onnxruntime build has, in order; CPU when it has none of them."""
    available = ort.get_available_providers()
    chosen = [p for p in preferred if p in available] or ["CPUExecutionProvider"]
    if missing := [p for p in preferred if p not in available]:
        log.warning("edgemfm: %s not available here; using %s", ", ".join(missing), chosen[0])
    return chosen


class OrtSession:
    """A component's inference session (the backend protocol of `runtimes/backend.py`)."""

    def __init__(self, session: ort.InferenceSession):
        self.session = session
        self.input_names = tuple(i.name for i in session.get_inputs())
        self.output_names = tuple(o.name for o in session.get_outputs())
        self.provider = session.get_providers()[0]

    @classmethod
    def load(cls, path: str | Path, providers: Sequence[str], threads: int = 0, spin: bool = True, arena: bool = True) -> OrtSession:
        """A session on the first of `providers` that takes it; `arena=False` returns freed buffers to the OS."""
        options = ort.SessionOptions()
        options.enable_cpu_mem_arena = arena
        options.intra_op_num_threads = threads  # 0: onnxruntime picks one per core
        # Idle sessions that spin their threads slow the busy one on a small CPU.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        options.log_severity_level = 3
        return cls(ort.InferenceSession(str(path), options, providers=list(providers)))

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(None, feeds)))

    def run_keep(self, feeds: dict[str, Any], keep: Sequence[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Run with outputs named in `keep` left as OrtValues that later runs take back as inputs.

        The KV cache goes from one decoder step to the next through IO binding without becoming
        a numpy array on the way: no conversion, no copy per step.
        """
        binding = self.session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self.output_names:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        kept = set(keep)
        plain, native = {}, {}
        for name, value in zip(self.output_names, binding.get_outputs()):
            if name in kept:
                native[name] = value
            else:
                plain[name] = value.numpy()
        return plain, native

    @staticmethod
    def to_numpy(value: Any) -> np.ndarray:
        """A kept output (an OrtValue) or a numpy array, as numpy."""
        return value.numpy() if isinstance(value, ort.OrtValue) else np.asarray(value)
