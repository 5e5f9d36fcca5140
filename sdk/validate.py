"""Semantic checks of a manifest at load, so a manifest that loads can run.

`from_dict` already checks keys and types; this checks meaning: names that exist (components,
their inputs and outputs), sizes that are positive and bounded (so nothing allocates gigabytes
on a typo), dtypes from a closed list, templates with known fields only, token ids inside the
vocabulary (the typed report is checked by its records).

Example:
    >>> check(manifest, "bundle/manifest.json")            # doctest: +SKIP
    BundleError: bundle/manifest.json: components.text_decoder.kv_cache.layers 0 is not allowed; allowed: 1 to 1024
"""

from __future__ import annotations

import math
import string
from typing import Any

from edgemfm.errors import BundleError
from edgemfm.manifest import Component, Manifest, Preprocess

ACTIVATION_DTYPES = ("float32", "float16", "bfloat16")  # what a component computes in
TENSOR_DTYPES = (*ACTIVATION_DTYPES, "int64", "int32", "int8", "uint8", "bool")  # what crosses a boundary
MEDIA_KINDS = ("image", "audio")
# edgemfm's custom-op libraries an onnx graph may call (runtimes/kernels/): matmul_int4 holds the int4 and int8 ops
ONNX_KERNELS = ("matmul_int4", "matmul_f32", "attention")
CACHE_DTYPES = ("", "int8")  # a KV cache in the component's own dtype, or an int8 one
# the scale layouts each cache kind and dtype takes: GroupQueryAttention's static ones (dynamic), or the pte
# program's own per token and head (static)
CACHE_SCALES = {
    "dynamic": {"": ("",), "int8": ("per_channel", "per_tensor")},
    "static": {"": ("",), "int8": ("per_token",)},
}
MAX_BYTES = 1 << 40  # a weight or activation size past 1 TiB is a corrupt manifest, not a model
MAX_DIM = 1 << 24  # a tensor axis
MAX_TOKENS = 1 << 20  # sequence lengths, new tokens
MAX_IMAGE = 4096  # pixels per side after resizing: 4096^2 RGB float32 is 200 MB
MAX_PIXELS = MAX_IMAGE * MAX_IMAGE
MAX_AUDIO_S = 600  # seconds of one audio window


class _Checker:
    def __init__(self, where: str):
        self.where = where

    def fail(self, path: str, value: Any, allowed: str) -> None:
        raise BundleError(f"{self.where}: {path} {value!r} is not allowed; allowed: {allowed}")

    def int_in(self, path: str, value: int, low: int, high: int) -> None:
        if not low <= value <= high:
            self.fail(path, value, f"{low} to {high}")

    def real_in(self, path: str, value: float, low: float, high: float, above: bool = False) -> None:
        if not math.isfinite(value) or value < low or value > high or (above and value == low):
            self.fail(path, value, f"a finite number {'above' if above else 'from'} {low:g}{f' to {high:g}'}")

    def name_in(self, path: str, value: str, names: Any) -> None:
        if value not in names:
            self.fail(path, value, ", ".join(sorted(names)) or "none (there are no such names)")

    def template(self, path: str, value: str, fields: set[str]) -> None:
        try:
            used = {f for _, f, spec, conv in string.Formatter().parse(value) if f is not None}
        except ValueError as e:
            self.fail(path, value, f"a template with fields {', '.join(sorted(fields))} ({e})")
        if bad := sorted(used - fields):
            self.fail(path, value, f"a template using only {{{'}, {'.join(sorted(fields))}}} (not {{{bad[0]}}})")


def check(manifest: Manifest, where: str) -> Manifest:
    """`manifest` if every name it uses exists and every size is sane; else BundleError naming the key."""
    c = _Checker(where)
    if not manifest.components:
        c.fail("components", {}, "at least one component")
    for name, comp in manifest.components.items():
        _component(c, f"components.{name}", comp)
    _generation(c, manifest)
    _prompt(c, manifest)
    _preprocess(c, manifest.preprocess)
    s = manifest.streaming
    c.real_in("streaming.audio_window_s", s.audio_window_s, 0, MAX_AUDIO_S, above=True)
    c.int_in("streaming.image_tile", s.image_tile, 1, MAX_IMAGE)
    c.int_in("streaming.max_seq_len", s.max_seq_len, 1, MAX_TOKENS)
    c.int_in("streaming.prefill_chunk", s.prefill_chunk, 1, MAX_TOKENS)
    c.int_in("streaming.sink_tokens", s.sink_tokens, 0, MAX_TOKENS)
    t = manifest.tokenizer
    for i, token in enumerate((*([t.bos_token_id] if t.bos_token_id is not None else []), *t.eos_token_ids)):
        c.int_in(f"tokenizer token id [{i}]", token, 0, MAX_DIM)
    return manifest


