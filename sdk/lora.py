"""Low-rank adapters on a decoder's linear layers, trained by `finetune` and merged into the weights on save.

Each adapted `Linear` keeps its frozen weight W and gains two small matrices, A [rank, in] and
B [out, rank], through a forward hook:

    y = x W^T + b  +  (x A^T B^T) * scale        scale = alpha / rank;  B starts at 0: y starts unchanged

Merging writes W + (B @ A) * scale into the weight and removes the hook, so the saved checkpoint
has exactly the base model's tensors (no peft dependency, no adapter keys for `export` to meet).

Example:
    >>> adapters = attach(model.model.language_model, rank=8, alpha=16.0, seed=0)   # doctest: +SKIP
    >>> merge(adapters)                                                              # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Adapter:
    """One adapted linear layer: its A and B (trainable) and the hook that adds them."""

    name: str  # the layer's path inside the adapted module
    linear: Any  # torch.nn.Linear, frozen
    a: Any  # torch.nn.Parameter [rank, in]
    b: Any  # torch.nn.Parameter [out, rank]
    scale: float  # alpha / rank
    handle: Any  # the forward hook; None once merged


def attach(module: Any, rank: int, alpha: float, seed: int) -> list[Adapter]:
    """Adapt every `torch.nn.Linear` inside `module` (a decoder's attention and MLP projections).

    A is drawn as Kaiming-uniform from `seed`, B is zero: the adapted model starts equal to the base.

    Example:
        >>> len(attach(model.model.language_model, rank=4, alpha=8.0, seed=0))  # doctest: +SKIP
        21
    """
    import math

    import torch

    generator = torch.Generator().manual_seed(seed)
    adapters = []
    for name, linear in module.named_modules():
        if not isinstance(linear, torch.nn.Linear):
            continue
        bound = 1 / math.sqrt(linear.in_features)
        a = torch.nn.Parameter((torch.rand(rank, linear.in_features, generator=generator) * 2 - 1) * bound)
        b = torch.nn.Parameter(torch.zeros(linear.out_features, rank))
        adapter = Adapter(name, linear, a, b, alpha / rank, None)
        adapter.handle = linear.register_forward_hook(
            lambda _m, inputs, out, ad=adapter: out + (inputs[0] @ ad.a.T @ ad.b.T) * ad.scale
        )
        adapters.append(adapter)
    return adapters


def parameters(adapters: list[Adapter]) -> list[Any]:
    """The trainable tensors of `adapters` (for the optimizer)."""
    return [p for ad in adapters for p in (ad.a, ad.b)]


def merge(adapters: list[Adapter]) -> None:
    """Fold each adapter into its layer's weight (W += B @ A * scale) and remove its hook.

    Example:
        >>> merge(adapters); adapters[0].handle is None   # doctest: +SKIP
        True
    """
    import torch

    with torch.no_grad():
        for ad in adapters:
            if ad.handle is None:
                continue
            ad.linear.weight += (ad.b @ ad.a) * ad.scale
            ad.handle.remove()
            ad.handle = None
