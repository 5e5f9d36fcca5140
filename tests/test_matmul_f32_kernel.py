"""edgemfm's fp32 kernel (runtimes/kernels/matmul_f32.cpp) against its numpy references (exporters/native_matmul.py),
built as runtimes/native.py builds it and as the other CPUs' paths build, and inside ONNX Runtime beside the MatMul
it replaces.

The products are float32 sums in another order than numpy's float64 ones: a build differs from
matmul_f32_reference by float rounding (measured under 1e-6 of the output's largest); the lookup copies exactly.
"""

from __future__ import annotations

import ctypes
import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from aarch64_tools import CROSS, QEMU, needs_aarch64
from ort_kernel_tools import build_for_ctypes, pointer, session

from edgemfm.exporters.native_matmul import columns_of, gather_f32_reference, matmul_f32_reference, pack
from edgemfm.runtimes import native

pytestmark = pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler (c++) to build the kernel")
X86 = platform.machine().lower() in {"x86_64", "amd64"}
SOURCE = native.SOURCES / "matmul_f32.cpp"
TOLERANCE = 1e-5  # of the output's largest

# (M, K, N): a decode step, checks of 5 and 8 rows (a pass holds 8 with AVX-512, 3 with AVX2 and NEON), 9 and 17
# (passes and a remainder: a prefill), SmolLM2's shapes, and N that leaves a part tile (a vocabulary of 260)
SHAPES = [(1, 64, 32), (1, 576, 960), (5, 1536, 576), (8, 576, 64), (9, 96, 50), (17, 128, 260), (3, 7, 33)]

BUILDS = {  # what runtimes/native.py builds here; on x86 the AVX2 path; and the plain loops of other CPUs
    "native": ["-march=native"] if X86 else ["-mcpu=native"],
    **({"avx2": ["-mavx2", "-mfma"]} if X86 and "avx2" in native.cpu_features().split() else {}),
    "plain": [],
}


def _case(rng, M: int, K: int, N: int):
    """Random weights [N, K], their tiles, and activations with an outlier channel."""
    columns = rng.standard_normal((N, K), dtype=np.float32) * 0.05
    a = rng.standard_normal((M, K), dtype=np.float32)
    a[:, min(3, K - 1)] *= 20.0
    return columns, pack(columns), a


