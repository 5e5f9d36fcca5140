"""A roofline cost model: latency and memory of each bundle component on a device profile.

A call's time is a fixed cost per call and per graph node, plus the larger of the bytes it must
move over the bandwidth and the operations it must do over the throughput for its precision:

    latency = call_us + nodes x node_us + max(bytes / bandwidth, flops / throughput)
    bandwidth  = min(bandwidth_gbps x bandwidth_fraction, threads x core_bandwidth_gbps)
    throughput = peak(precision) x compute_fraction x threads / cpu_cores   (a CPU; a GPU uses all of itself)

The figures come from the profile (`[cost]`, each with its source; the host's measured by
benchmarks/cost/cost_figures.py). The FLOPs per item come from the manifest (counted by torch at
export), plus attention over the KV cache counted here; the bytes are the weights each call reads
at their stored precision, the KV cache it reads and writes, and the activations it writes; the
node count is the exported graph's, from the manifest's parity report. The fixed costs matter for
tiny models: a 7 MB decoder of 255 nodes spends more time dispatching than moving bytes.

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

FLOAT_BYTES = 4  # activations and the KV cache stay fp32 in every bundle edgemfm writes


@dataclass(frozen=True)
class Estimate:
    component: str
    work: str  # what one call does: "one image", "decode 1 token after 512", "prefill 256 tokens"
    flops: float
    bytes: float
    latency_ms: float
    bound: Literal["memory", "compute", "overhead"]  # which term is largest
    peak_memory_bytes: int  # weights + KV cache + largest activation while this call runs
    overhead_ms: float = 0.0  # the per-call and per-node part of latency_ms


def peak_gflops(profile: DeviceProfile, manifest: Manifest, component: str) -> float:
    """The throughput a component's precision runs at on this profile."""
    spec = manifest.recipe.spec_for(component)
    if spec is not None and (spec.activation_bits == 8 or spec.bits == 4):
        return profile.peak_int8_gops  # int8 activations, or int4 weights with int8 compute
    if (spec is not None and spec.bits == 16) or manifest.components[component].dtype == "float16":
        return profile.peak_fp16_gflops
    return profile.peak_fp32_gflops


def rates(profile: DeviceProfile, gflops: float, threads: int | None) -> tuple[float, float]:
    """(bytes/s, FLOP/s) a call reaches with `threads` threads (None: every core).

    Example:
        >>> rates(load_profile("host"), 166.0, threads=1)  # doctest: +SKIP
        (23700000000.0, 97110000000.0)
    """
    cost = profile.cost
    share = 1.0
    if threads and profile.compute_unit.startswith("CPU"):  # a GPU runs each call on all of itself
        share = min(threads, profile.cpu_cores) / profile.cpu_cores
    cores = share * profile.cpu_cores if profile.compute_unit.startswith("CPU") else float("inf")
    bandwidth = min(profile.bandwidth_gbps * cost.bandwidth_fraction, cores * cost.core_bandwidth_gbps)
    return bandwidth * 1e9, gflops * cost.compute_fraction * share * 1e9


def _row(
    name: str,
    work: str,
    flops: float,
    moved: float,
    nodes: int,
    resident: int,
    gflops: float,
    profile: DeviceProfile,
    threads: int | None,
) -> Estimate:
    bandwidth, throughput = rates(profile, gflops, threads)
    memory_s, compute_s = moved / bandwidth, flops / throughput
    overhead_s = (profile.cost.call_us + nodes * profile.cost.node_us) * 1e-6
    bound = max((memory_s, "memory"), (compute_s, "compute"), (overhead_s, "overhead"))[1]
    return Estimate(
        name, work, flops, moved, 1e3 * (overhead_s + max(memory_s, compute_s)), bound, resident, 1e3 * overhead_s
    )


def kv_bytes(component: Component, tokens: int) -> int:
    kv = component.kv_cache
    return 2 * kv.layers * kv.kv_heads * kv.head_dim * tokens * FLOAT_BYTES if kv else 0


