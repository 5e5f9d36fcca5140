"""A lookahead head in the text decoder graph: each position also proposes the token after next.

Speculative decoding with a separate draft pays only when the draft is much cheaper than the
target and usually right. The demo's int4 target steps in 2.7 ms; a 10-block int4 draft costs
0.37 of a step and agrees 55% of the time, which gives 0.89-0.93x (BENCHMARKS.md). The lookahead head
costs almost nothing to run because it lives in the target's own graph. It reads what the target
already has: its final hidden state at a position, and the token the target chooses there.

    hidden h_t ──► lm_head ──► logits ──► argmax of the first P, y_t ──► emb ─┐
        │                                                                   concat ─► up ─► SiLU ─► down ─► + h_t
        └────────────────────────────────────────────────────────────────────┘                             │
                                  proposal for t + 2 ◄── ids[argmax] ◄── out ◄── norm (the decoder's own) ◄──┘

Each verify call returns, at every position, the target's token (its logits) and a proposal for
the token after it. Whichever proposal the target accepts, the next proposal is already there, so
no draft call runs between target calls (`runtimes/lookahead.py`). This follows Medusa (Cai et al.,
arXiv 2401.10774), with EAGLE's conditioning on the token just chosen (Li et al., arXiv 2401.15077).

The head scores `ids`, a subset of the vocabulary (`draft_vocab.choose_ids`: the lowest ids, BPE's
most frequent, and the end tokens). It reads the chosen token as the argmax of the first P logits,
the ids 0 .. P-1 that start `ids`: the target's own token whenever that is one of them. An
ArgMax over all 49,152 of SmolLM2's logits took ~45 µs a row, 1.5% of the demo's int4 step;
the first 8,192 take a sixth of that. `edgemfm lookahead` trains the head on the model's own hidden
states (`sdk/lookahead.py`), with the chosen token read the same way. `export --lookahead FILE` adds
the head to the decoder graph, and its MatMuls are quantized with the rest.

Example:
    >>> head = read_head("demo.lookahead.safetensors", split.units["text_decoder"].module)  # doctest: +SKIP
    >>> unit = with_lookahead(split.units["text_decoder"], head)            # doctest: +SKIP
    >>> unit.output_names[-1]                                               # doctest: +SKIP
    'lookahead'
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from edgemfm.errors import InputError
from edgemfm.exporters.family import ExportUnit

OUTPUT = "lookahead"  # the decoder output [batch, seq] int64: each position's proposal for the token after next
FORMAT = "edgemfm-lookahead"  # safetensors metadata "format": what `read_head` accepts
WIDTH = 128  # the chosen token's embedding: small, the hidden state carries the context
INNER = 1024  # the MLP's inner width: ~1.3 M weights for a 576-wide decoder, 0.7 MB at int4
WEIGHTS = ("slot", "ids", "embed.weight", "up.weight", "down.weight", "out.weight")  # what a head file holds


class LookaheadHead(torch.nn.Module):
    """Proposal ids [batch, seq] for the token after next, from the decoder's final hidden state [batch, seq, hidden]
    (after its norm) and its logits [batch, seq, vocab].

    Example:
        >>> head = LookaheadHead(hidden=8, vocab_size=20, ids=(0, 1, 2, 3, 19), norm=torch.nn.Identity(), width=4, inner=16)
        >>> head(torch.randn(1, 3, 8), torch.randn(1, 3, 20)).shape, head.embed.num_embeddings
        (torch.Size([1, 3]), 4)
    """

    def __init__(
        self, hidden: int, vocab_size: int, ids: tuple[int, ...], norm: Any, width: int = WIDTH, inner: int = INNER
    ):
        super().__init__()
        slot = torch.full((vocab_size,), -100, dtype=torch.int64)  # -100: cross-entropy's "not learnt"
        slot[torch.tensor(ids)] = torch.arange(len(ids))
        self.register_buffer("slot", slot)  # token id -> output column (training's labels)
        self.register_buffer("ids", torch.tensor(ids, dtype=torch.int64))  # output column -> token id
        prefix = next((i for i, t in enumerate(ids) if t != i), len(ids))  # ids 0 .. P-1
        if not prefix:
            raise InputError(f"lookahead ids {ids[:4]}...: they must start at token 0; allowed: choose_ids' subsets")
        self.embed = torch.nn.Embedding(prefix, width)  # the chosen token, one of the first P
        self.up = torch.nn.Linear(hidden + width, inner, bias=False)
        self.down = torch.nn.Linear(inner, hidden, bias=False)
        self.out = torch.nn.Linear(hidden, len(ids), bias=False)
        self.norm = norm  # the decoder's final norm: shared, frozen
        self.dropout = torch.nn.Dropout(0.2)  # in training only: it lifted held-out prompts' right proposals
        torch.nn.init.zeros_(self.down.weight)  # starts as the plain hidden state: a bigram-free guess

    def chosen(self, logits: torch.Tensor) -> torch.Tensor:
        """The token the head is conditioned on: the argmax of the first P logits."""
        return logits[..., : self.embed.num_embeddings].argmax(-1)

    def scores(self, hidden: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """Logits [.., len(ids)] over the subset for the token after `chosen` (ids below P)."""
        x = self.dropout(torch.cat([hidden, self.embed(chosen)], -1))
        return self.out(self.norm(hidden + self.down(torch.nn.functional.silu(self.up(x)))))

    def forward(self, hidden: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return self.ids[self.scores(hidden, self.chosen(logits)).argmax(-1)]


def new_head(decoder: Any, vocab_size: int, ids: tuple[int, ...]) -> LookaheadHead:
    """An untrained head for a TextDecoder module (`exporters/decoder.py`): its output rows start as the tied
    table's rows of `ids`, so the first guess is the next token's own embedding direction.

    Example:
        >>> head = new_head(trainee.decoder, 49152, choose_ids(49152, 8192, keep=(2,)))   # doctest: +SKIP
    """
    norm = decoder.language_model.norm
    hidden = decoder.lm_head.weight.shape[1]
    head = LookaheadHead(hidden, vocab_size, ids, norm)
    with torch.no_grad():
        head.out.weight.copy_(decoder.lm_head.weight[torch.tensor(ids)])
    return head


def write_head(head: LookaheadHead, path: Path, about: dict[str, Any]) -> None:
    """The head's own weights (not the decoder's norm it borrows) as safetensors, `about` in its metadata."""
    from safetensors.torch import save_file

    weights = {k: v.detach().contiguous() for k, v in head.state_dict().items() if not k.startswith("norm.")}
    save_file(weights, str(path), metadata={"format": FORMAT, "about": json.dumps(about)})


def read_head(path: str | Path, decoder: Any) -> LookaheadHead:
    """The head at `path` on `decoder` (a TextDecoder module); refused in one line for another kind of decoder, or
    when the file is not a head or was trained for another decoder's width or vocabulary.

    Example:
        >>> read_head("demo.lookahead.safetensors", split.units["text_decoder"].module).ids.numel()  # doctest: +SKIP
        8193
    """
    from safetensors import SafetensorError, safe_open

    from edgemfm.exporters.decoder import TextDecoder

    if not isinstance(decoder, TextDecoder):
        raise InputError(
            f"--lookahead: this model's decoder ({type(decoder).__name__}) has no plain text head; "
            "allowed: decoder-only text heads (exporters/decoder.py)"
        )
    path = Path(path)
    if not path.is_file():
        raise InputError(f"lookahead head {str(path)!r} does not exist; allowed: a file `edgemfm lookahead` wrote")
    try:
        with safe_open(str(path), "pt") as f:
            meta, weights = f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise InputError(
            f"lookahead head {str(path)!r} is not a safetensors file ({e}); allowed: a file `edgemfm lookahead` wrote"
        ) from None
    if meta.get("format") != FORMAT or not set(WEIGHTS) <= set(weights):
        raise InputError(f"{str(path)!r} is not a lookahead head; allowed: a file `edgemfm lookahead` wrote")
    hidden, vocab = decoder.lm_head.weight.shape[1], decoder.lm_head.weight.shape[0]
    if weights["out.weight"].shape[1] != hidden or weights["slot"].numel() != vocab:
        raise InputError(
            f"lookahead head {str(path)!r} is for a decoder {weights['out.weight'].shape[1]} wide with "
            f"{weights['slot'].numel()} tokens, this one is {hidden} wide with {vocab}; allowed: a head trained on this model"
        )
    ids = tuple(int(i) for i in weights["ids"])
    width, inner = weights["embed.weight"].shape[1], weights["up.weight"].shape[0]
    head = LookaheadHead(hidden, vocab, ids, decoder.language_model.norm, width, inner)
    head.load_state_dict(weights, strict=False)  # the norm is the decoder's own
    return head.eval()


def with_lookahead(unit: ExportUnit, head: LookaheadHead) -> ExportUnit:
    """The decoder unit with the head inside: one more output, `lookahead`, after the cache's.

    Example:
        >>> with_lookahead(split.units["text_decoder"], head).output_names[-1]   # doctest: +SKIP
        'lookahead'
    """
    unit.module.lookahead = head  # a TextDecoder (read_head checked): its forward returns the proposals last
    axes = {**unit.dynamic_axes, OUTPUT: {0: "batch", 1: "seq"}}
    return replace(unit, output_names=(*unit.output_names, OUTPUT), dynamic_axes=axes, static_cache=None)
