"""A roofline cost model: latency and memory of each bundle component on a device profile.

Each call's time is the larger of the bytes it must move over the memory bandwidth and the
operations it must do over the peak throughput for its precision, each at the fraction of the
published peak that real kernels reach:

    latency = max(bytes / (bandwidth x ATTAINABLE_BANDWIDTH), flops / (peak x ATTAINABLE_COMPUTE))

The FLOPs per item come from the manifest (counted by torch at export), the bytes from the
weights each call reads and, for the decoder, the KV cache it attends over.

Example:
    >>> from edgemfm.bundle import read_manifest
    >>> from edgemfm.profiles import load_profile
    >>> rows = predict(read_manifest("bundles/default-jetson"), load_profile("pi5"))  # doctest: +SKIP
    >>> rows[0].component, rows[0].bound                                             # doctest: +SKIP
    ('vision_encoder', 'memory')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from edgemfm.manifest import Component, Manifest
from edgemfm.profiles import DeviceProfile

# Streaming reads reach about 70-80% of peak DRAM bandwidth (STREAM on Cortex-A76 and Orin);
# dense int8/fp32 GEMM kernels of ONNX Runtime and XNNPACK about half of the peak FLOP/s.
ATTAINABLE_BANDWIDTH = 0.75
ATTAINABLE_COMPUTE = 0.5
FLOAT_BYTES = 4


@dataclass(frozen=True)
class Estimate:
    component: str
    work: str  # what one call does: "one image", "decode 1 token after 512", "prefill 256 tokens"
    flops: float
    bytes: float
    latency_ms: float
    bound: Literal["memory", "compute"]
    peak_memory_bytes: int  # weights + KV cache + largest activation while this call runs


def peak_gflops(profile: DeviceProfile, manifest: Manifest, component: str) -> float:
    """The throughput a component's precision runs at on this profile."""
    spec = manifest.recipe.spec_for(component)
    if spec is not None and (spec.activation_bits == 8 or spec.bits == 4):
        return profile.peak_int8_gops  # int8 activations, or int4 weights with int8 compute
    if (spec is not None and spec.bits == 16) or manifest.components[component].dtype == "float16":
        return profile.peak_fp16_gflops
    return profile.peak_fp32_gflops


def _row(name: str, work: str, flops: float, moved: float, resident: int, gflops: float, profile: DeviceProfile) -> Estimate:
    memory_s = moved / (profile.bandwidth_gbps * 1e9 * ATTAINABLE_BANDWIDTH)
    compute_s = flops / (gflops * 1e9 * ATTAINABLE_COMPUTE)
    bound = "memory" if memory_s >= compute_s else "compute"
    return Estimate(name, work, flops, moved, 1e3 * max(memory_s, compute_s), bound, resident)


def kv_bytes(component: Component, tokens: int) -> int:
    kv = component.kv_cache
    return 2 * kv.layers * kv.kv_heads * kv.head_dim * tokens * FLOAT_BYTES if kv else 0


def predict(manifest: Manifest, profile: DeviceProfile, context: int = 512, prefill: int | None = None) -> list[Estimate]:
    """Predicted latency of one call of each component; the decoder both decoding and prefilling.

    `context` is the number of tokens already in the KV cache for a decode step; `prefill` the
    tokens of one prefill call (the profile's prefill chunk by default).
    """
    prefill = prefill or manifest.streaming.prefill_chunk
    encoders = {m.encoder: kind for kind, m in manifest.prompt.media.items()}
    encoders |= {c.cross_attention.encoder: c.cross_attention.media for c in manifest.components.values() if c.cross_attention}
    rows = []
    for name, c in manifest.components.items():
        gflops = peak_gflops(profile, manifest, name)
        resident = c.weight_bytes + kv_bytes(c, context) + c.peak_activation_bytes
        if c.kv_cache:
            hidden = int(c.inputs[0].shape[-1])
            attention = 4 * c.kv_cache.layers * hidden * context  # q.k and p.v over the cache
            rows.append(_row(name, f"decode 1 token after {context}", c.flops_per_item + attention,
                             c.weight_bytes + kv_bytes(c, context), resident, gflops, profile))
            rows.append(_row(name, f"prefill {prefill} tokens", prefill * c.flops_per_item,
                             c.weight_bytes + kv_bytes(c, prefill), resident, gflops, profile))
        elif name in encoders:
            rows.append(_row(name, f"one {encoders[name]}", c.flops_per_item,
                             c.weight_bytes + 2 * c.peak_activation_bytes, resident, gflops, profile))
        else:  # a lookup: one row of the table per token
            rows.append(_row(name, "1 token", 0, c.outputs[0].shape[-1] * FLOAT_BYTES, resident, gflops, profile))
    return rows
