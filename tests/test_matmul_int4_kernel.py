"""edgemfm's int4 kernel (runtimes/kernels/matmul_int4.cpp) against its numpy references (quantizers/native_int4.py),
built as runtimes/native.py builds it and as the other CPUs' paths build, and inside ONNX Runtime beside the
MatMulNBits it replaces.

The dot products are exact integer sums, so a build differs from matmul_int4_reference only by the order of the
float sums over blocks (measured 2e-7 of the output's largest); the lookup de-quantizes exactly.
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

from edgemfm.quantizers.native_int4 import gather_int4_reference, matmul_int4_reference, pack, unpack, weights
from edgemfm.runtimes import native

pytestmark = pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler (c++) to build the kernel")
X86 = platform.machine().lower() in {"x86_64", "amd64"}
SOURCE = native.SOURCES / "matmul_int4.cpp"


def _has(flag: str) -> bool:
    """Whether this CPU runs `flag`'s instructions (a build for a path it lacks would die of SIGILL)."""
    return flag in native.cpu_features().split()


# (M, K, N, G): decode rows, a verify's 5 and a prefill's 11 (more rows than a pass holds, with a remainder),
# groups of 8 to 128, SmolLM2's shapes, and K and N that leave a part block and a part tile (a tiny model's
# MLP of 150, a vocabulary of 260)
SHAPES = [
    (1, 64, 16, 32),
    (1, 576, 960, 32),
    (5, 1536, 576, 64),
    (11, 256, 48, 128),
    (3, 96, 32, 8),
    (8, 576, 64, 64),
    (2, 150, 300, 64),
    (1, 128, 260, 32),
]

BUILDS = {  # what runtimes/native.py builds here; on x86 each vector path; and the plain loops of other CPUs
    "native": ["-march=native"] if X86 else ["-mcpu=native"],
    **({"avx2-vnni": ["-mavx2", "-mfma", "-mf16c", "-mavxvnni"]} if X86 and _has("avx_vnni") else {}),
    **({"avx2": ["-mavx2", "-mfma", "-mf16c"]} if X86 and _has("avx2") and _has("f16c") else {}),
    "plain": [],
}


