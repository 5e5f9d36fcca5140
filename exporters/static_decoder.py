"""The text decoder with a static KV cache, for ExecuTorch programs (`--format pte`).

ExecuTorch plans every buffer ahead of time, so the cache cannot grow call by call as in the ONNX
decoder. Here the program owns one fixed [1, kv_heads, max_seq_len, head_dim] buffer per layer
and per key/value, written in place at the positions fed as `input_pos`; the attention mask
covers all `max_seq_len` positions and hides those after the current one, so stale entries
from an earlier prompt are never read and no reset is needed between generations.

    inputs_embeds [1, seq, hidden] ─┐                    ┌─ key_{i}/value_{i} [1, kv, max, d]
    input_pos [seq] ────────────────┴─► decoder layers ◄─┘  (mutable buffers, updated in place)
                                             └─► lm_head ─► logits [1, seq, vocab]

It builds on transformers' own `StaticLayer` (index_copy_ at the write positions), as
`transformers.integrations.executorch.TorchExportableModuleWithStaticCache` does, but wraps the
language model and lm_head a family hands over instead of a whole `*ForCausalLM`, so the same
wrapper serves every family whose decoder `decoder_unit` describes, and the program keeps one
copy of the weights for prefill and decode (transformers.exporters writes two).

Qwen2-VL's M-RoPE (`mrope=True`) adds a `position_ids` [3, 1, seq] input: after an image the
rotary positions fall behind the cache slots. Whisper (exporters/whisper.py) subclasses the
module to take its cross-attention K/V as inputs, the same every call of a clip.

Example:
    >>> unit = static_decoder_unit(model.model.language_model, model.lm_head, text_config, kv_layout(text_config), 128)  # doctest: +SKIP
    >>> unit.input_names, unit.kv_cache.kind                                                              # doctest: +SKIP
    (('inputs_embeds', 'input_pos'), 'static')
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch

from edgemfm.errors import InputError
from edgemfm.exporters import llm_ops
from edgemfm.exporters.family import ExportUnit
from edgemfm.manifest import KVCache

POSITION = "input_pos"


class StaticDecoder(torch.nn.Module):
    def __init__(self, language_model: torch.nn.Module, lm_head: torch.nn.Module, kv: KVCache):
        super().__init__()
        from transformers.cache_utils import Cache, StaticLayer

        self.language_model, self.lm_head, self.max_seq_len = language_model, lm_head, kv.max_seq_len
        dtype = next(lm_head.parameters()).dtype
        # ExecuTorch's LLM ops where the model's attention fits them (exporters/llm_ops.py), else the
        # masked full-cache path below; `fallback` says why, for the report.
        self.fallback = llm_ops.unsupported(language_model.config, kv.max_seq_len)
        if self.fallback is None:
            llm_ops.load_ops()
            self.cache = Cache(
                layers=[llm_ops.OpsLayer(kv.max_seq_len, kv.kv_heads, kv.head_dim, dtype) for _ in range(kv.layers)]
            )
        else:
            # Full-length layers for every layer, sliding ones included (Mistral, Gemma-2/3): the model
            # applies the window in its mask over absolute positions, as the ONNX decoder does, whereas
            # transformers' StaticSlidingWindowLayer rolls its buffer on Python-int lengths that
            # torch.export cannot keep dynamic.
            self.cache = Cache(layers=[StaticLayer(max_cache_len=kv.max_seq_len) for _ in range(kv.layers)])
            self.cache.early_initialization(1, kv.kv_heads, kv.head_dim, dtype, torch.device("cpu"))
        self._register()

    def _register(self) -> None:
        for i, layer in enumerate(self.cache.layers):
            for attr in _tensors(layer):
                self.register_buffer(_buffer_name(attr, i), getattr(layer, attr), persistent=False)
            self.register_buffer(f"length_{i}", layer.cumulative_length, persistent=False)

    def int8_cache(self, kv: KVCache) -> KVCache:
        """Store the cache as int8 per token and head (llm_ops.Int8OpsLayer); `kv` as the manifest says it.

        Only on the LLM ops: the masked full-cache path (soft-capping, a window under the cache) has no
        int8 attention, so it refuses in one line naming what is allowed.

        Example:
            >>> unit.module.int8_cache(unit.kv_cache).scales  # doctest: +SKIP
            'per_token'
        """
        if self.fallback is not None:
            raise InputError(
                f"--kv-cache int8 for --format pte runs on edgemfm::sdpa_int8, which this decoder cannot "
                f"use ({self.fallback}); allowed: --kv-cache float, or --format onnx"
            )
        if kv.head_dim % 4:
            raise InputError(
                f"--kv-cache int8 for --format pte stores 4 dims of a head together, and this decoder's head_dim is "
                f"{kv.head_dim}; allowed: --kv-cache float, or --format onnx"
            )
        for i, layer in enumerate(self.cache.layers):
            for attr in layer.BUFFERS:
                delattr(self, _buffer_name(attr, i))
            delattr(self, f"length_{i}")
        self.cache.layers = [
            llm_ops.Int8OpsLayer(kv.max_seq_len, kv.kv_heads, kv.head_dim, torch.float32) for _ in range(kv.layers)
        ]
        self._register()
        return replace(kv, dtype="int8", scales="per_token")

    def bind(self, input_pos: torch.Tensor) -> Any:
        """The cache, on this module's buffers, writing from `input_pos[0]` on."""
        start = llm_ops.start_of(input_pos, input_pos.shape[0], self.max_seq_len) if self.fallback is None else 0
        for i, layer in enumerate(self.cache.layers):
            # Rebind the cache to the module's buffers on every call: under torch.export these
            # are the traced tensors, so the in-place writes become buffer mutations of the
            # program instead of writes to constants.
            for attr in _tensors(layer):
                setattr(layer, attr, getattr(self, _buffer_name(attr, i)))
            layer.cumulative_length = getattr(self, f"length_{i}")
            layer.cumulative_length.copy_(input_pos[0])  # StaticLayer writes from here on
            layer.start = start
        return self.cache

    @contextmanager
    def attention(self) -> Iterator[dict[str, Any]]:
        """Inside: the language model attends through the LLM ops; yields the keywords its call takes."""
        if self.fallback is not None:
            yield {}
            return
        config = self.language_model.config
        saved, config._attn_implementation = config._attn_implementation, llm_ops.ATTENTION
        ops = {llm_ops.START: self.cache.layers[0].start}
        if isinstance(self.cache.layers[0], llm_ops.Int8OpsLayer):  # the attention reads their scales and zero points
            ops[llm_ops.LAYERS] = self.cache.layers
        try:
            yield ops
        finally:
            config._attn_implementation = saved

    def forward(self, inputs_embeds, input_pos, position_ids=None):
        # position_ids: M-RoPE's [3, 1, seq] rotary positions (Qwen2-VL), which differ from the
        # cache slots `input_pos` after an image; otherwise the rotary position is the slot.
        cache = self.bind(input_pos)
        with self.attention() as ops:
            out = self.language_model(
                inputs_embeds=inputs_embeds,
                position_ids=input_pos[None] if position_ids is None else position_ids,
                cache=cache,
                use_cache=True,
                **ops,
            )
        return self.lm_head(out.last_hidden_state)


