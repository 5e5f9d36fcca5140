"""A static decoder's attention on ExecuTorch's LLM ops, as ExecuTorch's own Llama export runs it.

`llama::update_cache` writes a call's keys and values into the cache at `start_pos`, and
`llama::custom_sdpa` attends from `start_pos` causally over the positions filled so far only,
with grouped-query heads read in place (no repeat_kv): a decode step's cost grows with the
positions used, not with the cache's capacity, and no [seq, max_seq_len] mask is built.
Both ops take the cache as [batch, max_seq_len, kv_heads, head_dim] (sequence second).

    q [1, heads, seq, d] ──transpose──► custom_sdpa(q, k_cache, v_cache, start_pos, causal) ─► out
    k, v [1, kv, seq, d] ──transpose──► update_cache(·, k_cache / v_cache, start_pos)  (in place)

The model's own attention modules stay; only their attention function changes (transformers'
`AttentionInterface`, registered as ATTENTION below) and only inside the static decoder's call,
so the ONNX decoder built from the same modules is untouched. An attention call that is not a
self-attention on this cache (Whisper's cross-attention, non-causal) keeps transformers' SDPA.

What the op cannot express keeps the masked full-cache path (exporters/static_decoder.py):
attention-logit soft-capping (Gemma-2), and a sliding window shorter than the cache (Mistral,
Gemma-2/3 with a window under max_seq_len). `unsupported` names the reason.

`export --kv-cache int8` swaps each layer for `Int8OpsLayer`: edgemfm's own int8 cache and its two ops
(runtimes/kernels/int8_cache.cpp, built on the machine that runs the program: runtimes/native.py).
`edgemfm::cache_int8` rounds each new key and value row (one position, one head) to asymmetric int8 with its
own float32 scale and int8 zero point, as ExecuTorch's own LLM export does, and writes it in place in a layout
made for the attention's int8 dot products; `edgemfm::sdpa_int8` attends over those rows directly. A step
reads (head_dim + 5) bytes per head and position instead of 4 x head_dim. ExecuTorch's own int8 attention,
`llama::custom_quantized_sdpa`, costs 6x its float kernel on x86 (its int8 products are plain loops outside
aarch64; BENCHMARKS.md). `cache_int8_reference` and `sdpa_int8_reference` are the ops in PyTorch: what the
exporter traces and what the program is checked against.

    k, v [1, kv, seq, d] ──transpose──► cache_int8(·, cache, scales, zeros, start_pos)  (in place, int8)
    q ──transpose──► sdpa_int8(q, keys, scales, zeros, values, scales, zeros, start_pos, scale) ─► out

Example:
    >>> unsupported(LlamaConfig(), 128) is None                                  # doctest: +SKIP
    True
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import StaticLayer

ATTENTION = "edgemfm_llama_custom_sdpa"  # the attention function's name under transformers' AttentionInterface
START = "edgemfm_start_pos"  # the keyword the decoder passes its first cache slot under, down to the attention
LAYERS = "edgemfm_int8_layers"  # int8 cache: the keyword its layers (scales, zero points) reach the attention by


def load_ops() -> None:
    """Register the `llama::` ops and their CPU kernels (PyTorch and ExecuTorch runtime both), and ATTENTION.

    Example:
        >>> load_ops(); torch.ops.llama.custom_sdpa  # doctest: +SKIP
    """
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (loads libcustom_ops_aot_lib)
    import executorch.kernels.quantized  # noqa: F401  (the int8 cache's quantized_decomposed ops: their out variants)
    from torch.ao.quantization.fx._decomposed import quantized_decomposed_lib  # noqa: F401  (and their Python forms)
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, _attention)


def unsupported(config: Any, max_seq_len: int) -> str | None:
    """Why `config`'s attention cannot run on `llama::custom_sdpa` over `max_seq_len` positions; None if it can.

    Example:
        >>> unsupported(Gemma2Config(), 128)  # doctest: +SKIP
        'attention soft-capping'
    """
    if getattr(config, "attn_logit_softcapping", None):
        return "attention soft-capping"
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    slides = window is not None and (types is None or "sliding_attention" in types)
    if slides and getattr(config, "use_sliding_window", True) and window < max_seq_len:
        return f"a sliding window of {window} positions under the cache's {max_seq_len}"
    return None


class OpsLayer(StaticLayer):
    """One layer's cache for the ops: [1, max_seq_len, kv_heads, head_dim] keys and values, written by update_cache.

    A transformers `StaticLayer` (what a `Cache` expects of its layers) with the ops' layout and
    write; `update` returns the whole buffers, which the attention reads up to `start_pos` + seq only.
    """

    def __init__(self, max_seq_len: int, kv_heads: int, head_dim: int, dtype: torch.dtype):
        super().__init__(max_cache_len=max_seq_len)
        self.keys = torch.zeros(1, max_seq_len, kv_heads, head_dim, dtype=dtype)
        self.values = torch.zeros(1, max_seq_len, kv_heads, head_dim, dtype=dtype)
        self.is_initialized = True
        self.start: Any = 0  # the call's first slot (a SymInt under torch.export), set by the decoder

    BUFFERS = ("keys", "values")  # the tensors the decoder registers as its buffers, and rebinds at every call

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        torch.ops.llama.update_cache(key_states.transpose(1, 2), self.keys, self.start)
        torch.ops.llama.update_cache(value_states.transpose(1, 2), self.values, self.start)
        return self.keys, self.values


class Int8OpsLayer(OpsLayer):
    """`OpsLayer` with int8 keys and values in edgemfm's cache layout (runtimes/kernels/int8_cache.cpp: keys
    [kv_heads, S/8, head_dim/4, 8, 4], values [kv_heads, S/4, head_dim, 4], S the capacity rounded up to 8),
    a float32 scale and an int8 zero point per head and position ([kv_heads, S]), written by
    `edgemfm::cache_int8`; `update` returns the int8 buffers, which only `_attention` reads."""

    BUFFERS = ("keys", "values", "key_scales", "key_zeros", "value_scales", "value_zeros")

    def __init__(self, max_seq_len: int, kv_heads: int, head_dim: int, dtype: torch.dtype):
        super().__init__(max_seq_len, 0, head_dim, dtype)  # 0 heads: the float buffers are replaced below
        capacity = -(-max_seq_len // 8) * 8
        self.keys = torch.zeros(kv_heads, capacity // 8, head_dim // 4, 8, 4, dtype=torch.int8)
        self.values = torch.zeros(kv_heads, capacity // 4, head_dim, 4, dtype=torch.int8)
        self.key_scales, self.value_scales = torch.ones(kv_heads, capacity), torch.ones(kv_heads, capacity)
        self.key_zeros = torch.zeros(kv_heads, capacity, dtype=torch.int8)
        self.value_zeros = torch.zeros(kv_heads, capacity, dtype=torch.int8)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        torch.ops.edgemfm.cache_int8(
            key_states.transpose(1, 2), self.keys, self.key_scales, self.key_zeros, self.start, True
        )
        torch.ops.edgemfm.cache_int8(
            value_states.transpose(1, 2), self.values, self.value_scales, self.value_zeros, self.start, False
        )
        return self.keys, self.values


def start_of(input_pos: torch.Tensor, seq: int, max_seq_len: int) -> Any:
    """The first slot `input_pos[0]` as the ops' SymInt, bounded so torch.export can prove the writes fit."""
    start = input_pos[0].item()
    torch._check(start >= 0)
    torch._check(start + seq <= max_seq_len)
    return start


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' attention-function protocol: [1, heads, seq, d] query in, [1, seq, heads, d] out."""
    if not getattr(module, "is_causal", True) or START not in kwargs:
        # a cross-attention on the encoder's K/V ([1, kv, frames, d], not this cache)
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        kwargs.pop(START, None)
        kwargs.pop(LAYERS, None)
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    query = query.transpose(1, 2)
    if key.dtype == torch.int8:
        layer = kwargs[LAYERS][module.layer_idx]
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        out = torch.ops.edgemfm.sdpa_int8(
            query, key, layer.key_scales, layer.key_zeros, value, layer.value_scales, layer.value_zeros,
            kwargs[START], scale,
        )  # fmt: skip
        return out, None
    out = torch.ops.llama.custom_sdpa(query, key, value, kwargs[START], None, 0.0, True, scaling)
    return out, None


