"""The pruneable structure of a Llama-style decoder, and the slicing that removes parts of it.

Works on any Hugging Face causal decoder whose layers read
`model.layers[i].self_attn.{q,k,v,o}_proj` and `model.layers[i].mlp.{gate,up,down}_proj`
(Llama, Mistral, Qwen2, and the language model inside LLaVA). Every removal is a real shape
change — Linear weights are sliced, layers are dropped from the ModuleList and the config is
rewritten to match — never a mask, so the exported graphs get smaller.

    query head h reads KV head h // groups (transformers' repeat_kv): removing KV group k removes
    query heads k*groups .. k*groups + groups-1 with it, and their columns of o_proj.

Example:
    >>> dec = find_decoder(model)                          # doctest: +SKIP
    >>> keep_channels(dec, {i: list(range(100)) for i in range(len(dec.layers))})  # doctest: +SKIP
    >>> dec.config.intermediate_size                       # doctest: +SKIP
    100
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from edgemfm.errors import UnsupportedModelError

# Architectures checked in tests or sharing their module names; the check itself is structural.
SUPPORTED = ("LlamaForCausalLM", "LlavaForConditionalGeneration", "MistralForCausalLM", "Qwen2ForCausalLM")
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


@dataclass
class Decoder:
    """The decoder stack of a loaded model and the text config that describes its shapes."""

    model: Any  # the whole model (LlamaForCausalLM, LlavaForConditionalGeneration, ...)
    body: torch.nn.Module  # the module holding `layers`
    config: Any  # the text config saved with the model: the shapes the slices must match

    @property
    def layers(self) -> torch.nn.ModuleList:
        return self.body.layers

    @property
    def head_dim(self) -> int:
        c = self.config
        return getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads

    @property
    def kv_heads(self) -> int:
        return getattr(self.config, "num_key_value_heads", None) or self.config.num_attention_heads

    @property
    def groups(self) -> int:
        """Query heads per KV head."""
        return self.config.num_attention_heads // self.kv_heads


def _has_linears(module: Any, owner: str, names: Sequence[str]) -> bool:
    part = getattr(module, owner, None)
    return all(isinstance(getattr(part, n, None), torch.nn.Linear) for n in names)


def find_decoder(model: Any) -> Decoder:
    """The decoder layers of `model`; an `UnsupportedModelError` when they are not Llama-style."""
    arch = type(model).__name__
    body = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(body, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or not all(
        _has_linears(layer, "self_attn", ATTENTION) and _has_linears(layer, "mlp", MLP) for layer in layers
    ):
        raise UnsupportedModelError(arch, SUPPORTED)
    return Decoder(model=model, body=body, config=model.config.get_text_config())


def count_parameters(model: torch.nn.Module) -> int:
    """Parameters of `model`, tied weights counted once."""
    return sum(p.numel() for p in model.parameters())


def _slice(linear: torch.nn.Linear, keep: torch.Tensor, dim: int) -> None:
    """Keep rows (dim 0: output features) or columns (dim 1: input features) of `linear`."""
    linear.weight = torch.nn.Parameter(linear.weight.detach().index_select(dim, keep).contiguous())
    if dim == 0:
        linear.out_features = len(keep)
        if linear.bias is not None:
            linear.bias = torch.nn.Parameter(linear.bias.detach().index_select(0, keep).contiguous())
    else:
        linear.in_features = len(keep)


def _index(keep: Sequence[int]) -> torch.Tensor:
    return torch.tensor(sorted(keep), dtype=torch.long)


def drop_blocks(dec: Decoder, remove: Sequence[int]) -> None:
    """Remove whole decoder layers; the survivors are renumbered for the KV cache."""
    kept = [i for i in range(len(dec.layers)) if i not in set(remove)]
    assert kept, "at least one decoder layer must stay"
    dec.body.layers = torch.nn.ModuleList(dec.layers[i] for i in kept)
    for new, layer in enumerate(dec.layers):
        layer.self_attn.layer_idx = new  # the cache is indexed by this
    dec.config.num_hidden_layers = len(kept)
    if getattr(dec.config, "layer_types", None):  # sliding/full attention per layer
        dec.config.layer_types = [dec.config.layer_types[i] for i in kept]


def keep_kv_groups(dec: Decoder, keep: dict[int, Sequence[int]]) -> None:
    """Keep, in layer i, the KV heads `keep[i]` with all their query heads; the same count everywhere."""
    counts = {len(k) for k in keep.values()}
    assert len(counts) == 1 and len(keep) == len(dec.layers), "transformers configs hold one head count"
    d, g = dec.head_dim, dec.groups
    for i, groups in keep.items():
        attn = dec.layers[i].self_attn
        kv_rows = _index([k * d + j for k in groups for j in range(d)])
        q_rows = _index([(k * g + h) * d + j for k in groups for h in range(g) for j in range(d)])
        _slice(attn.q_proj, q_rows, 0)
        _slice(attn.k_proj, kv_rows, 0)
        _slice(attn.v_proj, kv_rows, 0)
        _slice(attn.o_proj, q_rows, 1)
    kv = counts.pop()
    dec.config.head_dim = d  # no longer hidden_size // heads: say it explicitly
    dec.config.num_key_value_heads = kv
    dec.config.num_attention_heads = kv * g


def keep_channels(dec: Decoder, keep: dict[int, Sequence[int]]) -> None:
    """Keep, in layer i, the MLP intermediate channels `keep[i]`; the same count everywhere."""
    counts = {len(k) for k in keep.values()}
    assert len(counts) == 1 and len(keep) == len(dec.layers), "transformers configs hold one MLP width"
    for i, channels in keep.items():
        mlp = dec.layers[i].mlp
        idx = _index(channels)
        _slice(mlp.gate_proj, idx, 0)
        _slice(mlp.up_proj, idx, 0)
        _slice(mlp.down_proj, idx, 1)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = len(idx)
    dec.config.intermediate_size = counts.pop()
