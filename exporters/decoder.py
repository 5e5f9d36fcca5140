"""The text decoder and token embedding as exportable modules, shared by every family.

One graph serves prefill and decode: it takes the past KV cache as flat tensors (length 0 at
prefill) and returns the logits and the grown cache, so the bundle holds one copy of the weights.

    inputs_embeds [batch, seq, hidden] ─┐
    attention_mask [batch, total]  ─────┼─► decoder layers ─► lm_head ─► logits [batch, seq, vocab]
    position_ids [batch, seq]  ─────────┤
    past.{i}.key/value [b, kv, past, d] ┴─► present.{i}.key/value [b, kv, past + seq, d]

Example:
    >>> unit = decoder_unit(model.model.language_model, model.lm_head, text_config)  # doctest: +SKIP
    >>> unit.input_names[:3]                                                         # doctest: +SKIP
    ('inputs_embeds', 'attention_mask', 'position_ids')
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from edgemfm.exporters.family import ExportUnit
from edgemfm.exporters.static_decoder import static_decoder_unit
from edgemfm.manifest import KVCache

PAST = "past.{layer}.{kind}"
PRESENT = "present.{layer}.{kind}"


class TextDecoder(torch.nn.Module):
    def __init__(self, language_model: torch.nn.Module, lm_head: torch.nn.Module, config: Any):
        super().__init__()
        self.language_model, self.lm_head, self.config = language_model, lm_head, config
        self.lookahead: torch.nn.Module | None = None  # exporters/lookahead.py: proposals for the token after next

    def forward(self, inputs_embeds, attention_mask, position_ids, past):
        from transformers import DynamicCache

        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)]
        # Full-length cache layers: sliding-window models (Mistral, Gemma-2/3) apply the window in
        # the mask, so one graph serves every length (a sliding layer would trim at traced shapes).
        cache = DynamicCache(ddp_cache_data=pairs)
        out = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
        )
        present = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
        logits = self.lm_head(out.last_hidden_state)
        if self.lookahead is None:
            return (logits, *present)
        return (logits, *present, self.lookahead(out.last_hidden_state, logits))


class TokenEmbedding(torch.nn.Module):
    def __init__(self, embed_tokens: torch.nn.Module):
        super().__init__()
        self.embed_tokens = embed_tokens

    def forward(self, input_ids):
        return self.embed_tokens(input_ids)


def kv_layout(config: Any) -> KVCache:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return KVCache(config.num_hidden_layers, kv_heads, head_dim, past=PAST, present=PRESENT)


def decoder_unit(language_model, lm_head, config, seq: int = 5, past_len: int = 3, mrope: bool = False) -> ExportUnit:
    """The text decoder with example inputs of `seq` new tokens after `past_len` cached ones.

    `mrope`: position_ids are [3, batch, seq] (temporal, height, width), as Qwen2-VL's decoder takes.
    """
    kv = kv_layout(config)
    names = [(i, k) for i in range(kv.layers) for k in ("key", "value")]
    past = tuple(torch.randn(1, kv.kv_heads, past_len, kv.head_dim) for _ in names)
    positions = torch.arange(past_len, past_len + seq)[None]
    if mrope:  # three different rows, so the parity check covers every section of the rotary dims
        positions = (positions + torch.arange(3)[:, None])[:, None]
    args = (
        torch.randn(1, seq, config.hidden_size),
        torch.ones(1, past_len + seq, dtype=torch.int64),
        positions,
        past,
    )
    past_names = tuple(PAST.format(layer=i, kind=k) for i, k in names)
    present_names = tuple(PRESENT.format(layer=i, kind=k) for i, k in names)
    axes = {
        "inputs_embeds": {0: "batch", 1: "seq"},
        "attention_mask": {0: "batch", 1: "total_seq"},
        "position_ids": {1: "batch", 2: "seq"} if mrope else {0: "batch", 1: "seq"},
        "logits": {0: "batch", 1: "seq"},
        **{n: {0: "batch", 2: "past_seq"} for n in past_names},
        **{n: {0: "batch", 2: "total_seq"} for n in present_names},
    }
    return ExportUnit(
        module=TextDecoder(language_model, lm_head, config).eval(),
        args=args,
        input_names=("inputs_embeds", "attention_mask", "position_ids", *past_names),
        output_names=("logits", *present_names),
        dynamic_axes=axes,
        kv_cache=kv,
        items=seq,
        static_cache=partial(static_decoder_unit, language_model, lm_head, config, kv, mrope=mrope),
    )


def embedding_unit(embed_tokens: torch.nn.Module) -> ExportUnit:
    """The token embedding lookup: input_ids [batch, seq] -> inputs_embeds [batch, seq, hidden]."""
    return ExportUnit(
        module=TokenEmbedding(embed_tokens).eval(),
        args=(torch.tensor([[1, 2, 3, 4]], dtype=torch.int64),),
        input_names=("input_ids",),
        output_names=("inputs_embeds",),
        dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "inputs_embeds": {0: "batch", 1: "seq"}},
        items=4,
    )