def cache_int8_reference(
    value: torch.Tensor,
    cache: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    start_pos: int,
    keys: bool,
) -> torch.Tensor:
    """edgemfm::cache_int8 in PyTorch: `value` [1, seq, kv_heads, d] as int8 rows into `cache` at start_pos.

    Each row is rounded asymmetric per head and position (the formulas at the top of
    runtimes/kernels/int8_cache.cpp) and written in the keys' or the values' layout, its scale and zero point
    beside it. Returns a placeholder, as llama::update_cache does.

    Example:
        >>> cache_int8_reference(torch.randn(1, 1, 3, 64), layer.keys, layer.key_scales, layer.key_zeros, 5, True)  # doctest: +SKIP
    """
    seq, d = value.shape[1], value.shape[-1]
    rows = value[0].transpose(0, 1).float()  # [kv, seq, d]
    low = rows.amin(-1, keepdim=True).clamp(max=0.0)
    high = rows.amax(-1, keepdim=True).clamp(min=0.0)
    scale = ((high - low) / 255.0).clamp(min=torch.finfo(torch.float32).eps)
    zero = torch.round(-128.0 - low / scale).clamp(-128, 127)
    q = (torch.round(rows / scale) + zero).clamp(-128, 127).to(torch.int8)
    unblocked = _unblock(cache, keys)  # [kv, S, d], a copy
    unblocked[:, start_pos : start_pos + seq] = q
    cache.copy_(_block(unblocked, keys, d))
    scales[:, start_pos : start_pos + seq] = scale[..., 0]
    zeros[:, start_pos : start_pos + seq] = zero[..., 0].to(torch.int8)
    return torch.zeros(1)


