"""Device profiles: one TOML file per device in `device_profiles/`, loaded into `DeviceProfile`.

A profile says what a device has (memory, bandwidth, peak throughput, CPU and ISA features,
execution providers, formats, weight bits) with a source for every published figure, and
how edgemfm should run on it (memory budget, streaming granularity).

Example:
    >>> from edgemfm.profiles import load_profile
    >>> p = load_profile("jetson")
    >>> p.name, p.memory_gb
    ('jetson-orin-nano-8gb', 8.0)
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from edgemfm.errors import ConfigError, InputError, ProfileError, UnknownDeviceError
from edgemfm.records import from_dict

PROFILE_VERSION = 1
FORMATS = ("onnx", "pte")  # the bundle formats edgemfm writes
WEIGHT_BITS = (4, 8, 16, 32)  # int4, int8, fp16, fp32: the kernels that exist
INT8_CONV = ("weight-only", "qlinear")  # how int8 convolutions run (DeviceProfile.int8_conv)
# The published figures: each must carry a source in the profile's [sources] table.
FIGURES = (
    "memory_gb",
    "bandwidth_gbps",
    "peak_fp32_gflops",
    "peak_fp16_gflops",
    "peak_int8_gops",
    "cpu_cores",
)


@dataclass(frozen=True)
class Streaming:
    audio_window_s: float  # audio is encoded in windows of this many seconds
    image_tile: int  # images are encoded one tile of this many pixels square at a time
    prefill_chunk: int  # tokens per decoder prefill call: bounds the activation peak
    max_seq_len: int  # KV cache length (static cache for .pte; bound for the sliding window)
    sink_tokens: int  # tokens kept at the start when the KV cache slides


@dataclass(frozen=True)
class Cost:
    """What the roofline needs besides the peaks: how close kernels come to them, what a call costs.

    Each figure needs a source in [sources] as `cost.<figure>`; for the host it is measured by
    benchmarks/cost/cost_figures.py (ONNX Runtime, one thread).
    """

    call_us: float  # one session.run that does nothing: binding, allocation, output copy
    node_us: float  # dispatching one node that does almost nothing (what a tiny model is made of)
    compute_fraction: (
        float  # dense GEMM FLOP/s reached over the peak (above 1 where the chip boosts past the clock the peak assumes)
    )
    bandwidth_fraction: float  # weight streaming with every core over the peak DRAM bandwidth
    core_bandwidth_gbps: float  # what one core streams from DRAM: a one-thread run gets no more


COST_FIGURES = tuple(f"cost.{f}" for f in Cost.__dataclass_fields__)


@dataclass(frozen=True)
class DeviceProfile:
    version: int  # profile schema version: 1
    name: str
    title: str
    aliases: tuple[str, ...]
    compute_unit: str  # what the peak figures describe (the GPU on a Jetson, the CPU on a Pi)
    memory_gb: float  # physical memory
    usable_memory_gb: float  # what one process can get after the OS and carve-outs
    bandwidth_gbps: float  # peak DRAM bandwidth, GB/s
    peak_fp32_gflops: float
    peak_fp16_gflops: float
    peak_int8_gops: float  # dense int8 (sparsity figures halved)
    cpu: str
    cpu_cores: int
    isa: tuple[str, ...]  # neon, dotprod, i8mm, sve, fp16, avx2, avx512, vnni ...
    execution_providers: tuple[str, ...]  # onnxruntime providers, most preferred first
    formats: tuple[str, ...]
    weight_bits: tuple[int, ...]
    group_sizes: tuple[int, ...]  # block sizes the int4 kernels take
    default_memory_budget_mb: int
    streaming: Streaming
    cost: Cost
    sources: dict[str, str]  # figure name -> where it was published
    # how an int8 recipe runs a CNN's chained convolutions here: "weight-only" (int8 weights de-quantized at every
    # call, float activations) or "qlinear" (u8 activations, s8 weights per channel: ONNX Runtime's int8 QLinearConv
    # kernels), chosen by measurement; "qlinear" needs its `int8_conv` line in [sources]
    int8_conv: str = "weight-only"

    @property
    def memory_budget_bytes(self) -> int:
        return self.default_memory_budget_mb * 2**20


def _validate(p: DeviceProfile, where: str) -> None:
    problems = []
    for f in FIGURES:
        value = getattr(p, f)
        if not (math.isfinite(value) and value > 0):
            problems.append(f"{f} must be a positive finite number, got {value!r}")
        if not p.sources.get(f, "").strip():
            problems.append(f"{f} has no source in [sources]")
    for f in COST_FIGURES:
        value = getattr(p.cost, f.split(".")[1])
        if not (math.isfinite(value) and value > 0):
            problems.append(f"{f} must be a positive finite number, got {value!r}")
        if not p.sources.get(f, "").strip():
            problems.append(f"{f} has no source in [sources]")
    if not (p.cost.compute_fraction <= 2 and p.cost.bandwidth_fraction <= 1):
        problems.append("cost.compute_fraction must be at most 2 and cost.bandwidth_fraction at most 1")
    if not 0 < p.usable_memory_gb <= p.memory_gb:
        problems.append("usable_memory_gb must be in (0, memory_gb]")
    if not 0 < p.default_memory_budget_mb <= p.usable_memory_gb * 1024:
        problems.append("default_memory_budget_mb must be in (0, usable memory]")
    bad = [f for f in p.formats if f not in FORMATS]
    if bad or not p.formats:
        problems.append(f"formats {bad or []} not in {list(FORMATS)}")
    if bad := [b for b in p.weight_bits if b not in WEIGHT_BITS]:
        problems.append(f"weight_bits {bad} not in {list(WEIGHT_BITS)}")
    if 4 in p.weight_bits and not p.group_sizes:
        problems.append("group_sizes is empty but weight_bits has 4")
    if not p.execution_providers:
        problems.append("execution_providers is empty")
    if p.int8_conv not in INT8_CONV:
        problems.append(f"int8_conv {p.int8_conv!r} not in {list(INT8_CONV)}")
    elif p.int8_conv != "weight-only" and not p.sources.get("int8_conv", "").strip():
        problems.append("int8_conv has no source (the measurement that chose it) in [sources]")
    s = p.streaming
    if not (s.audio_window_s > 0 and s.image_tile > 0 and s.prefill_chunk > 0 and s.max_seq_len > 0):
        problems.append("streaming sizes must be positive")
    if not 0 <= s.sink_tokens < s.max_seq_len:
        problems.append("streaming.sink_tokens must be in [0, max_seq_len)")
    if problems:
        raise ProfileError(f"{where}: {problems[0]}")


def read_profile(path: str | Path) -> DeviceProfile:
    """Read and validate one profile TOML file.

    Example:
        >>> read_profile("device_profiles/raspberry-pi-5-8gb.toml").aliases
        ('pi5', 'rpi')
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such profile file") from None
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"{path}: not valid TOML ({e})") from None
    if data.get("version") != PROFILE_VERSION:
        raise ProfileError(
            f"{path.name}: version {data.get('version')!r} is not {PROFILE_VERSION}, the one this edgemfm reads"
        )
    try:
        profile = from_dict(DeviceProfile, data, where=path.name)
    except ConfigError as e:
        raise ProfileError(str(e)) from None
    _validate(profile, path.name)
    if path.parent == _shipped() and profile.name != path.stem:
        raise ProfileError(f"{path.name}: name {profile.name!r} must match the file name")
    return profile


