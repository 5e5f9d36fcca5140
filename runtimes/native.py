"""Kernels of edgemfm's own, built from their C++ source on the machine that runs them.

- `int8_cache` (runtimes/kernels/int8_cache.cpp): a pte bundle's int8 KV cache, written and read by
  `edgemfm::cache_int8` and `edgemfm::sdpa_int8`, which ExecuTorch's runtime does not ship. Built against the
  installed executorch wheel's headers and libexecutorch.so; loading it with RTLD_GLOBAL registers the kernels
  in the registry that the executorch pybindings read (they link the same libexecutorch.so).
- `matmul_int4`, `matmul_f32` and `attention` (runtimes/kernels/): an onnx bundle's int4 and int8 weights
  (`edgemfm.MatMulInt4`, `MatMulInt8`, `GatherInt4`, `GatherInt8`), its decoder's fp32 matmuls
  (`edgemfm.MatMulF32`, `GatherF32`) and its decoder's attention (`edgemfm.Attention`) exported with
  `--kernels edgemfm`: ONNX Runtime custom-op libraries built against the C API header in
  runtimes/kernels/onnxruntime/ and registered per session (`SessionOptions.register_custom_ops_library`).

The first bundle that needs a kernel compiles it once, for this machine's CPU (`-march=native`, `-mcpu=native`
on ARM), and caches the library under ~/.cache/edgemfm/kernels (EDGEMFM_CACHE moves it), named by a hash of
the source, the compiler, its flags, the CPU's features and the runtime's version. The compiler is `$CXX`, else
`c++`; without one the bundle is refused in one line naming the export option that avoids the kernel.

Example:
    >>> build("matmul_int4").name  # doctest: +SKIP
    'matmul_int4-3f2a9c01d4e5b6a7.so'
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgemfm.errors import BundleError, MissingExtraError

SOURCES = Path(__file__).parent / "kernels"


@dataclass(frozen=True)
class Kernel:
    needed_by: str  # what in a bundle calls it, for the refusals
    way_out: str  # the export option that does without it
    runtime: str  # the package it is built against (its version is part of the cache key)


KERNELS = {
    "int8_cache": Kernel("this bundle's int8 KV cache", "export with --kv-cache float", "executorch"),
    "matmul_int4": Kernel("this bundle's int4 or int8 weights", "export with --kernels ort", "onnxruntime"),
    "matmul_f32": Kernel("this bundle's fp32 matmuls", "export with --kernels ort", "onnxruntime"),
    "attention": Kernel("this bundle's attention", "export with --kernels ort", "onnxruntime"),
}
# kernel name -> the library loaded into this process (a second load would register its kernels twice)
_loaded: dict[str, Path] = {}


def load(name: str) -> Path:
    """Build `kernels/<name>.cpp` if this machine has no build of it yet, and load it into this process (an
    ExecuTorch kernel's registration runs as it loads).

    Example:
        >>> load("int8_cache").exists()  # doctest: +SKIP
        True
    """
    if name not in _loaded:
        library = build(name)
        ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
        _loaded[name] = library
    return _loaded[name]


def build(name: str) -> Path:
    """The cached library of `kernels/<name>.cpp` for this machine, compiled first where there is none.

    The compiler writes a temporary file beside the cache entry, renamed into place when it succeeds: an
    interrupted build leaves no half-written library for the next process to load.

    Example:
        >>> build("int8_cache").suffix  # doctest: +SKIP
        '.so'
    """
    kernel, source = KERNELS[name], SOURCES / f"{name}.cpp"
    compiler = os.environ.get("CXX") or "c++"
    if shutil.which(compiler) is None:
        raise BundleError(
            f"{kernel.needed_by} runs edgemfm's {name} kernel, built once per machine from C++ source, "
            f"and no C++ compiler {compiler!r} was found: install g++ (or set CXX), or {kernel.way_out}"
        )
    flags = [
        "-O3",
        "-std=c++17",
        "-shared",
        "-fPIC",
        "-mcpu=native" if platform.machine().lower() in {"aarch64", "arm64"} else "-march=native",
    ]
    if kernel.runtime == "executorch":
        root = _executorch_root()
        flags.append("-DC10_USING_CUSTOM_GENERATED_MACROS")
        includes = [f"-I{root / 'include'}", f"-I{root / 'include/executorch/runtime/core/portable_type/c10'}"]
        links = [f"-L{root / 'lib'}", "-lexecutorch", "-lexecutorch_threadpool", f"-Wl,-rpath,{root / 'lib'}"]
    else:  # an ONNX Runtime custom-op library: the C API header only, the functions come through OrtApi
        root, includes, links = SOURCES, [f"-I{SOURCES}"], []
    key = hashlib.sha256()
    headers = [h.read_bytes() for h in sorted(SOURCES.glob("*.h"))]  # what the sources include from beside them
    for part in (source.read_bytes(), *headers, compiler.encode(), " ".join(flags).encode(), str(root).encode()):
        key.update(part + b"\0")
    key.update(importlib.metadata.version(kernel.runtime).encode() + cpu_features().encode())
    cache = Path(os.environ.get("EDGEMFM_CACHE") or Path.home() / ".cache" / "edgemfm") / "kernels"
    library = cache / f"{name}-{key.hexdigest()[:16]}.so"
    if library.exists():
        return library
    cache.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=cache, prefix=f".{name}-", suffix=".so")
    os.close(fd)
    try:
        done = subprocess.run(
            [compiler, *flags, *includes, str(source), *links, "-o", partial], capture_output=True, text=True
        )
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if "error" in line] or done.stderr.splitlines()[-1:]
            raise BundleError(f"building edgemfm's {name} kernel with {compiler} failed: {lines[0] if lines else '?'}")
        os.replace(partial, library)
    finally:
        Path(partial).unlink(missing_ok=True)
    return library


def cpu_features() -> str:
    """This CPU's feature list (Linux's /proc/cpuinfo): part of a build's cache key, so a cache shared between
    machines keeps a build per CPU kind (`-march=native` code may use instructions another CPU lacks).

    Example:
        >>> "avx2" in cpu_features().split()  # doctest: +SKIP
        True
    """
    try:
        with open("/proc/cpuinfo") as info:
            return next((line for line in info if line.startswith(("flags", "Features"))), platform.processor())
    except OSError:
        return platform.processor()


def _executorch_root() -> Path:
    """The installed executorch package's folder (a namespace package: no __init__, no __file__)."""
    spec = importlib.util.find_spec("executorch")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError("executorch")
    return Path(next(iter(spec.submodule_search_locations)))
