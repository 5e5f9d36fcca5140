"""What the tests of edgemfm's ONNX Runtime custom-op kernels (runtimes/kernels/) share: a build of one path for
ctypes, a pointer to an array for it, and an ONNX Runtime session with or without a kernel library."""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import numpy as np


def build_for_ctypes(source: Path, flags: list[str], out: Path) -> ctypes.CDLL:
    """`source` compiled with `flags` (a path's instruction set) into `out`, without ONNX Runtime's glue, loaded."""
    command = ["c++", "-O3", "-std=c++17", "-shared", "-fPIC", "-DEDGEMFM_NO_ONNXRUNTIME", *flags]
    subprocess.run([*command, str(source), "-o", str(out)], check=True)
    return ctypes.CDLL(str(out))


def pointer(array: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(array.ctypes.data)


def session(model, library: Path | None = None, threads: int = 1):
    """An ONNX Runtime CPU session of `model` (a ModelProto), with the custom-op `library` registered."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if library is not None:
        options.register_custom_ops_library(str(library))
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
