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


def load_ops() -> None:
    """Register the `llama::` ops and their CPU kernels (PyTorch and ExecuTorch runtime both), and ATTENTION.

    Example:
        >>> load_ops(); torch.ops.llama.custom_sdpa  # doctest: +SKIP
    """
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (loads libcustom_ops_aot_lib)
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

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        torch.ops.llama.update_cache(key_states.transpose(1, 2), self.keys, self.start)
        torch.ops.llama.update_cache(value_states.transpose(1, 2), self.values, self.start)
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
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    out = torch.ops.llama.custom_sdpa(query.transpose(1, 2), key, value, kwargs[START], None, 0.0, True, scaling)
    return out, None
