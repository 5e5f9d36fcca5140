"""edgemfm's int8 KV cache kernels (runtimes/kernels/int8_cache.cpp) against their PyTorch references
(exporters/llm_ops.py), built as runtimes/native.py builds them and as the other CPUs' paths build.

The write must equal cache_int8_reference bit for bit (the cache a program holds is the one its PyTorch
module holds). The attention's integer sums are exact, so it differs from sdpa_int8_reference only by float
rounding: the exponential's polynomial and the order of float sums (measured 2e-7 of the output's range).
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

torch = pytest.importorskip("torch")
pytest.importorskip("executorch")

from edgemfm.errors import BundleError  # noqa: E402
from edgemfm.exporters import llm_ops  # noqa: E402
from edgemfm.runtimes import native  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler (c++) to build the kernels")
X86 = platform.machine().lower() in {"x86_64", "amd64"}


def _has(flag: str) -> bool:
    """Whether this CPU runs `flag`'s instructions (a build for a path it lacks would die of SIGILL)."""
    return flag in native.cpu_features().split()


# (seq, heads, kv_heads, head_dim, capacity, start): decode at the cache's first and deep positions, prefill
# chunks across key blocks, grouped and plain heads, head_dims that leave scalar tails (20, 80, 96)
SHAPES = [
    (1, 9, 3, 64, 2048, 1023),
    (1, 9, 3, 64, 2048, 0),
    (1, 9, 3, 64, 104, 63),
    (7, 4, 2, 32, 64, 10),
    (5, 8, 8, 80, 40, 3),
    (1, 4, 1, 96, 304, 298),
    (16, 9, 3, 64, 512, 100),
    (9, 6, 2, 20, 24, 0),
]


def _compile(tmp_path, flags: list[str]) -> ctypes.CDLL:
    out = tmp_path / f"int8_cache{''.join(flags)}.so"
    command = ["c++", "-O3", "-std=c++17", "-shared", "-fPIC", "-DEDGEMFM_NO_EXECUTORCH", *flags]
    subprocess.run([*command, str(native.SOURCES / "int8_cache.cpp"), "-o", str(out)], check=True)
    return ctypes.CDLL(str(out))


BUILDS = {  # what runtimes/native.py builds here; on x86 each vector path (AVX-512 VNNI where the CPU has it, AVX2
    # with AVX-VNNI, AVX2 alone as on Zen 3 or Haswell); and the plain loops of CPUs without one (a Pi 4)
    "native": ["-march=native"] if X86 else ["-mcpu=native"],
    **({"avx2-vnni": ["-mavx2", "-mfma", "-mavxvnni"]} if X86 and _has("avx_vnni") else {}),
    **({"avx2": ["-mavx2", "-mfma"]} if X86 and _has("avx2") and _has("fma") else {}),
    "plain": [],
}


@pytest.fixture(scope="module", params=list(BUILDS))
def kernel(request, tmp_path_factory):
    return _compile(tmp_path_factory.mktemp("kernels"), BUILDS[request.param])


def _pointer(t: torch.Tensor) -> ctypes.c_void_p:
    assert t.is_contiguous()
    return ctypes.c_void_p(t.data_ptr())


def _write(kernel, layer, x: torch.Tensor, start: int, keys: bool) -> None:
    cache, scales, zeros = _buffers(layer, keys)
    kernel.edgemfm_cache_int8(
        _pointer(x), *map(ctypes.c_int64, (x.shape[1], x.shape[2], x.shape[3], scales.shape[1], start)),
        ctypes.c_bool(keys), _pointer(cache), _pointer(scales), _pointer(zeros),
    )  # fmt: skip


