"""The pruneable structure of a model's transformer stacks, and the slicing that removes parts of them.

A `Stack` is one component's layers: the text decoder (any Hugging Face causal decoder whose
layers read `self_attn.{q,k,v,o}_proj` and `mlp.{gate,up,down}_proj`: Llama, Mistral, Qwen2, and
the language model inside LLaVA, Idefics3, Qwen2-Audio; or Whisper's decoder: `fc1/fc2` and a
cross-attention to the encoder's states in every layer), a ViT-style vision encoder (CLIP, SigLIP,
Idefics3: `mlp.fc1/fc2`) or a Whisper-style audio encoder (Whisper, Qwen2-Audio: `fc1/fc2`).
Every removal is a real shape change — Linear weights are sliced, layers are dropped from the
ModuleList and the config is rewritten to match — never a mask, so the exported graphs get smaller.

    query head h reads KV head h // groups (transformers' repeat_kv): removing KV group k removes
    query heads k*groups .. k*groups + groups-1 with it, and their columns of o_proj.

Heads are pruned in Llama-style text decoders only: the encoders' attention (CLIP, SigLIP, Whisper)
and Whisper's decoder derive head_dim = hidden_size // num_heads, so a config with fewer heads
would not load back.

Example:
    >>> dec = find_stack(model, "text_decoder")            # doctest: +SKIP
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
SUPPORTED = (
    "LlamaForCausalLM",
    "LlavaForConditionalGeneration",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Idefics3ForConditionalGeneration",
    "Qwen2AudioForConditionalGeneration",
    "WhisperForConditionalGeneration",
)
COMPONENTS = ("text_decoder", "vision_encoder", "audio_encoder")
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class Layout:
    """How one kind of stack names its parts: config fields and dotted Linear paths inside a layer."""

    layers: str  # config field: how many layers
    width: str  # config field: MLP intermediate width
    mlp_in: tuple[str, ...]  # Linears whose output rows are the MLP channels
    mlp_out: str  # the Linear whose input columns are the MLP channels
    heads: bool  # whether a config with fewer heads loads back (see the module docstring)


DECODER = Layout("num_hidden_layers", "intermediate_size", ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj", True)
VIT = Layout("num_hidden_layers", "intermediate_size", ("mlp.fc1",), "mlp.fc2", False)
WHISPER = Layout("encoder_layers", "encoder_ffn_dim", ("fc1",), "fc2", False)
WHISPER_DECODER = Layout("decoder_layers", "decoder_ffn_dim", ("fc1",), "fc2", False)
ENCODER_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")


@dataclass
class Stack:
    """One component's layers in a loaded model, and the config that describes their shapes."""

    component: str  # text_decoder, vision_encoder or audio_encoder
    model: Any  # the whole model (LlamaForCausalLM, LlavaForConditionalGeneration, ...)
    body: torch.nn.Module  # the module holding `layers`
    config: Any  # the (sub-)config saved with the model: the shapes the slices must match
    layout: Layout
    protected_tail: int = 0  # last layers that may not go (LLaVA reads the vision tower's hidden_states[-k])

    @property
    def layers(self) -> torch.nn.ModuleList:
        return self.body.layers

    def part(self, layer: int, path: str) -> torch.nn.Linear:
        module = self.layers[layer]
        for name in path.split("."):
            module = getattr(module, name)
        return module

    @property
    def width(self) -> int:
        return getattr(self.config, self.layout.width)

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


def _has_linears(module: Any, owner: str | None, names: Sequence[str]) -> bool:
    part = getattr(module, owner, None) if owner else module
    return all(isinstance(getattr(part, n, None), torch.nn.Linear) for n in names)


def _fits(layers: Any, attention: Sequence[str], layout: Layout) -> bool:
    mlp_owner = layout.mlp_out.rpartition(".")[0] or None
    mlp = [p.rpartition(".")[2] for p in (*layout.mlp_in, layout.mlp_out)]
    return (
        isinstance(layers, torch.nn.ModuleList)
        and len(layers) > 0
        and all(_has_linears(layer, "self_attn", attention) and _has_linears(layer, mlp_owner, mlp) for layer in layers)
    )