def _tensors(layer: Any) -> tuple[str, ...]:
    """The cache tensors of `layer` that the decoder holds as buffers: an ops layer names its own; transformers'
    StaticLayer (the masked path) holds keys and values as the float ops layer does."""
    return getattr(layer, "BUFFERS", llm_ops.OpsLayer.BUFFERS)


def _buffer_name(attr: str, layer: int) -> str:
    """A cache tensor's buffer name: key_0, value_0 (what the float programs have always named them), key_scales_0 ..."""
    return f"{attr.removesuffix('s') if attr in ('keys', 'values') else attr}_{layer}"


def static_layout(kv: KVCache, max_seq_len: int) -> KVCache:
    """The manifest's description of a static cache of `max_seq_len` positions written at `input_pos`.

    Example:
        >>> static_layout(KVCache(2, 3, 16, past="past.{layer}.{kind}", present="present.{layer}.{kind}"), 64).kind
        'static'
    """
    return replace(kv, past="", present="", kind="static", max_seq_len=max_seq_len, position=POSITION)


def static_decoder_unit(
    language_model, lm_head, config, kv: KVCache, max_seq_len: int, seq: int = 5, mrope: bool = False
) -> ExportUnit:
    """The decoder of `decoder_unit` with a static cache of `max_seq_len` positions.

    `mrope`: the program also takes `position_ids` [3, 1, seq] (temporal, height, width), as
    Qwen2-VL's decoder does; the cache slots stay `input_pos`.
    """
    kv = static_layout(kv, max_seq_len)
    args: tuple[torch.Tensor, ...] = (torch.randn(1, seq, config.hidden_size), torch.arange(seq))
    axes = {"inputs_embeds": {0: "batch", 1: "seq"}, POSITION: {0: "seq"}, "logits": {0: "batch", 1: "seq"}}
    if mrope:  # three different rows, so the parity check covers every section of the rotary dims
        args += ((torch.arange(seq) + torch.arange(3)[:, None])[:, None],)
        axes["position_ids"] = {1: "batch", 2: "seq"}
    return ExportUnit(
        module=StaticDecoder(language_model, lm_head, kv).eval(),
        args=args,
        input_names=("inputs_embeds", POSITION, "position_ids")[: len(args)],
        output_names=("logits",),
        dynamic_axes=axes,
        kv_cache=kv,
        items=seq,
    )