def _unblock(cache: torch.Tensor, keys: bool) -> torch.Tensor:
    """A cache in the kernel's layout as [kv_heads, S, head_dim]."""
    if keys:  # [kv, S/8, d/4, 8, 4] -> [kv, S/8, 8, d/4, 4]
        return cache.permute(0, 1, 3, 2, 4).reshape(cache.shape[0], cache.shape[1] * 8, -1)
    return cache.permute(0, 1, 3, 2).reshape(cache.shape[0], cache.shape[1] * 4, -1)  # [kv, S/4, 4, d]


def _block(rows: torch.Tensor, keys: bool, d: int) -> torch.Tensor:
    """[kv_heads, S, head_dim] in the kernel's layout."""
    kv, capacity = rows.shape[:2]
    if keys:
        return rows.reshape(kv, capacity // 8, 8, d // 4, 4).permute(0, 1, 3, 2, 4).contiguous()
    return rows.reshape(kv, capacity // 4, 4, d).permute(0, 1, 3, 2).contiguous()


def sdpa_int8_reference(
    query: torch.Tensor,
    keys: torch.Tensor,
    key_scales: torch.Tensor,
    key_zeros: torch.Tensor,
    values: torch.Tensor,
    value_scales: torch.Tensor,
    value_zeros: torch.Tensor,
    start_pos: int,
    scale: float,
) -> torch.Tensor:
    """edgemfm::sdpa_int8 in PyTorch (the formulas at the top of runtimes/kernels/int8_cache.cpp).

    query [1, seq, heads, d] float32 over a cache that cache_int8 wrote; row i attends to positions
    0 .. start_pos + i. Returns [1, seq, heads, d].

    Example:
        >>> sdpa_int8_reference(q, layer.keys, ks, kz, layer.values, vs, vz, 0, 0.125).shape  # doctest: +SKIP
        torch.Size([1, 1, 9, 64])
    """
    seq, heads, _ = query.shape[1:]
    kv = keys.shape[0]
    width = start_pos + seq
    amax = query.abs().amax(-1, keepdim=True)
    q8 = torch.round(query * torch.where(amax > 0, 127.0 / amax, 0.0)).clamp(-127, 127)
    row_scale = scale * torch.where(amax > 0, amax / 127.0, 1.0)  # [1, seq, heads, 1]

    def per_head(x: torch.Tensor) -> torch.Tensor:  # [kv, width, ...] -> [heads, width, ...]
        return x[:, :width].repeat_interleave(heads // kv, dim=0)

    k, v = per_head(_unblock(keys, True)).double(), per_head(_unblock(values, False)).double()
    ks, kz = per_head(key_scales), per_head(key_zeros).float()
    vs, vz = per_head(value_scales), per_head(value_zeros).double()
    rows = q8[0].transpose(0, 1).double()  # [heads, seq, d]
    dots = (rows @ k.transpose(1, 2)).float()  # exact: int8 products, summed in float64
    sums = rows.sum(-1, keepdim=True).float()
    scores = (dots - kz[:, None, :] * sums) * ks[:, None, :] * row_scale[0].transpose(0, 1)
    causal = torch.arange(width)[None, :] <= (start_pos + torch.arange(seq))[:, None]
    scores = scores.masked_fill(~causal, -torch.inf)
    e = torch.exp(scores - scores.amax(-1, keepdim=True))
    w = e * vs[:, None, :]
    largest = w.amax(-1, keepdim=True)
    w14 = torch.round(w * torch.where(largest > 0, 16383.0 / largest, 0.0)).double()
    mixed = w14 @ v - (w14 * vz[:, None, :]).sum(-1, keepdim=True)
    out = mixed.float() * (largest / 16383.0 / e.sum(-1, keepdim=True))
    return out.transpose(0, 1)[None].contiguous()


CACHE_INT8 = (
    "cache_int8(Tensor value, Tensor(a!) cache, Tensor(b!) scales, Tensor(c!) zeros, SymInt start_pos, bool keys) "
    "-> Tensor"
)
SDPA_INT8 = (
    "sdpa_int8(Tensor query, Tensor keys, Tensor key_scales, Tensor key_zeros, Tensor values, Tensor value_scales, "
    "Tensor value_zeros, SymInt start_pos, float scale) -> Tensor"
)
_library = torch.library.Library("edgemfm", "DEF")  # the ops as torch.export and ExecuTorch's out-variant pass see them
for _schema, _reference in ((CACHE_INT8, cache_int8_reference), (SDPA_INT8, sdpa_int8_reference)):
    _name = _schema.split("(", 1)[0]
    _library.define(_schema)
    _library.define(
        _schema.replace(") -> Tensor", ", *, Tensor(z!) out) -> Tensor(z!)").replace(f"{_name}(", f"{_name}.out(", 1)
    )
    _library.impl(_name, _reference, "CompositeExplicitAutograd")
    _library.impl(f"{_name}.out", lambda *args, out, _f=_reference: out.copy_(_f(*args)), "CompositeExplicitAutograd")
torch.library.register_fake("edgemfm::cache_int8")(lambda value, *args: value.new_empty(1))
torch.library.register_fake("edgemfm::sdpa_int8")(lambda query, *args: torch.empty_like(query))