def find_decoder(model: Any) -> Stack:
    """The text decoder layers of `model`, Llama-style or Whisper-style (its shapes in the top-level
    config); an `UnsupportedModelError` when they are neither."""
    body = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(body, "layers", None)
    if _fits(layers, ATTENTION, DECODER):
        return Stack("text_decoder", model, body, model.config.get_text_config(), DECODER)
    if _fits(layers, ENCODER_ATTENTION, WHISPER_DECODER) and len(layers) == getattr(model.config, "decoder_layers", 0):
        return Stack("text_decoder", model, body, model.config, WHISPER_DECODER)
    raise UnsupportedModelError(type(model).__name__, SUPPORTED)


def _find_encoder(model: Any, component: str) -> Stack:
    """The ViT-style vision tower or Whisper-style audio encoder whose config is the model's sub-config."""
    config = model.config
    sub = getattr(config, {"vision_encoder": "vision_config", "audio_encoder": "audio_config"}[component], None)
    if sub is None and component == "audio_encoder" and getattr(config, "model_type", "") == "whisper":
        sub = config  # Whisper's encoder shapes live in the top-level config
    for layout in (VIT, WHISPER):
        for name, body in model.named_modules():
            if (
                sub is not None
                and getattr(body, "config", None) is sub
                and "decoder" not in name
                and _fits(getattr(body, "layers", None), ENCODER_ATTENTION, layout)
            ):
                if len(body.layers) == getattr(sub, layout.layers, None):
                    return Stack(component, model, body, sub, layout, _protected_tail(config, component))
    raise UnsupportedModelError(f"{type(model).__name__} ({component})", SUPPORTED)


def _protected_tail(config: Any, component: str) -> int:
    """LLaVA feeds hidden_states[f] of its vision tower (f < 0): the last -f-1 layers' outputs are
    never read, and removing one would shift which layer f names."""
    f = getattr(config, "vision_feature_layer", None) if component == "vision_encoder" else None
    return -f - 1 if isinstance(f, int) and f < 0 else 0


def find_stack(model: Any, component: str) -> Stack:
    """The layers of `component` (text_decoder, vision_encoder, audio_encoder) in `model`.

    Example:
        >>> find_stack(llava, "vision_encoder").layout.width   # doctest: +SKIP
        'intermediate_size'
    """
    return find_decoder(model) if component == "text_decoder" else _find_encoder(model, component)


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


def drop_blocks(dec: Stack, remove: Sequence[int]) -> None:
    """Remove whole layers; the survivors are renumbered for the KV cache."""
    kept = [i for i in range(len(dec.layers)) if i not in set(remove)]
    assert kept, "at least one layer must stay"
    dec.body.layers = torch.nn.ModuleList(dec.layers[i] for i in kept)
    for new, layer in enumerate(dec.layers):
        for module in layer.modules():  # self- and (Whisper) cross-attention: each cache is indexed by this
            if hasattr(module, "layer_idx"):
                module.layer_idx = new
    setattr(dec.config, dec.layout.layers, len(kept))
    if getattr(dec.config, "layer_types", None):  # sliding/full attention per layer
        dec.config.layer_types = [dec.config.layer_types[i] for i in kept]


def keep_kv_groups(dec: Stack, keep: dict[int, Sequence[int]]) -> None:
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


def keep_channels(dec: Stack, keep: dict[int, Sequence[int]]) -> None:
    """Keep, in layer i, the MLP intermediate channels `keep[i]`; the same count everywhere."""
    counts = {len(k) for k in keep.values()}
    assert len(counts) == 1 and len(keep) == len(dec.layers), "transformers configs hold one MLP width"
    for i, channels in keep.items():
        idx = _index(channels)
        for path in dec.layout.mlp_in:
            _slice(dec.part(i, path), idx, 0)
        _slice(dec.part(i, dec.layout.mlp_out), idx, 1)
        mlp = getattr(dec.layers[i], "mlp", None)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = len(idx)
    setattr(dec.config, dec.layout.width, counts.pop())