def _buffers(layer, keys: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if keys:
        return layer.keys, layer.key_scales, layer.key_zeros
    return layer.values, layer.value_scales, layer.value_zeros


def _filled(kernel, seq, kv, d, capacity, start, generator) -> tuple:
    """Two caches, one written by the kernel and one by the reference, with the same rows in chunks of 7."""
    ours, theirs = (llm_ops.Int8OpsLayer(capacity, kv, d, torch.float32) for _ in range(2))
    for first in range(0, start + seq, 7):
        n = min(7, start + seq - first)
        for keys in (True, False):
            spread = torch.rand(1, n, kv, 1, generator=generator) * 4
            x = torch.randn(1, n, kv, d, generator=generator) * spread + torch.randn(1, n, kv, 1, generator=generator)
            _write(kernel, ours, x, first, keys)
            llm_ops.cache_int8_reference(x, *_buffers(theirs, keys), first, keys)
    return ours, theirs


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_the_kernels_write_equals_the_reference_and_their_attention_is_its_arithmetic(kernel, shape):
    seq, heads, kv, d, capacity, start = shape
    generator = torch.Generator().manual_seed(sum(shape))
    ours, theirs = _filled(kernel, seq, kv, d, capacity, start, generator)
    for name in llm_ops.Int8OpsLayer.BUFFERS:
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name
    query = torch.randn(1, seq, heads, d, generator=generator) * 3
    caches = (ours.keys, ours.key_scales, ours.key_zeros, ours.values, ours.value_scales, ours.value_zeros)
    expected = llm_ops.sdpa_int8_reference(query, *caches, start, d**-0.5)
    out = torch.zeros_like(query)
    kernel.edgemfm_sdpa_int8(
        _pointer(query), *map(ctypes.c_int64, (seq, heads, d)), *map(_pointer, caches[:3]), *map(_pointer, caches[3:]),
        *map(ctypes.c_int64, (kv, ours.key_scales.shape[1], start)), ctypes.c_float(d**-0.5), _pointer(out),
    )  # fmt: skip
    assert float((out - expected).abs().max()) <= 2e-6 * float(expected.abs().max())


def test_the_int8_attention_stays_near_float_attention_on_the_rows_it_was_given():
    """What the rounding costs, against float SDPA over the same float rows: the cache's int8 rows, the query's
    and the weights' rounding together measured 34.7 to 37.4 dB SQNR on five seeds (the cache's rows alone
    37.8 to 39.2)."""
    generator = torch.Generator().manual_seed(1)
    seq, heads, kv, d, start = 4, 9, 3, 64, 500
    layer = llm_ops.Int8OpsLayer(1024, kv, d, torch.float32)
    keys, values = (torch.randn(1, start + seq, kv, d, generator=generator) for _ in range(2))
    llm_ops.cache_int8_reference(keys, layer.keys, layer.key_scales, layer.key_zeros, 0, True)
    llm_ops.cache_int8_reference(values, layer.values, layer.value_scales, layer.value_zeros, 0, False)
    query = torch.randn(1, seq, heads, d, generator=generator)
    caches = (layer.keys, layer.key_scales, layer.key_zeros, layer.values, layer.value_scales, layer.value_zeros)
    got = llm_ops.sdpa_int8_reference(query, *caches, start, d**-0.5)[0].transpose(0, 1)
    k, v = (x[0].transpose(0, 1).repeat_interleave(heads // kv, 0) for x in (keys, values))
    mask = torch.arange(start + seq)[None, :] <= (start + torch.arange(seq))[:, None]
    expected = torch.nn.functional.scaled_dot_product_attention(query[0].transpose(0, 1), k, v, attn_mask=mask)
    sqnr = 10 * torch.log10((expected**2).sum() / ((expected - got) ** 2).sum())
    assert float(sqnr) >= 30.0  # 34.7 dB at this seed


def test_a_failed_build_is_one_line_and_leaves_no_partial_library(tmp_path, monkeypatch):
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(native, "SOURCES", tmp_path)
    monkeypatch.setitem(native.KERNELS, "broken", native.KERNELS["int8_cache"])  # built as the int8 cache is
    monkeypatch.setenv("EDGEMFM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(BundleError, match="building edgemfm's broken kernel with c\\+\\+ failed: .*error"):
        native.build("broken")
    assert list((tmp_path / "cache" / "kernels").iterdir()) == []


def test_the_build_is_cached_by_its_source_and_rebuilt_when_it_changes(tmp_path, monkeypatch):
    (tmp_path / "int8_cache.cpp").write_bytes((native.SOURCES / "int8_cache.cpp").read_bytes())
    monkeypatch.setattr(native, "SOURCES", tmp_path)
    monkeypatch.setenv("EDGEMFM_CACHE", str(tmp_path / "cache"))
    first = native.build("int8_cache")
    stamp = first.stat().st_mtime_ns
    assert native.build("int8_cache") == first and first.stat().st_mtime_ns == stamp  # not rebuilt
    with (tmp_path / "int8_cache.cpp").open("a") as source:
        source.write("// changed\n")
    second = native.build("int8_cache")
    assert second != first and second.exists() and first.parent == second.parent == tmp_path / "cache" / "kernels"


CASES = Path(__file__).parent / "kernels" / "int8_cache_cases.cpp"


def _cases(tmp_path, name: str, compiler: list[str], run: list[str]) -> tuple[bytes, np.ndarray]:
    """The caches (bytes) and attention outputs of tests/kernels/int8_cache_cases.cpp built and run as given."""
    binary = tmp_path / name
    flags = ["-O2", "-std=c++17", "-ffp-contract=off", "-DEDGEMFM_NO_EXECUTORCH"]  # inputs made alike everywhere
    subprocess.run(
        [*compiler, *flags, str(CASES), str(native.SOURCES / "int8_cache.cpp"), "-o", str(binary)], check=True
    )
    caches, outputs = tmp_path / f"{name}.caches", tmp_path / f"{name}.out"
    subprocess.run([*run, str(binary), str(caches), str(outputs)], check=True, timeout=300)
    return caches.read_bytes(), np.fromfile(outputs, dtype=np.float32)


@needs_aarch64
@pytest.mark.parametrize("cpu", ["generic", "cortex-a76"], ids=["plain", "neon-dotprod"])
def test_an_aarch64_build_under_qemu_writes_the_same_cache_and_attends_the_same(tmp_path, cpu):
    """The ARM paths, run as a Pi 5's core (Cortex-A76: sdot) and as a core without it (the plain loops), against
    this machine's build: the same cache bytes, the same outputs within float rounding (measured 2.3e-7 and
    6.4e-7 of the largest). Correctness only: qemu says nothing of an ARM core's speed."""
    here = _cases(tmp_path, "host", ["c++", "-march=native"] if X86 else ["c++"], [])
    arm = _cases(tmp_path, cpu, [CROSS, "-static", f"-mcpu={cpu}"], [QEMU, "-cpu", "max" if cpu == "generic" else cpu])
    assert here[0] == arm[0]
    assert float(np.abs(here[1] - arm[1]).max()) <= 2e-6 * float(np.abs(here[1]).max())
