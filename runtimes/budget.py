"""The memory budget: what a bundle needs to run, added up at load and refused when it cannot fit.

needed = the process as it is (interpreter, numpy, onnxruntime: read from the OS)
       + the weights the sessions map and each session's fixed cost
       + the KV cache at its bound (streaming.max_seq_len), twice: the decoder graph returns a
         new cache while the old one is still an input; once where the runtime appends to one
         buffer in place (`kvcache.SharedKVCache`)
       + each component's largest activation: encoders at one item (they are fed one at a time;
         measured by the exporter in ONNX Runtime), the decoder at one prefill chunk attending
         over the whole cache; the audio encoder also holds one window's log-mel computation
       + the encoder-output cache at its bound (`encoder_cache.py`): rows of media seen again.

The estimate is checked twice: before any session exists (so nothing big is allocated for a
bundle that cannot fit), and again once the sessions are loaded, with their real resident size
in place of the estimate. Tests hold the process's measured peak (VmHWM) to the budget.

Example:
    >>> plan = estimate(manifest, manifest.streaming, resident_bytes())  # doctest: +SKIP
    >>> check(plan, 64 * 2**20)                                          # doctest: +SKIP
    MemoryBudgetError: memory budget 64.0 MiB (67108864 bytes) is too small: needs 101.2 MiB ...
"""

from __future__ import annotations

import ctypes
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from edgemfm.errors import MemoryBudgetError
from edgemfm.manifest import Component, Manifest, StreamingSettings
from edgemfm.runtimes.audio import log_mel_working_bytes

# Resident memory one onnxruntime 1.32 CPU session adds beyond its weights (thread pool,
# allocator, graph): 5.3-5.8 MiB measured per session of the test bundles on x86-64; rounded up.
SESSION_BYTES = 8 * 2**20
MiB = 2**20
# The encoder-output cache's default bound for a bundle with media encoders: the rows of about
# 200 demo images, 5 Idefics3 images of 10 tiles or 5 Qwen2-VL-2B images; `encoder_cache_mb` changes it.
ENCODER_CACHE_BYTES = 8 * MiB
# Bytes a cached row (one position, one head, key or value) carries beside its values, by the cache's scale layout:
# a pte int8 cache's float32 scale and int8 zero point (exporters/llm_ops.py); static scales are in the weights.
PER_TOKEN_BYTES = {"per_token": 4 + 1}


@dataclass(frozen=True)
class MemoryPlan:
    runtime: int  # the process before this bundle's sessions (or with them, once loaded)
    weights: int  # weights + fixed session costs (0 once loaded: then inside `runtime`)
    kv_cache: int
    activations: dict[str, int]  # component -> largest activation
    encoder_cache: int = 0  # the encoder-output cache's bound: rows of media seen again

    @property
    def total(self) -> int:
        return self.runtime + self.weights + self.kv_cache + sum(self.activations.values()) + self.encoder_cache

    def describe(self) -> str:
        parts = [
            ("process", self.runtime),
            ("weights", self.weights),
            ("KV cache", self.kv_cache),
            ("activations", sum(self.activations.values())),
            ("encoder cache", self.encoder_cache),
        ]
        return ", ".join(f"{name} {value / MiB:.1f}" for name, value in parts if value)


def _itemsize(dtype: str) -> int:
    return {"float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int8": 1, "uint8": 1, "bool": 1}[dtype]


def _tensor_bytes(spec) -> int:
    return math.prod(d if isinstance(d, int) else 1 for d in spec.shape) * _itemsize(spec.dtype)


def kv_cache_bytes(decoder: Component, max_len: int, in_place: bool = False) -> int:
    """Bytes of past + present at `max_len` entries: layers x 2 (key, value) x heads x length x (head_dim x the
    cache's item size (an int8 cache: one byte, a quarter of float32's) + its per-token scale and zero point);
    half that `in_place`, where past and present are one buffer.

    Example:
        >>> kv_cache_bytes(manifest.components["text_decoder"], 2048) // MiB  # doctest: +SKIP
        22
    """
    kv = decoder.kv_cache
    row = kv.head_dim * _itemsize(kv.dtype or decoder.dtype) + PER_TOKEN_BYTES.get(kv.scales, 0)
    return (1 if in_place else 2) * kv.layers * 2 * kv.kv_heads * max_len * row


def fused_attention(manifest: Manifest, name: str) -> bool:
    """Whether the export fused every layer's attention into one ONNX Runtime op (the report says)."""
    parity = manifest.report.parity.get(name)
    fused = parity.fusion.fused_ops if parity and parity.fusion else {}
    ops = fused.get("MultiHeadAttention", 0) + fused.get("GroupQueryAttention", 0)
    return ops >= manifest.components[name].kv_cache.layers


