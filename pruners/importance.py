"""Importance of blocks, KV-head groups and MLP channels, measured on calibration data.

Each score is gathered by forward hooks during one pass over the calibration calls (each runs
the model on one sample: token ids for a text decoder, a pre-processed image or audio clip for an
encoder); lower means less important (removed first).

- block i:      mean over tokens of 1 − cos(block input, block output): a block that barely
                turns its input changes little when skipped (ShortGPT's block influence).
- KV group k:   mean over tokens of ‖Σ_h W_o[:, h] a_h‖ summed over its query heads h: the size
                of what the group writes into the residual stream.
- MLP channel j: ‖W_down[:, j]‖₂ × mean |a_j| with a the input of down_proj (activation-aware
                magnitude, as Wanda scores weights, applied to whole channels).

Example:
    >>> calls = [lambda ids=ids: model(input_ids=ids) for ids in calibration_samples(tokenizer, texts)]  # doctest: +SKIP
    >>> block_scores(find_decoder(model), calls)          # doctest: +SKIP
    [0.41, 0.07, 0.22]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from edgemfm.errors import InputError
from edgemfm.pruners.structure import Stack

BUILTIN_TEXT = Path(__file__).with_name("calibration_en.txt")
MAX_TOKENS = 128  # per sample: enough context for stable statistics, cheap on 2 cores
MAX_SAMPLES = 64


def read_texts(data: str | Path | None) -> list[str]:
    """Calibration texts: the non-empty lines of every .txt file under `data` (built-in English if None)."""
    if data is None:
        files = [BUILTIN_TEXT]
    else:
        root = Path(data)
        if not root.is_dir():
            raise InputError(f"calibration data {str(root)!r} is not a directory; expected a folder of .txt files")
        files = sorted(root.rglob("*.txt"))
    texts = [line.strip() for f in files for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise InputError(f"calibration data {str(data)!r} holds no text; expected .txt files with one sample per line")
    return texts[:MAX_SAMPLES]


def calibration_samples(tokenizer: Any, texts: Sequence[str]) -> list[torch.Tensor]:
    """Token ids [1, n] per text, truncated to MAX_TOKENS; one sample per forward avoids padding."""
    return [torch.tensor([tokenizer(t)["input_ids"][:MAX_TOKENS]]) for t in texts]


def _run(calls: Iterable[Callable[[], Any]], hooks: list[Any], advance: Callable[[], None]) -> None:
    try:
        with torch.no_grad():
            for call in calls:
                call()
                advance()
    finally:
        for h in hooks:
            h.remove()


def block_scores(
    dec: Stack, calls: Sequence[Callable[[], Any]], advance: Callable[[], None] = lambda: None
) -> list[float]:
    """1 − cosine(input, output) of every block, averaged over calibration tokens (or patches, frames)."""
    sums = torch.zeros(len(dec.layers), dtype=torch.float64)
    tokens = [0]

    def hook(i: int) -> Callable[..., None]:
        def record(module, args, kwargs, output) -> None:
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(x.flatten(0, -2).double(), y.flatten(0, -2).double(), dim=-1)
            sums[i] += (1 - cos).sum()
            if i == 0:
                tokens[0] += cos.numel()

        return record

    hooks = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(dec.layers)]
    _run(calls, hooks, advance)
    return (sums / tokens[0]).tolist()


def kv_group_scores(
    dec: Stack, calls: Sequence[Callable[[], Any]], advance: Callable[[], None] = lambda: None
) -> list[list[float]]:
    """Per layer, per KV group: mean norm of what its query heads write through o_proj."""
    d, g, kv = dec.head_dim, dec.groups, dec.kv_heads
    sums = torch.zeros(len(dec.layers), kv, dtype=torch.float64)
    tokens = [0]

    def hook(i: int) -> Callable[..., None]:
        def record(o_proj, args) -> None:
            a = args[0].reshape(-1, kv * g, d).double()  # [tokens, query heads, head_dim]
            w = o_proj.weight.detach().double().reshape(-1, kv * g, d)  # [hidden, query heads, head_dim]
            per_head = torch.einsum("nhd,ohd->nho", a, w).norm(dim=-1)  # [tokens, query heads]
            sums[i] += per_head.reshape(-1, kv, g).sum(dim=(0, 2))
            if i == 0:
                tokens[0] += a.shape[0]

        return record

    hooks = [layer.self_attn.o_proj.register_forward_pre_hook(hook(i)) for i, layer in enumerate(dec.layers)]
    _run(calls, hooks, advance)
    return (sums / tokens[0]).tolist()


def channel_scores(
    dec: Stack, calls: Sequence[Callable[[], Any]], advance: Callable[[], None] = lambda: None
) -> list[torch.Tensor]:
    """Per layer, per MLP channel j: ‖W_down[:, j]‖ × mean |input_j of down_proj (fc2)|."""
    downs = [dec.part(i, dec.layout.mlp_out) for i in range(len(dec.layers))]
    sums = [torch.zeros(down.in_features, dtype=torch.float64) for down in downs]
    tokens = [0]

    def hook(i: int) -> Callable[..., None]:
        def record(down_proj, args) -> None:
            a = args[0].reshape(-1, down_proj.in_features).double()
            sums[i] += a.abs().sum(dim=0)
            if i == 0:
                tokens[0] += a.shape[0]

        return record

    hooks = [down.register_forward_pre_hook(hook(i)) for i, down in enumerate(downs)]
    _run(calls, hooks, advance)
    norms = [down.weight.detach().double().norm(dim=0) for down in downs]
    return [n * s / tokens[0] for n, s in zip(norms, sums)]