def _case(rng, M: int, K: int, N: int, G: int, symmetric: bool = False):
    """MatMulNBits' inputs for random int4 weights, their records, and activations with an outlier channel."""
    blocks = -(-K // G)
    B = rng.integers(0, 256, (N, blocks, G // 2), dtype=np.uint8)
    scales = rng.uniform(1e-3, 2e-2, N * blocks).astype(np.float32)
    zero_points = None if symmetric else rng.integers(0, 256, (N, (blocks + 1) // 2), dtype=np.uint8)
    a = rng.standard_normal((M, K), dtype=np.float32)
    a[:, 3] *= 20.0
    return B, scales, zero_points, np.ascontiguousarray(pack(B, scales, zero_points, K, N, G)), a


@pytest.fixture(scope="module", params=list(BUILDS))
def kernel(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("kernels") / f"matmul_int4-{request.param}.so"
    command = ["c++", "-O3", "-std=c++17", "-shared", "-fPIC", "-DEDGEMFM_NO_ONNXRUNTIME", *BUILDS[request.param]]
    subprocess.run([*command, str(SOURCE), "-o", str(out)], check=True)
    return ctypes.CDLL(str(out))


def _p(array: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(array.ctypes.data)


@pytest.mark.parametrize("shape", SHAPES, ids=[f"M{m}-K{k}-N{n}-G{g}" for m, k, n, g in SHAPES])
def test_each_build_computes_the_references_arithmetic(kernel, shape):
    M, K, N, G = shape
    rng = np.random.default_rng(M * K + G)
    _, _, _, records, a = _case(rng, M, K, N, G)
    bias = rng.standard_normal(N).astype(np.float32)
    y = np.zeros((M, N), np.float32)
    i64 = ctypes.c_int64
    kernel.edgemfm_matmul_int4(_p(a), _p(records), _p(bias), i64(M), i64(K), i64(N), i64(G), _p(y))
    expected = matmul_int4_reference(a, records, K, N, G, bias)
    assert float(np.abs(y - expected).max()) <= 1e-5 * float(np.abs(expected).max())
    ids = rng.integers(0, N, 7).astype(np.int64)
    rows = np.zeros((7, K), np.float32)
    kernel.edgemfm_gather_int4(_p(ids), i64(7), _p(records), i64(K), i64(G), _p(rows))
    assert np.array_equal(rows, gather_int4_reference(ids, records, K, N, G))


@pytest.mark.parametrize("symmetric", [False, True], ids=["zero-points", "symmetric"])
def test_the_records_hold_matmulnbits_integers_with_float16_scales_and_offsets(symmetric):
    rng = np.random.default_rng(1)
    K, N, G = 128, 32, 32
    B, scales, zero_points, records, _ = _case(rng, 1, K, N, G, symmetric)
    q, s, z = unpack(B, scales, zero_points, K, N, G)
    exact = (q - np.repeat(z, G, axis=1)) * np.repeat(s, G, axis=1)  # K is whole blocks here
    got = weights(records, K, N, G)
    step = np.repeat(s, G, axis=1)  # each weight's int4 step: float16's rounding is under 1% of it (15 / 2^11)
    assert float((np.abs(got - exact) / step).max()) < 1e-2
    ones = pack(B, np.ones_like(scales), np.zeros_like(zero_points) if not symmetric else None, K, N, G)
    assert np.array_equal(weights(ones, K, N, G), q.astype(np.float32) - (8 if symmetric else 0))  # the integers


def _session(model, library: Path | None = None, threads: int = 1):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if library is not None:
        options.register_custom_ops_library(str(library))
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _graph(op: str, K: int, N: int, G: int, initializers: list, inputs: list[str], shape: list):
    from onnx import TensorProto, helper

    domain = "edgemfm.int4" if op in ("MatMulInt4", "GatherInt4") else "com.microsoft"
    extra = {"bits": 4, "accuracy_level": 4} if op == "MatMulNBits" else {}
    first = TensorProto.INT64 if op == "GatherInt4" else TensorProto.FLOAT
    node = helper.make_node(op, inputs, ["y"], domain=domain, K=K, N=N, block_size=G, **extra)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(inputs[0], first, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializers,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)]
    return helper.make_model(graph, opset_imports=opsets)


@pytest.fixture(scope="module")
def library(kernel_cache):
    """The kernel as the runtime builds it."""
    return native.build("matmul_int4")


def test_in_onnx_runtime_it_stays_near_the_matmulnbits_it_replaces(library):
    """Batch dims, a bias, 2 threads: the op's output is its reference's, and near MatMulNBits' at accuracy_level 4
    (measured 41 dB SQNR against it; both round the activations to int8 per block, MatMulNBits with float32
    scales)."""
    from onnx import numpy_helper

    rng = np.random.default_rng(2)
    K, N, G = 576, 960, 32
    B, scales, zero_points, records, _ = _case(rng, 1, K, N, G)
    bias = rng.standard_normal(N).astype(np.float32)
    a = rng.standard_normal((2, 3, K), dtype=np.float32)
    nbits = _graph(
        "MatMulNBits",
        K,
        N,
        G,
        [numpy_helper.from_array(x, n) for x, n in ((B, "B"), (scales, "s"), (zero_points, "z"), (bias, "bias"))],
        ["a", "B", "s", "z", "", "bias"],
        [2, 3, K],
    )
    own = _graph(
        "MatMulInt4",
        K,
        N,
        G,
        [numpy_helper.from_array(records, "W"), numpy_helper.from_array(bias, "bias")],
        ["a", "W", "bias"],
        [2, 3, K],
    )
    expected = _session(nbits).run(None, {"a": a})[0]
    got = _session(own, library).run(None, {"a": a})[0]
    assert got.shape == (2, 3, N)
    reference = matmul_int4_reference(a, records, K, N, G, bias)
    assert float(np.abs(got - reference).max()) <= 1e-5 * float(np.abs(reference).max())
    sqnr = 10 * np.log10((expected**2).sum() / ((expected - got) ** 2).sum())
    assert sqnr >= 35.0
    assert np.array_equal(_session(own, library, threads=2).run(None, {"a": a})[0], got)  # tiles split, same sums


def test_in_onnx_runtime_the_lookup_reads_the_heads_records_and_refuses_an_id_outside(library):
    import onnxruntime as ort
    from onnx import numpy_helper

    rng = np.random.default_rng(3)
    K, N, G = 64, 48, 32
    *_, records, _ = _case(rng, 1, K, N, G)
    lookup = _session(_graph("GatherInt4", K, N, G, [numpy_helper.from_array(records, "W")], ["ids", "W"], [1, "n"]),
                      library)  # fmt: skip
    ids = np.array([[0, 47, 5]], np.int64)
    assert np.array_equal(lookup.run(None, {"ids": ids})[0], gather_int4_reference(ids, records, K, N, G))
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match="a token id is outside the table"):
        lookup.run(None, {"ids": np.array([[48]], np.int64)})


CASES = Path(__file__).parent / "kernels" / "matmul_int4_cases.cpp"


@needs_aarch64
@pytest.mark.parametrize("cpu", ["generic", "cortex-a76"], ids=["plain", "neon-dotprod"])
def test_an_aarch64_build_under_qemu_computes_the_references_arithmetic(tmp_path, cpu):
    """The ARM paths, run as a Pi 5's core (Cortex-A76: sdot, 4 columns a vector) and as a core without it (the
    plain loops), on the shapes above. Correctness only: qemu says nothing of an ARM core's speed."""
    rng = np.random.default_rng(4)
    expected = []
    with (tmp_path / "cases.bin").open("wb") as f:
        for M, K, N, G in SHAPES:
            *_, records, a = _case(rng, M, K, N, G)
            ids = rng.integers(0, N, 5).astype(np.int64)
            f.write(np.array([M, K, N, G, 5], np.int64).tobytes() + a.tobytes() + records.tobytes() + ids.tobytes())
            expected.append((matmul_int4_reference(a, records, K, N, G), gather_int4_reference(ids, records, K, N, G)))
    binary = tmp_path / cpu
    flags = ["-O2", "-std=c++17", "-static", f"-mcpu={cpu}", "-DEDGEMFM_NO_ONNXRUNTIME"]
    subprocess.run([CROSS, *flags, str(CASES), str(SOURCE), "-o", str(binary)], check=True)
    run = [QEMU, "-cpu", "max" if cpu == "generic" else cpu, str(binary), str(tmp_path / "cases.bin")]
    subprocess.run([*run, str(tmp_path / "out.bin")], check=True, timeout=300)
    out, at = np.fromfile(tmp_path / "out.bin", dtype=np.float32), 0
    for y, rows in expected:
        got_y, got_rows = out[at : at + y.size], out[at + y.size : at + y.size + rows.size]
        at += y.size + rows.size
        assert float(np.abs(got_y - y.ravel()).max()) <= 1e-5 * float(np.abs(y).max())
        assert np.array_equal(got_rows, rows.ravel())
    assert at == out.size
