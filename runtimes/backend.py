"""The protocol every runtime backend implements: load a component, run it, name its inputs and outputs.

The pipeline talks to components only through this, so a backend (ONNX Runtime, ExecuTorch)
is one file. The decode loop feeds each step's `present.*` outputs back as the next `past.*`
inputs, so `run` should return arrays it can take back without a copy.

Example:
    >>> session: Session = OrtSession.load("bundle/text_decoder.onnx", ["CPUExecutionProvider"])  # doctest: +SKIP
    >>> session.run({"input_ids": ids})["inputs_embeds"].shape                                   # doctest: +SKIP
    (1, 4, 192)
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Session(Protocol):
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    provider: str  # what runs it, reported to the user (an ORT execution provider, an ExecuTorch delegate)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """All outputs as numpy arrays."""
        ...