def _shipped() -> Path:
    return Path(str(resources.files("edgemfm.device_profiles")))


# ONNX Runtime providers that leave a graph's contrib and custom ops on the CPU's kernels (XNNPACK takes neither)
CPU_PROVIDERS = ("CPUExecutionProvider", "XnnpackExecutionProvider")


def require_cpu(profile: DeviceProfile, what: str, way_out: str) -> None:
    """Refuse, naming the devices that qualify, a device whose providers would take `what` off the CPU.

    Example:
        >>> require_cpu(load_profile("jetson"), "--kernels edgemfm are CPU kernels", "--kernels ort")
        Traceback (most recent call last):
        edgemfm.errors.InputError: --kernels edgemfm are CPU kernels; jetson-orin-nano-8gb runs on TensorrtExecutionProvider; allowed devices: host-x86-64-avx2, raspberry-pi-5-8gb (or --kernels ort)
    """
    if other := [p for p in profile.execution_providers if p not in CPU_PROVIDERS]:
        allowed = [p.name for p in list_profiles() if set(p.execution_providers) <= set(CPU_PROVIDERS)]
        raise InputError(
            f"{what}; {profile.name} runs on {other[0]}; allowed devices: {', '.join(allowed)} (or {way_out})"
        )


@cache
def list_profiles() -> tuple[DeviceProfile, ...]:
    """Every profile shipped in `edgemfm.device_profiles`, sorted by name.

    Example:
        >>> [p.name for p in list_profiles()][:1]
        ['host-x86-64-avx2']
    """
    profiles = [read_profile(f) for f in sorted(_shipped().glob("*.toml"))]
    seen: dict[str, str] = {}
    for p in profiles:
        for key in (p.name, *p.aliases):
            if key in seen:
                raise ProfileError(f"{p.name}.toml: name or alias {key!r} already used by {seen[key]}")
            seen[key] = p.name
    return tuple(sorted(profiles, key=lambda p: p.name))


def load_profile(name: str | Path) -> DeviceProfile:
    """The profile called `name` (a name, an alias or a path to a TOML file).

    Example:
        >>> load_profile("pi5").name
        'raspberry-pi-5-8gb'
    """
    if str(name).endswith(".toml"):
        return read_profile(name)
    for p in list_profiles():
        if name == p.name or name in p.aliases:
            return p
    raise UnknownDeviceError(name, [k for p in list_profiles() for k in (p.name, *p.aliases)])
