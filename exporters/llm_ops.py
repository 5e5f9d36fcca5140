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

`export --kv-cache int8` swaps each layer for `Int8OpsLayer`, as ExecuTorch's own LLM export does
(examples/models/llama/source_transformation/custom_kv_cache.py, sdpa.py): every new key and value is
quantized per token and head (asymmetric int8, one float32 scale and one int8 zero point per row of
head_dim), written with update_cache beside its scale and zero point, and `llama::custom_quantized_sdpa`
attends over the int8 cache directly (the query quantized per token too) without de-quantizing it whole:
a step reads (head_dim + 5) bytes per head and position instead of 4 x head_dim.

    k, v ──choose_qparams_per_token_asymmetric──► int8, scale, zero ──update_cache ×3──► caches at start_pos
    q ──quantize per token──► custom_quantized_sdpa(q8, k8, v8, start_pos, causal, scales, zeros) ─► out

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
    """`OpsLayer` with int8 keys and values, and a float32 scale and int8 zero point per position and head
    ([1, max_seq_len, kv_heads, 1]); `update` returns the int8 buffers, which only `_attention` reads."""

    BUFFERS = ("keys", "values", "key_scales", "key_zeros", "value_scales", "value_zeros")

    def __init__(self, max_seq_len: int, kv_heads: int, head_dim: int, dtype: torch.dtype):
        super().__init__(max_seq_len, 0, head_dim, dtype)  # 0 heads: the float buffers are replaced below
        shape, rows = (1, max_seq_len, kv_heads, head_dim), (1, max_seq_len, kv_heads, 1)
        self.keys, self.values = torch.zeros(shape, dtype=torch.int8), torch.zeros(shape, dtype=torch.int8)
        self.key_scales, self.value_scales = torch.ones(rows), torch.ones(rows)
        self.key_zeros, self.value_zeros = torch.zeros(rows, dtype=torch.int8), torch.zeros(rows, dtype=torch.int8)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        for states, kind in ((key_states, "key"), (value_states, "value")):
            values, scales, zeros = quantize_rows(states.transpose(1, 2))
            torch.ops.llama.update_cache(values, getattr(self, f"{kind}s"), self.start)
            torch.ops.llama.update_cache(scales, getattr(self, f"{kind}_scales"), self.start)
            torch.ops.llama.update_cache(zeros, getattr(self, f"{kind}_zeros"), self.start)
        return self.keys, self.values


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`x` [1, seq, heads, d] as int8 per row of d (asymmetric): values, float32 scales and int8 zero points [.., 1].

    Example:
        >>> [t.dtype for t in quantize_rows(torch.randn(1, 3, 2, 8))]  # doctest: +SKIP
        [torch.int8, torch.float32, torch.int8]
    """
    ops = torch.ops.quantized_decomposed
    scales, zeros = ops.choose_qparams_per_token_asymmetric.default(x, torch.int8)
    values = ops.quantize_per_token(x, scales, zeros, -128, 127, torch.int8)
    return values, scales.to(torch.float32), zeros.to(torch.int8)


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
        q, q_scales, q_zeros = quantize_rows(query)
        out = torch.ops.llama.custom_quantized_sdpa(
            q, key, value, kwargs[START], None, 0.0, True, scaling, q_zeros, q_scales,
            layer.key_zeros, layer.key_scales, layer.value_zeros, layer.value_scales,
        )  # fmt: skip
        return out, None
    out = torch.ops.llama.custom_sdpa(query, key, value, kwargs[START], None, 0.0, True, scaling)
    return out, None