def _component(c: _Checker, path: str, comp: Component) -> None:
    c.name_in(f"{path}.dtype", comp.dtype, ACTIVATION_DTYPES)
    for kind, specs in (("inputs", comp.inputs), ("outputs", comp.outputs)):
        if len({s.name for s in specs}) != len(specs) or not specs:
            c.fail(f"{path}.{kind}", [s.name for s in specs], "one or more tensors with distinct names")
        for i, spec in enumerate(specs):
            c.name_in(f"{path}.{kind}[{i}].dtype", spec.dtype, TENSOR_DTYPES)
            if not spec.name:
                c.fail(f"{path}.{kind}[{i}].name", spec.name, "a non-empty name")
            for d in spec.shape:
                if isinstance(d, int):
                    c.int_in(f"{path}.{kind}[{i}].shape", d, 1, MAX_DIM)
                elif not d:
                    c.fail(f"{path}.{kind}[{i}].shape", d, "positive sizes or named axes")
    c.int_in(f"{path}.weight_bytes", comp.weight_bytes, 0, MAX_BYTES)
    c.int_in(f"{path}.peak_activation_bytes", comp.peak_activation_bytes, 0, MAX_BYTES)
    c.int_in(f"{path}.flops_per_item", comp.flops_per_item, 0, MAX_BYTES * 1024)
    if comp.format == "pte" and not comp.method:
        c.fail(f"{path}.method", comp.method, "the name of the program's method")
    for i, kernel in enumerate(comp.kernels):
        c.name_in(f"{path}.kernels[{i}]", kernel, ONNX_KERNELS if comp.format == "onnx" else ())
    if (kv := comp.kv_cache) is not None:
        c.int_in(f"{path}.kv_cache.layers", kv.layers, 1, 1024)
        c.int_in(f"{path}.kv_cache.kv_heads", kv.kv_heads, 1, 1024)
        c.int_in(f"{path}.kv_cache.head_dim", kv.head_dim, 1, 4096)
        c.name_in(f"{path}.kv_cache.dtype", kv.dtype, CACHE_DTYPES)
        c.name_in(f"{path}.kv_cache.scales", kv.scales, CACHE_SCALES[kv.kind][kv.dtype])
        if kv.kind == "dynamic":
            for key, names in (("past", comp.inputs), ("present", comp.outputs)):
                c.template(f"{path}.kv_cache.{key}", getattr(kv, key), {"layer", "kind"})
                declared = {s.name for s in names}
                for layer in range(kv.layers):
                    for k in ("key", "value"):
                        tensor = getattr(kv, key).format(layer=layer, kind=k)
                        c.name_in(f"{path}.kv_cache.{key} ({tensor})", tensor, declared)
                if getattr(kv, key).format(layer=kv.layers, kind="key") in declared:  # the graph has more layers
                    c.fail(f"{path}.kv_cache.layers", kv.layers, f"the layers the {key} tensors name")
        else:
            if kv.shared:
                c.fail(f"{path}.kv_cache.shared", kv.shared, "false for a static cache (the program owns its buffers)")
            c.int_in(f"{path}.kv_cache.max_seq_len", kv.max_seq_len, 1, MAX_TOKENS)
            c.name_in(f"{path}.kv_cache.position", kv.position, {s.name for s in comp.inputs})


def _generation(c: _Checker, m: Manifest) -> None:
    g = m.generation
    c.name_in("generation.decoder", g.decoder, m.components)
    c.name_in("generation.embedding", g.embedding, m.components)
    c.int_in("generation.max_new_tokens", g.max_new_tokens, 0, MAX_TOKENS)
    decoder = m.components[g.decoder]
    if decoder.kv_cache is None:
        c.fail("generation.decoder", g.decoder, "a component with a kv_cache")
    c.name_in(f"components.{g.decoder}.inputs", "inputs_embeds", {s.name for s in decoder.inputs})
    c.name_in(f"components.{g.decoder}.outputs", "logits", {s.name for s in decoder.outputs})
    for kind, name in (("inputs", "inputs_embeds"), ("outputs", "logits")):
        spec = next(s for s in getattr(decoder, kind) if s.name == name)
        if not spec.shape or not isinstance(spec.shape[-1], int):  # the budget sizes hidden rows and logits by it
            c.fail(f"components.{g.decoder}.{kind} ({name}).shape", list(spec.shape), "a shape ending in a fixed size")
    vocab = next(o.shape[-1] for o in decoder.outputs if o.name == "logits")
    limit = vocab - 1
    for key in ("suppress_tokens", "begin_suppress_tokens"):
        for token in getattr(g, key):
            c.int_in(f"generation.{key}", token, 0, limit)
    if (x := decoder.cross_attention) is not None:
        c.name_in(f"components.{g.decoder}.cross_attention.media", x.media, MEDIA_KINDS)
        c.name_in(f"components.{g.decoder}.cross_attention.encoder", x.encoder, m.components)
        encoder = m.components[x.encoder]
        c.name_in(f"components.{g.decoder}.cross_attention.input", x.input, {s.name for s in encoder.inputs})
        for out in x.outputs:
            c.name_in(f"components.{g.decoder}.cross_attention.outputs", out, {s.name for s in encoder.outputs})
            c.name_in(f"components.{g.decoder}.inputs", out, {s.name for s in decoder.inputs})
        if x.media == "audio" and m.preprocess.audio is None:
            c.fail("preprocess.audio", None, "audio settings for the cross-attended audio")


