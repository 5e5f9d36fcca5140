"""`export --kv-cache int8`: the decoder's KV cache stored as int8 by ONNX Runtime's GroupQueryAttention.

    calibration prompts ─► the finished decoder graph, prefill ─► present K/V ranges per layer (per tensor, or
        │ per head and channel); a key's range is the norm of its rotated pairs (i, i + d/2), so no rotation leaves it
        │ scale = range / 127 (per channel: 1.5 x range / 127, see HEADROOM)
        ▼ every GroupQueryAttention: past/present int8, k_scale/v_scale constants ([1], or [1, kv_heads, 1, head_dim])

The kernel quantizes each new key and value as it appends it (round half to even, saturated to int8)
and attends over the int8 cache, so a step moves a quarter of float32's cache bytes. Its scales are
static, per tensor or per channel: ONNX Runtime's CPU kernel has no per-token scales, so a token whose
key or value leaves the calibrated range is clipped (measured: de-quantizing per-token scales in the
graph costs twice the float cache's time, decode6's note). The ranges are read off the finished graph
(after int4/int8 weights), on the calibration text the weights were calibrated on.

A key's scale (per channel: shared by the two channels a rotation mixes) keeps any rotation in range, so
the runtime re-bases an int8 stream by turning the stored integers (runtimes/kvcache.py), no scales
needed. A decoder whose every layer is not one GroupQueryAttention (no fusion, a head size the kernel
refuses, an encoder-decoder's attention) cannot take it: the export stops, naming what is allowed.

Example:
    >>> manifest = quantize_kv_cache(stage, manifest, calibration=None)  # doctest: +SKIP
    >>> manifest.components["text_decoder"].kv_cache.dtype              # doctest: +SKIP
    'int8'
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgemfm.errors import InputError
from edgemfm.manifest import KVCache, Manifest

LEVELS = 127  # symmetric int8: the kernel saturates to [-128, 127]
# The calibrated range maps to +-127 / HEADROOM: a few calibration prompts do not reach every token's range, and a
# clipped entry costs more than a coarser step. Per tensor the range is the largest channel's, room enough for the
# others; per channel each needs its own. Chosen on SmolLM2-135M int4, where per tensor matched per channel at 1.5x
# and beat it at 1.0x: BENCHMARKS.md's runtime-kv-cache-int8 section gives each one's divergence from the float cache.
HEADROOM = {"per_tensor": 1.0, "per_channel": 1.5}
QUANT_TYPES = {"per_channel": "PER_CHANNEL", "per_tensor": "PER_TENSOR"}  # the kernel's k/v_quant_type
SCALE_INPUTS = (12, 13)  # GroupQueryAttention's k_scale and v_scale inputs (ONNX Runtime 1.32)


def quantize_kv_cache(
    stage: Path, manifest: Manifest, calibration: str | Path | None, scales: str = "per_tensor"
) -> Manifest:
    """Give the decoder in `stage` an int8 KV cache with `scales` ("per_tensor", what export uses, or
    "per_channel": one per head and channel) calibrated on `calibration` (a folder as for `export
    --calibration`; None: the built-in prompts); the manifest with the cache's dtype, scale layout and int8
    past/present tensors.

    Example:
        >>> quantize_kv_cache(stage, manifest, None, "per_channel").components["text_decoder"].kv_cache.scales  # doctest: +SKIP
        'per_channel'
    """
    import onnx

    from edgemfm.quantizers.calibration import component_feeds

    name = manifest.generation.decoder
    component = manifest.components[name]
    path = stage / component.file
    model = onnx.load(str(path), load_external_data=False)  # the weights stay where they are
    nodes = _attention_nodes(model, component.kv_cache, name)
    feeds = component_feeds(stage, manifest, calibration)[name]
    key, value = _ranges(path, feeds, component.kv_cache, scales)
    for layer, node in enumerate(nodes):
        room = HEADROOM[scales] / LEVELS
        _quantize_node(model, node, layer, key[layer] * room, value[layer] * room, scales)
    names = _cache_names(component.kv_cache)
    for tensor in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        if tensor.name in names:
            tensor.type.tensor_type.elem_type = onnx.TensorProto.INT8
    onnx.save(model, str(path))
    kv = replace(component.kv_cache, dtype="int8", scales=scales)
    specs = lambda specs: tuple(replace(s, dtype="int8") if s.name in names else s for s in specs)  # noqa: E731
    decoder = replace(component, kv_cache=kv, inputs=specs(component.inputs), outputs=specs(component.outputs))
    return replace(manifest, components={**manifest.components, name: decoder})


def check_device(profile: Any) -> None:
    """Refuse a device whose ONNX Runtime providers would run GroupQueryAttention elsewhere than on the CPU
    kernel, the one whose int8 cache is measured (XNNPACK has no such op: it stays on the CPU).

    Example:
        >>> check_device(load_profile("jetson"))  # doctest: +SKIP
        InputError: --kv-cache int8 runs on ONNX Runtime's CPU GroupQueryAttention; jetson-orin-nano-8gb runs on ...
    """
    from edgemfm.profiles import require_cpu

    require_cpu(profile, "--kv-cache int8 runs on ONNX Runtime's CPU GroupQueryAttention", "--kv-cache float")


def _cache_names(kv: KVCache) -> set[str]:
    return {
        template.format(layer=i, kind=k)
        for template in (kv.past, kv.present)
        for i in range(kv.layers)
        for k in ("key", "value")
    }


def _attention_nodes(model: Any, kv: KVCache, name: str) -> list[Any]:
    """Each layer's GroupQueryAttention, in layer order, or an InputError where a layer has none."""
    nodes = {n.input[3]: n for n in model.graph.node if n.op_type == "GroupQueryAttention" and len(n.input) > 4}
    pasts = [kv.past.format(layer=i, kind="key") for i in range(kv.layers)]
    if missing := [p for p in pasts if p not in nodes]:
        raise InputError(
            f"--kv-cache int8: {name} attends to {missing[0]} without GroupQueryAttention "
            f"({len(missing)} of {kv.layers} layers), the only kernel with an int8 cache; allowed: decoders whose "
            "every layer fuses to it (head sizes a multiple of 8, not --no-fuse), or --kv-cache float"
        )
    return [nodes[p] for p in pasts]


