"""The protocol every runtime backend implements: load a component, run it, name its inputs and outputs.

The pipeline talks to components only through this, so a backend (ONNX Runtime, ExecuTorch)
is one file. `run_keep` lets the decode loop hand the KV cache from one step to the next in the
backend's own tensor type; a backend without such a type returns numpy arrays there.

Example:
    >>> session: Session = OrtSession.load("bundle/text_decoder.onnx", ["CPUExecutionProvider"])  # doctest: +SKIP
    >>> logits, cache = session.run_keep(feeds, keep=["present.0.key"])                      # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np


class Session(Protocol):
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    provider: str  # what runs it, reported to the user (an ORT execution provider, an ExecuTorch delegate)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """All outputs as numpy arrays."""
        ...

    def run_keep(self, feeds: dict[str, Any], keep: Sequence[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(outputs not in `keep` as numpy, outputs in `keep` as backend values `feeds` accepts back)."""
        ...

    @staticmethod
    def to_numpy(value: Any) -> np.ndarray:
        """A value `run_keep` kept, as numpy (for slicing the cache)."""
        ...
