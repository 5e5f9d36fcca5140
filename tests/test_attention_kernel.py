"""edgemfm's attention kernel (runtimes/kernels/attention.cpp) against ONNX Runtime's GroupQueryAttention on the same
inputs, as runtimes/native.py builds it, in place on one buffer and into a grown one, and built for ARM under qemu.

The kernel's float sums run in another order than GroupQueryAttention's, and its exp is a polynomial: the outputs
differ by float rounding (measured under 8e-7 of the largest), the rotated keys by under 3e-7, the values not at all.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from aarch64_tools import CROSS, QEMU, needs_aarch64

from edgemfm.runtimes import native

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler (c++) to build the kernel")
SOURCE = native.SOURCES / "attention.cpp"
TABLE = 4096  # cos/sin rows

# (S, N, KV, d, past, buffer, bias): decode in place deep in a 2,048-row buffer, a prefill, a chunk after a past
# with an attention bias, the same into a grown cache (the past's rows copied into a longer present), plain
# multi-head attention at d 32, d 128 and 80 (the kernel's sizes in registers) and 48 (its size-at-run-time loop;
# GroupQueryAttention takes multiples of 16)
CASES = [
    (1, 9, 3, 64, 100, 2048, False),
    (7, 9, 3, 64, 0, 2048, False),
    (5, 9, 3, 64, 20, 2048, True),
    (5, 9, 3, 64, 20, 20, False),
    (1, 4, 4, 32, 1023, 2048, False),
    (3, 8, 2, 128, 50, 64, False),
    (2, 6, 2, 80, 9, 16, False),
    (1, 4, 2, 48, 30, 64, False),
]


@pytest.fixture(scope="module")
def library(kernel_cache):
    """The kernel as the runtime builds it."""
    return native.build("attention")


def _session(op: str, N: int, KV: int, bias: bool, library: Path | None, threads: int = 1):
    from onnx import TensorProto, helper

    names = ["packed", "", "", "past_key", "past_value", "seqlens_k", "total", "cos", "sin", "positions"]
    names += ["bias"] if bias else []
    if op == "GroupQueryAttention":
        node = helper.make_node(op, names, ["out", "present_key", "present_value"], domain="com.microsoft",
                                num_heads=N, kv_num_heads=KV, do_rotary=1, rotary_interleaved=0)  # fmt: skip
    else:
        node = helper.make_node(op, names, ["out", "present_key", "present_value"], domain="edgemfm.attention",
                                num_heads=N, kv_num_heads=KV)  # fmt: skip
    F, I32, I64 = TensorProto.FLOAT, TensorProto.INT32, TensorProto.INT64
    kinds = {"packed": F, "past_key": F, "past_value": F, "seqlens_k": I32, "total": I32, "cos": F, "sin": F}
    inputs = [helper.make_tensor_value_info(n, kinds.get(n, F if n == "bias" else I64), None) for n in names if n]
    outputs = [helper.make_tensor_value_info(n, F, None) for n in node.output]
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid(node.domain, 1)]
    model = helper.make_model(helper.make_graph([node], "g", inputs, outputs), opset_imports=opsets)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if library is not None:
        options.register_custom_ops_library(str(library))
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _feeds(case, seed: int = 0) -> dict[str, np.ndarray]:
    S, N, KV, d, past, buffer, bias = case
    rng = np.random.default_rng(seed)
    angles = np.arange(TABLE)[:, None] / 10000 ** (np.arange(0, d, 2) / d)[None]
    total = past + S
    feeds = {
        "packed": rng.standard_normal((1, S, (N + 2 * KV) * d), dtype=np.float32),
        "past_key": rng.standard_normal((1, KV, buffer, d), dtype=np.float32),
        "past_value": rng.standard_normal((1, KV, buffer, d), dtype=np.float32),
        "seqlens_k": np.array([total - 1], np.int32),
        "total": np.array(total, np.int32),
        "cos": np.cos(angles).astype(np.float32),
        "sin": np.sin(angles).astype(np.float32),
        "positions": (past + 7 + np.arange(S))[None].astype(np.int64),  # positions need not be the rows
    }
    if bias:
        feeds["bias"] = np.zeros((1, 1, S, total), np.float32)
        feeds["bias"][..., :5] = -1e9  # the first keys masked
        feeds["bias"][..., 10:12] = 0.5
    return feeds


@pytest.mark.parametrize("case", CASES, ids=[f"S{c[0]}-N{c[1]}-KV{c[2]}-d{c[3]}-past{c[4]}-buf{c[5]}" for c in CASES])
def test_it_computes_what_group_query_attention_computes(library, case):
    S, N, KV, d, past, buffer, bias = case
    feeds = _feeds(case)
    want = _session("GroupQueryAttention", N, KV, bias, None).run(None, feeds)
    got = _session("Attention", N, KV, bias, library).run(None, feeds)
    total = past + S
    assert got[1].shape == want[1].shape == (1, KV, max(buffer, total), d)
    assert float(np.abs(got[0] - want[0]).max()) <= 2e-6 * float(np.abs(want[0]).max())
    assert float(np.abs(got[1][:, :, :total] - want[1][:, :, :total]).max()) <= 1e-6 * float(np.abs(want[1]).max())
    assert np.array_equal(got[2][:, :, :total], want[2][:, :, :total])


def test_in_place_it_writes_only_the_calls_rows_and_two_threads_change_nothing(library):
    """Past and present bound to one buffer (the runtime's in-place cache): the call's rows are written where
    GroupQueryAttention writes them, every other row stays, and the result equals the unbound run's. Two threads
    (the KV heads shared out) give the same bytes."""
    case = (3, 9, 3, 64, 40, 256, False)
    feeds = _feeds(case, seed=1)
    want = _session("Attention", 9, 3, False, library).run(None, feeds)
    outputs = {}
    for threads in (1, 2):
        session = _session("Attention", 9, 3, False, library, threads)
        keys, values = feeds["past_key"].copy(), feeds["past_value"].copy()
        binding = session.io_binding()
        for name, array in (("key", keys), ("value", values)):
            value = ort.OrtValue.ortvalue_from_numpy(array)
            binding.bind_ortvalue_input(f"past_{name}", value)
            binding.bind_ortvalue_output(f"present_{name}", value)
        for name in ("packed", "seqlens_k", "total", "cos", "sin", "positions"):
            binding.bind_cpu_input(name, feeds[name])
        binding.bind_output("out")
        session.run_with_iobinding(binding)
        outputs[threads] = binding.get_outputs()[-1].numpy()  # bound last
        assert np.array_equal(keys, want[1]) and np.array_equal(values, want[2])
        rows = np.r_[0:40, 43:256]
        assert np.array_equal(keys[:, :, rows], feeds["past_key"][:, :, rows])
    assert np.array_equal(outputs[1], want[0]) and np.array_equal(outputs[2], want[0])


def test_a_position_or_cache_length_outside_the_buffers_is_refused_in_one_line(library):
    session = _session("Attention", 9, 3, False, library)
    for name, value, message in (
        ("seqlens_k", np.array([300], np.int32), "seqlens_k is outside the cache"),
        ("positions", np.array([[TABLE]], np.int64), "a position is outside the cos/sin table"),
    ):
        feeds = {**_feeds((1, 9, 3, 64, 100, 256, False)), name: value}
        with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument, match=message):
            session.run(None, feeds)


HARNESS = Path(__file__).parent / "kernels" / "attention_cases.cpp"


@needs_aarch64
def test_an_aarch64_build_under_qemu_attends_as_this_machines_build(tmp_path):
    """The kernel's 8-float vectors become NEON's on ARM (a Pi 5's Cortex-A76): the same outputs to float rounding
    as this machine's build on every case above without a bias. Correctness only: qemu says nothing of speed."""
    with (tmp_path / "cases.bin").open("wb") as f:
        for case in [c for c in CASES if not c[6]]:
            S, N, KV, d, past, buffer, _ = case
            x = _feeds(case)
            present = max(buffer, past + S)
            keys, values = (np.zeros((KV, present, d), np.float32) for _ in range(2))
            keys[:, :buffer], values[:, :buffer] = x["past_key"][0], x["past_value"][0]
            f.write(np.array([S, N, KV, d, present, past + S, TABLE], np.int64).tobytes())
            for array in (x["packed"], keys, values, x["cos"], x["sin"], x["seqlens_k"], x["positions"]):
                f.write(array.tobytes())
    runs = {}
    for name, compiler, run in (
        ("host", ["c++", "-march=native"], []),
        ("arm", [CROSS, "-static", "-mcpu=cortex-a76"], [QEMU, "-cpu", "cortex-a76"]),
    ):
        binary = tmp_path / name
        flags = ["-O2", "-std=c++17", "-DEDGEMFM_NO_ONNXRUNTIME"]
        subprocess.run([*compiler, *flags, str(HARNESS), str(SOURCE), "-o", str(binary)], check=True)
        out = tmp_path / f"{name}.out"
        subprocess.run([*run, str(binary), str(tmp_path / "cases.bin"), str(out)], check=True, timeout=300)
        runs[name] = np.fromfile(out, dtype=np.float32)
    assert runs["host"].size == runs["arm"].size > 0
    assert float(np.abs(runs["host"] - runs["arm"]).max()) <= 2e-6 * float(np.abs(runs["host"]).max())