def attention_flops(component: Component, queries: int, keys: int) -> float:
    """q.k and p.v of every layer: 2 matmuls x 2 FLOPs per multiply-add x heads x head_dim.

    The counted `flops_per_item` holds the projections; attention grows with the cache and is
    counted here, over the full queries x keys square (CPU kernels mask, they do not skip).
    """
    hidden = int(component.inputs[0].shape[-1])  # query heads x head_dim
    return 4.0 * component.kv_cache.layers * hidden * queries * keys


def nodes_of(manifest: Manifest, name: str) -> int:
    """Graph nodes of a component, as the exporter counted them (0 when it did not)."""
    parity = manifest.report.parity.get(name)
    return parity.nodes if parity else 0


def decoder_rows(
    manifest: Manifest, name: str, profile: DeviceProfile, context: int, prefill: int, threads: int | None
) -> list[Estimate]:
    """A decode step after `context` cached tokens, and a prefill of `prefill` tokens from empty."""
    c = manifest.components[name]
    gflops, nodes = peak_gflops(profile, manifest, name), nodes_of(manifest, name)
    resident = c.weight_bytes + kv_bytes(c, context) + c.peak_activation_bytes
    logits = FLOAT_BYTES * int(c.outputs[0].shape[-1])
    # decode: the weights, the cache read, and the cache written back one token longer (ONNX Runtime concatenates)
    step = _row(
        name,
        f"decode 1 token after {context}",
        c.flops_per_item + attention_flops(c, 1, context + 1),
        c.weight_bytes + kv_bytes(c, context) + kv_bytes(c, context + 1) + logits,
        nodes,
        resident,
        gflops,
        profile,
        threads,
    )
    chunk = _row(
        name,
        f"prefill {prefill} tokens",
        prefill * c.flops_per_item + attention_flops(c, prefill, prefill),
        c.weight_bytes + kv_bytes(c, prefill) + prefill * logits,
        nodes,
        resident,
        gflops,
        profile,
        threads,
    )
    return [step, chunk]


def predict(
    manifest: Manifest,
    profile: DeviceProfile,
    context: int = 512,
    prefill: int | None = None,
    threads: int | None = None,
) -> list[Estimate]:
    """Predicted latency of one call of each component; the decoder both decoding and prefilling.

    `context` is the number of tokens already in the KV cache for a decode step; `prefill` the
    tokens of one prefill call (the profile's prefill chunk by default); `threads` the threads
    each call runs on (default: every core).

    Example:
        >>> [e.work for e in predict(manifest, load_profile("host"), context=64, prefill=32)]  # doctest: +SKIP
        ['one image', '1 token', 'decode 1 token after 64', 'prefill 32 tokens']
    """
    prefill = prefill or manifest.streaming.prefill_chunk
    encoders = {m.encoder: kind for kind, m in manifest.prompt.media.items()}
    encoders |= {
        c.cross_attention.encoder: c.cross_attention.media for c in manifest.components.values() if c.cross_attention
    }
    rows = []
    for name, c in manifest.components.items():
        gflops, nodes = peak_gflops(profile, manifest, name), nodes_of(manifest, name)
        resident = c.weight_bytes + kv_bytes(c, context) + c.peak_activation_bytes
        if c.kv_cache:
            rows += decoder_rows(manifest, name, profile, context, prefill, threads)
        elif name in encoders:
            rows.append(
                _row(
                    name,
                    f"one {encoders[name]}",
                    c.flops_per_item,
                    c.weight_bytes + 2 * c.peak_activation_bytes,
                    nodes,
                    resident,
                    gflops,
                    profile,
                    threads,
                )
            )
        else:  # a lookup: one row of the table per token
            rows.append(
                _row(
                    name,
                    "1 token",
                    0,
                    2 * c.outputs[0].shape[-1] * FLOAT_BYTES,
                    nodes,
                    resident,
                    gflops,
                    profile,
                    threads,
                )
            )
    return rows