def _ranges(path: Path, feeds: list[dict], kv: KVCache, scales: str) -> tuple[np.ndarray, np.ndarray]:
    """The largest magnitude of each layer's keys and values over the calibration prefills, [layers, kv_heads, d]
    (per_tensor: the same value everywhere); a key's is its rotated pair's norm, shared by both channels."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = [kv.present.format(layer=i, kind=k) for i in range(kv.layers) for k in ("key", "value")]
    key = np.zeros((kv.layers, kv.kv_heads, kv.head_dim))
    value = np.zeros_like(key)
    for feed in feeds:
        presents = session.run(outputs, feed)
        for layer in range(kv.layers):
            k, v = (presents[2 * layer + i].astype(np.float64) for i in (0, 1))
            first, second = np.split(k, 2, axis=-1)
            norm = np.sqrt(first**2 + second**2).max(axis=(0, 2))
            key[layer] = np.maximum(key[layer], np.concatenate([norm, norm], axis=-1))
            value[layer] = np.maximum(value[layer], np.abs(v).max(axis=(0, 2)))
    if scales == "per_tensor":
        key[:] = key.max(axis=(1, 2), keepdims=True)
        value[:] = value.max(axis=(1, 2), keepdims=True)
    floor = np.finfo(np.float32).tiny * LEVELS  # a channel never written (all zero) still gets a usable scale
    return np.maximum(key, floor), np.maximum(value, floor)


def _quantize_node(model: Any, node: Any, layer: int, key: np.ndarray, value: np.ndarray, scales: str) -> None:
    """`node` reading and writing an int8 cache with scales `key`, `value` [kv_heads, d]."""
    import onnx
    from onnx import numpy_helper

    shape = [1] if scales == "per_tensor" else [1, *key.shape[:1], 1, key.shape[1]]
    names = []
    for kind, scale in (("key", key), ("value", value)):
        names.append(f"kv_cache.{layer}.{kind}_scale")
        flat = scale.reshape(-1)[:1] if scales == "per_tensor" else scale
        model.graph.initializer.append(numpy_helper.from_array(flat.astype(np.float32).reshape(shape), names[-1]))
    inputs = list(node.input) + [""] * (SCALE_INPUTS[1] + 1 - len(node.input))
    inputs[SCALE_INPUTS[0]], inputs[SCALE_INPUTS[1]] = names
    del node.input[:]
    node.input.extend(inputs)
    node.attribute.extend(
        [
            onnx.helper.make_attribute("k_quant_type", QUANT_TYPES[scales]),
            onnx.helper.make_attribute("v_quant_type", QUANT_TYPES[scales]),
            onnx.helper.make_attribute("kv_cache_bit_width", 8),
        ]
    )