@pytest.fixture(scope="module", params=list(BUILDS))
def kernel(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("kernels") / f"matmul_f32-{request.param}.so"
    return build_for_ctypes(SOURCE, BUILDS[request.param], out)


@pytest.mark.parametrize("shape", SHAPES, ids=[f"M{m}-K{k}-N{n}" for m, k, n in SHAPES])
def test_each_build_computes_the_references_products(kernel, shape):
    M, K, N = shape
    rng = np.random.default_rng(M * K + N)
    _, tiles, a = _case(rng, M, K, N)
    y = np.full((M, N), np.nan, np.float32)  # every element written: no NaN left
    i64 = ctypes.c_int64
    kernel.edgemfm_matmul_f32(pointer(a), pointer(tiles), i64(M), i64(K), i64(N), pointer(y))
    expected = matmul_f32_reference(a, tiles, K, N)
    assert float(np.abs(y - expected).max()) <= TOLERANCE * float(np.abs(expected).max())
    ids = rng.integers(0, N, 7).astype(np.int64)
    rows = np.zeros((7, K), np.float32)
    kernel.edgemfm_gather_f32(pointer(ids), i64(7), pointer(tiles), i64(K), pointer(rows))
    assert np.array_equal(rows, gather_f32_reference(ids, tiles, K, N))


def test_the_tiles_hold_each_columns_weights_input_by_input_and_zeros_past_n():
    columns = np.arange(50 * 3, dtype=np.float32).reshape(50, 3)
    tiles = pack(columns)
    assert tiles.shape == (2, 3, 32)
    assert np.array_equal(tiles[1, 2, :18], columns[32:, 2]) and not tiles[1, :, 18:].any()
    assert np.array_equal(columns_of(tiles, 50), columns)


def _graph(op: str, initializers: list, inputs: list[str], shape: list, **attributes):
    from onnx import TensorProto, helper

    domain = "edgemfm.f32" if op in ("MatMulF32", "GatherF32") else ""
    first = TensorProto.INT64 if op == "GatherF32" else TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node(op, inputs, ["y"], domain=domain, **attributes)],
        "g",
        [helper.make_tensor_value_info(inputs[0], first, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializers,
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets)


@pytest.fixture(scope="module")
def library(kernel_cache):
    """The kernel as the runtime builds it."""
    return native.build("matmul_f32")


def test_in_onnx_runtime_it_computes_the_matmul_it_replaces(library):
    """Batch dims, 2 threads: the op's output is the MatMul's to float rounding, and the same with the tiles split
    over threads (each column's sums stay in one thread)."""
    from onnx import numpy_helper

    rng = np.random.default_rng(2)
    K, N = 576, 960
    columns, tiles, _ = _case(rng, 1, K, N)
    a = rng.standard_normal((2, 3, K), dtype=np.float32)
    matmul = _graph("MatMul", [numpy_helper.from_array(np.ascontiguousarray(columns.T), "B")], ["a", "B"], [2, 3, K])
    own = _graph("MatMulF32", [numpy_helper.from_array(tiles, "W")], ["a", "W"], [2, 3, K], K=K, N=N)
    expected = session(matmul).run(None, {"a": a})[0]
    got = session(own, library).run(None, {"a": a})[0]
    assert got.shape == (2, 3, N)
    assert float(np.abs(got - expected).max()) <= TOLERANCE * float(np.abs(expected).max())
    assert np.array_equal(session(own, library, threads=2).run(None, {"a": a})[0], got)


def test_in_onnx_runtime_the_lookup_reads_the_heads_tiles_and_refuses_what_does_not_fit(library):
    import onnxruntime as ort
    from onnx import numpy_helper

    rng = np.random.default_rng(3)
    K, N = 64, 48
    _, tiles, _ = _case(rng, 1, K, N)
    lookup = session(_graph("GatherF32", [numpy_helper.from_array(tiles, "W")], ["ids", "W"], [1, "n"], K=K, N=N),
                      library)  # fmt: skip
    ids = np.array([[0, 47, 5]], np.int64)
    assert np.array_equal(lookup.run(None, {"ids": ids})[0], gather_f32_reference(ids, tiles, K, N))
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match="a token id is outside the table"):
        lookup.run(None, {"ids": np.array([[48]], np.int64)})
    wrong = _graph("MatMulF32", [numpy_helper.from_array(tiles, "W")], ["a", "W"], [1, K], K=K, N=N + 32)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match="does not match K and N"):
        session(wrong, library).run(None, {"a": np.zeros((1, K), np.float32)})


CASES = Path(__file__).parent / "kernels" / "matmul_f32_cases.cpp"


@needs_aarch64
def test_an_aarch64_build_under_qemu_computes_the_references_products(tmp_path):
    """The NEON path (every aarch64 core has NEON), run as a Pi 5's core (Cortex-A76), on the shapes above.
    Correctness only: qemu says nothing of an ARM core's speed."""
    rng = np.random.default_rng(4)
    expected = []
    with (tmp_path / "cases.bin").open("wb") as f:
        for M, K, N in SHAPES:
            _, tiles, a = _case(rng, M, K, N)
            ids = rng.integers(0, N, 5).astype(np.int64)
            f.write(np.array([M, K, N, 5], np.int64).tobytes() + a.tobytes() + tiles.tobytes() + ids.tobytes())
            expected.append((matmul_f32_reference(a, tiles, K, N), gather_f32_reference(ids, tiles, K, N)))
    binary = tmp_path / "cortex-a76"
    flags = ["-O2", "-std=c++17", "-static", "-mcpu=cortex-a76", "-DEDGEMFM_NO_ONNXRUNTIME"]
    subprocess.run([CROSS, *flags, str(CASES), str(SOURCE), "-o", str(binary)], check=True)
    run = [QEMU, "-cpu", "cortex-a76", str(binary), str(tmp_path / "cases.bin")]
    subprocess.run([*run, str(tmp_path / "out.bin")], check=True, timeout=300)
    out, at = np.fromfile(tmp_path / "out.bin", dtype=np.float32), 0
    for y, rows in expected:
        got_y, got_rows = out[at : at + y.size], out[at + y.size : at + y.size + rows.size]
        at += y.size + rows.size
        assert float(np.abs(got_y - y.ravel()).max()) <= TOLERANCE * float(np.abs(y).max())
        assert np.array_equal(got_rows, rows.ravel())
    assert at == out.size