def _prompt(c: _Checker, m: Manifest) -> None:
    c.template("prompt.template", m.prompt.template, {"media", "prompt"})
    if m.prompt.turn is not None:
        c.template("prompt.turn", m.prompt.turn, {"media", "prompt"})
    for kind, media in m.prompt.media.items():
        path = f"prompt.media.{kind}"
        c.name_in(f"{path} (kind)", kind, MEDIA_KINDS)
        if not media.placeholder:
            c.fail(f"{path}.placeholder", media.placeholder, "non-empty text")
        c.int_in(f"{path}.token_id", media.token_id, 0, MAX_DIM)
        c.name_in(f"{path}.encoder", media.encoder, m.components)
        encoder = m.components[media.encoder]
        inputs, outputs = {s.name for s in encoder.inputs}, {s.name for s in encoder.outputs}
        c.name_in(f"{path}.input", media.input, inputs)
        c.name_in(f"{path}.output", media.output, outputs)
        for key in ("patch_positions", "length"):
            if (value := getattr(media, key)) is not None:
                c.name_in(f"{path}.{key}", value, inputs)
        if getattr(m.preprocess, kind) is None:
            c.fail(f"preprocess.{kind}", None, f"{kind} settings for the {kind} placeholder")


def _preprocess(c: _Checker, p: Preprocess) -> None:
    if (i := p.image) is not None:
        # each size field is bounded where its resize mode reads it (SigLIP's height x width leaves `size` 0)
        if i.resize == "shortest_edge":
            c.int_in("preprocess.image.size", i.size, 1, MAX_IMAGE)
        elif i.resize == "height_width":
            c.int_in("preprocess.image.height", i.height, 1, MAX_IMAGE)
            c.int_in("preprocess.image.width", i.width, 1, MAX_IMAGE)
        if i.center_crop:
            c.int_in("preprocess.image.crop", i.crop, 1, MAX_IMAGE)
        c.real_in("preprocess.image.rescale", i.rescale, 0, 1e6, above=True)
        for key in ("mean", "std"):
            for v in getattr(i, key):
                c.real_in(f"preprocess.image.{key}", v, -1e6 if key == "mean" else 0, 1e6, above=key == "std")
    if (s := p.image_splitting) is not None:
        c.int_in("preprocess.image_splitting.longest_edge", s.longest_edge, 1, MAX_IMAGE)
        c.int_in("preprocess.image_splitting.tile", s.tile, 1, MAX_IMAGE)
        c.template("preprocess.image_splitting.tile_text", s.tile_text, {"row", "col"})
        for key in ("row_end", "split_global", "single", "end"):
            c.template(f"preprocess.image_splitting.{key}", getattr(s, key), set())
    if (q := p.image_patches) is not None:
        c.int_in("preprocess.image_patches.patch", q.patch, 1, 1024)
        c.int_in("preprocess.image_patches.temporal_patch", q.temporal_patch, 1, 64)
        c.int_in("preprocess.image_patches.merge", q.merge, 1, 64)
        c.int_in("preprocess.image_patches.min_pixels", q.min_pixels, 1, MAX_PIXELS)
        c.int_in("preprocess.image_patches.max_pixels", q.max_pixels, q.min_pixels, MAX_PIXELS)
    if (a := p.audio) is not None:
        c.int_in("preprocess.audio.sampling_rate", a.sampling_rate, 1000, 768000)
        c.int_in("preprocess.audio.n_fft", a.n_fft, 2, 1 << 16)
        c.int_in("preprocess.audio.hop_length", a.hop_length, 1, a.n_fft)
        c.int_in("preprocess.audio.n_mels", a.n_mels, 1, 1024)
        c.int_in("preprocess.audio.n_samples", a.n_samples, a.n_fft, a.sampling_rate * MAX_AUDIO_S)
        c.real_in("preprocess.audio.min_frequency", a.min_frequency, 0, a.sampling_rate / 2)
        c.real_in("preprocess.audio.max_frequency", a.max_frequency, a.min_frequency, a.sampling_rate / 2, above=True)


def token_ids(manifest: Manifest, vocab_size: int, where: str) -> None:
    """Every token id the manifest names (special, placeholder, suppressed) inside the tokenizer's vocabulary."""
    c = _Checker(where)
    t, g = manifest.tokenizer, manifest.generation
    named = {
        "tokenizer.bos_token_id": [t.bos_token_id] if t.bos_token_id is not None else [],
        "tokenizer.eos_token_ids": list(t.eos_token_ids),
        "generation.suppress_tokens": list(g.suppress_tokens),
        "generation.begin_suppress_tokens": list(g.begin_suppress_tokens),
        **{f"prompt.media.{k}.token_id": [m.token_id] for k, m in manifest.prompt.media.items()},
    }
    for path, ids in named.items():
        for token in ids:
            c.int_in(path, token, 0, vocab_size - 1)