def decoder_activation_bytes(decoder: Component, chunk: int, max_len: int, fused_attention: bool = False) -> int:
    """The decoder's largest live tensors for one prefill chunk over a full cache (an estimate).

    The attention score tensor [heads, chunk, max_len] dominates long prefills. Measured on the
    default model, peak minus loaded size for one prefill of 1k-2k tokens: 4.8-5.9 score
    tensors when attention is plain ONNX ops (scores, masked scores, probabilities, the additive
    mask, the arena's rounding), 1.9-2.3 when the export fused it into MultiHeadAttention; 6 and
    3 are counted (a GroupQueryAttention counts as fused). Add the logits [chunk, vocab] and about eight hidden-sized rows per token
    (residual, norms, q/k/v, MLP); never less than the exporter's measured peak at its example shapes.
    """
    kv = decoder.kv_cache
    hidden = next(i.shape[-1] for i in decoder.inputs if i.name == "inputs_embeds")
    vocab = next(o.shape[-1] for o in decoder.outputs if o.name == "logits")
    heads = max(hidden // kv.head_dim, kv.kv_heads)
    item = _itemsize(decoder.dtype)
    scores = 3 if fused_attention else 6
    estimate = (scores * heads * chunk * max_len + chunk * vocab + 8 * chunk * hidden) * item
    return max(estimate, decoder.peak_activation_bytes)


def default_encoder_cache_bytes(manifest: Manifest) -> int:
    """The encoder-output cache's bound when the caller names none: 0 for a bundle without media encoders.

    Example:
        >>> default_encoder_cache_bytes(manifest) // MiB  # doctest: +SKIP
        8
    """
    return ENCODER_CACHE_BYTES if manifest.prompt.media else 0


def estimate(
    manifest: Manifest,
    streaming: StreamingSettings,
    resident: int,
    loaded: bool = False,
    encoder_cache: int = 0,
    in_place: bool = False,
) -> MemoryPlan:
    """What running `manifest` under `streaming` needs, on top of `resident` bytes the process holds,
    with an encoder-output cache bounded at `encoder_cache` bytes (`in_place`: the KV cache is one buffer)."""
    name = manifest.generation.decoder
    decoder = manifest.components[name]
    activations = {
        n: decoder_activation_bytes(c, streaming.prefill_chunk, streaming.max_seq_len, fused_attention(manifest, name))
        if n == name
        else c.peak_activation_bytes + sum(_tensor_bytes(t) for t in (*c.inputs, *c.outputs))
        for n, c in manifest.components.items()
    }
    audio = manifest.prompt.media.get("audio")
    if audio is not None and manifest.preprocess.audio is not None:
        activations[audio.encoder] += log_mel_working_bytes(manifest.preprocess.audio)
    weights = 0 if loaded else sum(c.weight_bytes + SESSION_BYTES for c in manifest.components.values())
    kv = kv_cache_bytes(decoder, streaming.max_seq_len, in_place)
    return MemoryPlan(resident, weights, kv, activations, encoder_cache)


def check(plan: MemoryPlan, budget: int, what: str) -> MemoryPlan:
    """`plan` if it fits in `budget` bytes; else a MemoryBudgetError giving needed and allowed bytes."""
    if plan.total > budget:
        raise MemoryBudgetError(
            f"{what} needs {plan.total} bytes ({plan.total / MiB:.1f} MiB: {plan.describe()}) "
            f"but the memory budget allows {budget} bytes ({budget / MiB:.1f} MiB); "
            f"allowed: --memory-budget {math.ceil(plan.total / MiB)} or more, or a smaller streaming.max_seq_len"
            + (", or a smaller encoder cache (--encoder-cache MB)" if plan.encoder_cache else "")
        )
    return plan


def _status_kib(field: str) -> int | None:
    status = Path("/proc/self/status")
    if not status.is_file():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def resident_bytes() -> int:
    """The process's resident memory now, from the OS (Linux VmRSS; the peak elsewhere)."""
    kib = _status_kib("VmRSS")
    return kib * 1024 if kib is not None else peak_resident_bytes()


def release_free_heap() -> bool:
    """Give the C heap's free pages back to the OS now (glibc's malloc_trim); False elsewhere.

    glibc keeps freed buffers of a few MiB in its heap (its mmap threshold rises after the first
    large free), so an encoder's activations, freed, still count in the process's resident size
    for the rest of the run: measured on a 30 s audio window, 52 MiB kept after the first item.

    Example:
        >>> release_free_heap()  # doctest: +SKIP
        True
    """
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim(0) >= 0
    except (OSError, AttributeError):
        return False


def reset_peak() -> bool:
    """Lower the OS's peak counter (VmHWM) to the resident memory now; False where the OS can't.

    Linux resets it on writing "5" to /proc/self/clear_refs; the exporter uses it to measure
    one run's growth alone, after loading a session whose own transient peak would mask it.

    Example:
        >>> reset_peak() and peak_resident_bytes() - resident_bytes() < 2**20  # doctest: +SKIP
        True
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_resident_bytes() -> int:
    """The process's peak resident memory so far, from the OS (VmHWM, or getrusage's ru_maxrss)."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    import resource  # POSIX only; Linux and Android answer from /proc above

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # macOS reports bytes, Linux KiB
