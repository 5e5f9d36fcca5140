"""edgemfm's int4 and int8 kernel (runtimes/kernels/matmul_int4.cpp) against its numpy references
(quantizers/native_int4.py), built as runtimes/native.py builds it and as the other CPUs' paths build, and inside
ONNX Runtime beside the MatMulNBits it replaces.

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
from ort_kernel_tools import build_for_ctypes, pointer, session

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
# (bits, shape): every shape at either width, and int8's least group (4 inputs: one 64-byte vector of a record)
CASES = [(bits, shape) for bits in (4, 8) for shape in SHAPES] + [(8, (2, 44, 20, 4))]

BUILDS = {  # what runtimes/native.py builds here; on x86 each vector path; and the plain loops of other CPUs
    "native": ["-march=native"] if X86 else ["-mcpu=native"],
    **({"avx2-vnni": ["-mavx2", "-mfma", "-mf16c", "-mavxvnni"]} if X86 and _has("avx_vnni") else {}),
    **({"avx2": ["-mavx2", "-mfma", "-mf16c"]} if X86 and _has("avx2") and _has("f16c") else {}),
    "plain": [],
}


def _case(rng, M: int, K: int, N: int, G: int, symmetric: bool = False, bits: int = 4):
    """MatMulNBits' inputs for random weights of `bits`, their records, and activations with an outlier channel."""
    blocks = -(-K // G)
    B = rng.integers(0, 256, (N, blocks, G * bits // 8), dtype=np.uint8)
    scales = rng.uniform(1e-3, 2e-2, N * blocks).astype(np.float32)
    zero_points = None if symmetric else rng.integers(0, 256, (N, -(-blocks * bits // 8)), dtype=np.uint8)
    a = rng.standard_normal((M, K), dtype=np.float32)
    a[:, 3] *= 20.0
    return B, scales, zero_points, np.ascontiguousarray(pack(B, scales, zero_points, K, N, G, bits)), a


@pytest.fixture(scope="module", params=list(BUILDS))
def kernel(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("kernels") / f"matmul_int4-{request.param}.so"
    return build_for_ctypes(SOURCE, BUILDS[request.param], out)


def _matmul(kernel, bits: int, a, records, bias, K: int, N: int, G: int) -> np.ndarray:
    """edgemfm_matmul_int{bits} of a build: y [M, N]."""
    y, i64 = np.zeros((len(a), N), np.float32), ctypes.c_int64
    matmul = getattr(kernel, f"edgemfm_matmul_int{bits}")
    with_bias = pointer(bias) if bias is not None else None
    matmul(pointer(a), pointer(records), with_bias, i64(len(a)), i64(K), i64(N), i64(G), pointer(y))
    return y


@pytest.mark.parametrize("bits, shape", CASES, ids=[f"int{b}-M{m}-K{k}-N{n}-G{g}" for b, (m, k, n, g) in CASES])
def test_each_build_computes_the_references_arithmetic(kernel, bits, shape):
    M, K, N, G = shape
    rng = np.random.default_rng(M * K + G)
    *_, records, a = _case(rng, M, K, N, G, bits=bits)
    bias = rng.standard_normal(N).astype(np.float32)
    expected = matmul_int4_reference(a, records, K, N, G, bias, bits)
    y = _matmul(kernel, bits, a, records, bias, K, N, G)
    assert float(np.abs(y - expected).max()) <= 1e-5 * float(np.abs(expected).max())
    ids = rng.integers(0, N, 7).astype(np.int64)
    rows, i64 = np.zeros((7, K), np.float32), ctypes.c_int64
    getattr(kernel, f"edgemfm_gather_int{bits}")(pointer(ids), i64(7), pointer(records), i64(K), i64(G), pointer(rows))
    assert np.array_equal(rows, gather_int4_reference(ids, records, K, N, G, bits))


def test_each_int8_build_is_exact_where_vpmaddubsw_on_the_weights_would_saturate(kernel):
    """Weights 255 and 0 against activations of ±127 in every block: pairs of 255 x 127 overflow int16, and
    q - 128 = -128 is the one a signed path must not negate."""
    K, N, G = 128, 32, 32
    blocks = K // G
    B = np.zeros((N, blocks, G), np.uint8)
    B[: N // 2] = 255
    scales, zero_points = np.full(N * blocks, 1e-2, np.float32), np.zeros((N, blocks), np.uint8)
    records = np.ascontiguousarray(pack(B, scales, zero_points, K, N, G, bits=8))
    a = np.ones((4, K), np.float32)
    a[1::2] = -1.0
    a[2, ::2] = -1.0
    expected = matmul_int4_reference(a, records, K, N, G, bits=8)
    assert float(np.abs(expected).max()) == pytest.approx(255 * K * 1e-2, rel=1e-3)
    y = _matmul(kernel, 8, a, records, None, K, N, G)
    assert float(np.abs(y - expected).max()) <= 1e-5 * float(np.abs(expected).max())


@pytest.mark.parametrize("bits", [4, 8], ids=["int4", "int8"])
@pytest.mark.parametrize("symmetric", [False, True], ids=["zero-points", "symmetric"])
def test_the_records_hold_matmulnbits_integers_with_float16_scales_and_offsets(symmetric, bits):
    rng = np.random.default_rng(1)
    K, N, G = 128, 32, 32
    B, scales, zero_points, records, _ = _case(rng, 1, K, N, G, symmetric, bits)
    q, s, z = unpack(B, scales, zero_points, K, N, G, bits)
    zeros = np.repeat(z, G, axis=1)
    exact = (q - zeros) * np.repeat(s, G, axis=1)  # K is whole blocks here
    got = weights(records, K, N, G, bits)
    # in steps s: float16 rounds s and the offset -s zero by at most 2^-11 of each, so s q + m moves by at most
    # (q + zero) 2^-11; a symmetric block's offset is -2^(bits-1) s in float16 exactly, leaving |q - zero| 2^-11
    moved = np.abs(got - exact) / np.repeat(s, G, axis=1)
    assert np.all(moved <= (np.abs(q - zeros) if symmetric else q + zeros) * 2.0**-11 + 1e-4)
    ones = pack(B, np.ones_like(scales), np.zeros_like(zero_points) if not symmetric else None, K, N, G, bits)
    lift = 2 ** (bits - 1) if symmetric else 0
    assert np.array_equal(weights(ones, K, N, G, bits), q.astype(np.float32) - lift)  # the integers


def _graph(op: str, K: int, N: int, G: int, initializers: list, inputs: list[str], shape: list, bits: int = 4):
    from onnx import TensorProto, helper

    domain = "com.microsoft" if op == "MatMulNBits" else "edgemfm.int4"
    extra = {"bits": bits, "accuracy_level": 4} if op == "MatMulNBits" else {}
    first = TensorProto.INT64 if op.startswith("Gather") else TensorProto.FLOAT
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


@pytest.mark.parametrize("bits", [4, 8], ids=["int4", "int8"])
def test_in_onnx_runtime_it_stays_near_the_matmulnbits_it_replaces(library, bits):
    """Batch dims, a bias, 2 threads: the op's output is its reference's, and near MatMulNBits' at accuracy_level 4
    (measured with onnxruntime 1.32: 70 dB SQNR against it at int4, 67 dB at int8; both round the activations to
    int8 per block, MatMulNBits with float32 scales)."""
    from onnx import numpy_helper

    rng = np.random.default_rng(2)
    K, N, G = 576, 960, 32
    B, scales, zero_points, records, _ = _case(rng, 1, K, N, G, bits=bits)
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
        bits,
    )
    own = _graph(
        f"MatMulInt{bits}",
        K,
        N,
        G,
        [numpy_helper.from_array(records, "W"), numpy_helper.from_array(bias, "bias")],
        ["a", "W", "bias"],
        [2, 3, K],
    )
    expected = session(nbits).run(None, {"a": a})[0]
    got = session(own, library).run(None, {"a": a})[0]
    assert got.shape == (2, 3, N)
    reference = matmul_int4_reference(a, records, K, N, G, bias, bits)
    assert float(np.abs(got - reference).max()) <= 1e-5 * float(np.abs(reference).max())
    sqnr = 10 * np.log10((expected**2).sum() / ((expected - got) ** 2).sum())
    assert sqnr >= 35.0
    assert np.array_equal(session(own, library, threads=2).run(None, {"a": a})[0], got)  # tiles split, same sums


@pytest.mark.parametrize("bits", [4, 8], ids=["int4", "int8"])
def test_in_onnx_runtime_the_lookup_reads_the_heads_records_and_refuses_an_id_outside(library, bits):
    import onnxruntime as ort
    from onnx import numpy_helper

    rng = np.random.default_rng(3)
    K, N, G = 64, 48, 32
    *_, records, _ = _case(rng, 1, K, N, G, bits=bits)
    table = [numpy_helper.from_array(records, "W")]
    lookup = session(_graph(f"GatherInt{bits}", K, N, G, table, ["ids", "W"], [1, "n"]), library)
    ids = np.array([[0, 47, 5]], np.int64)
    assert np.array_equal(lookup.run(None, {"ids": ids})[0], gather_int4_reference(ids, records, K, N, G, bits))
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match="a token id is outside the table"):
        lookup.run(None, {"ids": np.array([[48]], np.int64)})


RUNNER = Path(__file__).parent / "kernels" / "matmul_int4_cases.cpp"


@needs_aarch64
@pytest.mark.parametrize("cpu", ["generic", "cortex-a76"], ids=["plain", "neon-dotprod"])
def test_an_aarch64_build_under_qemu_computes_the_references_arithmetic(tmp_path, cpu):
    """The ARM paths, run as a Pi 5's core (Cortex-A76: sdot, 4 columns a vector; int8 weights as q - 128) and as a
    core without it (the plain loops), on the cases above. Correctness only: qemu says nothing of an ARM core's
    speed."""
    rng = np.random.default_rng(4)
    expected = []
    with (tmp_path / "cases.bin").open("wb") as f:
        for bits, (M, K, N, G) in CASES:
            *_, records, a = _case(rng, M, K, N, G, bits=bits)
            ids = rng.integers(0, N, 5).astype(np.int64)
            head = np.array([bits, M, K, N, G, 5], np.int64).tobytes()
            f.write(head + a.tobytes() + records.tobytes() + ids.tobytes())
            y = matmul_int4_reference(a, records, K, N, G, bits=bits)
            expected.append((y, gather_int4_reference(ids, records, K, N, G, bits)))
    binary = tmp_path / cpu
    flags = ["-O2", "-std=c++17", "-static", f"-mcpu={cpu}", "-DEDGEMFM_NO_ONNXRUNTIME"]
    subprocess.run([CROSS, *flags, str(RUNNER), str(SOURCE), "-o", str(binary)], check=True)
    run = [QEMU, "-cpu", "max" if cpu == "generic" else cpu, str(binary), str(tmp_path / "cases.bin")]
    subprocess.run([*run, str(tmp_path / "out.bin")], check=True, timeout=300)
    out, at = np.fromfile(tmp_path / "out.bin", dtype=np.float32), 0
    for y, rows in expected:
        got_y, got_rows = out[at : at + y.size], out[at + y.size : at + y.size + rows.size]
        at += y.size + rows.size
        assert float(np.abs(got_y - y.ravel()).max()) <= 1e-5 * float(np.abs(y).max())
        assert np.array_equal(got_rows, rows.ravel())
    assert at == out.size
