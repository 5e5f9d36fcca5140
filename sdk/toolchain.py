"""The host toolchain (torch, transformers, onnx ...): checked before slow work, silenced while it runs.

Shared by every host-side verb (`export`, `prune`, `finetune`'s recovery): a missing extra raises
a `MissingExtraError` naming the pip command, and the toolchain's own warnings and progress bars
stay quiet under our rich bar.

Example:
    >>> from edgemfm.toolchain import quiet, require
    >>> require("onnx")          # doctest: +SKIP
    >>> with quiet():            # doctest: +SKIP
    ...     model = load()
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator

from edgemfm.errors import MissingExtraError

# Bundle format -> the modules its export needs; "onnx" is also what pruning and recovery need.
TOOLCHAIN = {
    "onnx": ("torch", "transformers", "onnx", "onnxscript"),
    "pte": ("torch", "transformers", "onnx", "executorch"),
}


def require(format: str) -> None:
    """Raise `MissingExtraError` for the first module of `format`'s toolchain that does not import.

    Example:
        >>> require("onnx")   # doctest: +SKIP
    """
    for module in TOOLCHAIN[format]:
        try:
            __import__(module)
        except ImportError:
            raise MissingExtraError(module) from None


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the toolchain's own warnings and progress bars; our rich bar tells the story.

    Example:
        >>> with quiet():   # doctest: +SKIP
        ...     torch.onnx.export(...)
    """
    import torch  # noqa: F401  (torch sets its loggers' levels on import: set ours after it)

    loggers = {name: logging.getLogger(name) for name in ("torch", "torchao", "transformers")}
    levels = {name: lg.level for name, lg in loggers.items()}
    for lg in loggers.values():
        lg.setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, lg in loggers.items():
            lg.setLevel(levels[name])
        hf_logging.enable_progress_bar()


@contextlib.contextmanager
def quiet_quantizers() -> Iterator[None]:
    """Silence ONNX Runtime's quantizers: they log every node at INFO and advise pre-processing on the root logger.

    Example:
        >>> with quiet_quantizers():   # doctest: +SKIP
        ...     quantize_dynamic(model_in, model_out)
    """
    # Imported first: their import calls logging.basicConfig(level=INFO), which would undo ours.
    import onnxruntime.quantization
    import onnxruntime.quantization.matmul_nbits_quantizer  # noqa: F401

    names = ("", "onnxruntime", "onnxruntime.quantization.matmul_nbits_quantizer", "neural_compressor")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print their progress
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
