"""Speculative decoding: a draft bundle proposes k tokens, the target checks them all in one pass.

The target's decoder graph takes several tokens after a past cache, so checking k proposals
costs one target call instead of k. Greedy verification keeps the target's own choices: a
proposal is accepted while it equals the target's argmax at its position; the first mismatch
is replaced by the target's token (and when all k pass, the target's next token comes free).
Both caches then roll back the rejected entries by slicing (`KVCache.rollback`).

    draft:   t ─► p1 ─► p2 ─► p3 ─► p4          (k single-token draft calls)
    target:  [t, p1, p2, p3, p4] ─► argmax at each position, one call
             p1 ✓  p2 ✓  p3 ✗ ─► emit p1 p2 + target's token; drop p3 p4 from both caches

Leviathan et al., "Fast Inference from Transformers via Speculative Decoding" (arXiv 2211.17192).
Media given as iterators are collected first: both bundles encode every item.

Example:
    >>> pipe = edgemfm.load("bundles/big", draft="bundles/small")             # doctest: +SKIP
    >>> tokens = list(pipe.generate_tokens("Describe it.", images=["a.png"]))  # doctest: +SKIP
    >>> pipe.speculation                                                      # doctest: +SKIP
    {'proposed': 60, 'accepted': 41, 'target_calls': 16}
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from edgemfm.runtimes.decoding import greedy


def speculate(
    target, draft, prompt: str, media: dict[str, Iterable[Any]], eos: Sequence[int], limit: int, k: int
) -> Iterator[tuple[int, np.ndarray]]:
    """(token, the target's logits for it) pairs, identical in tokens to greedy decoding with `target` alone.

    Counts go to `target.speculation`: tokens proposed, accepted, and target decoder calls.
    """
    stats = target.speculation = {"proposed": 0, "accepted": 0, "target_calls": 0}
    media = {kind: list(items) for kind, items in media.items()}
    tcache, dcache = target.decoder.new_cache(), draft.decoder.new_cache()
    logits = target.prefill(tcache, prompt, media)
    draft.prefill(dcache, prompt, media)
    token, produced = greedy(logits), 0
    pending = [token]  # ids the draft has not seen yet; the last is the newest accepted token
    while produced < limit and token not in eos:
        yield token, logits
        produced += 1
        if produced == limit:
            return
        proposals = _propose(draft, dcache, pending, min(k, limit - produced), eos)
        checked = target.decoder.run(tcache, target.decoder.embed_ids([token, *proposals]))
        stats["target_calls"] += 1
        accepted = 0
        while accepted < len(proposals) and greedy(checked[accepted]) == proposals[accepted]:
            accepted += 1
        stats["proposed"] += len(proposals)
        stats["accepted"] += accepted
        for i in range(accepted):
            if proposals[i] in eos:
                return
            yield proposals[i], checked[i]
            produced += 1
            if produced == limit:
                return
        # The target cache holds token + every proposal; the draft's holds token + all but the last.
        tcache.rollback(len(proposals) - accepted)
        fed = len(proposals)
        dcache.rollback(fed - min(1 + accepted, fed))
        logits = checked[accepted]
        token = greedy(logits)
        pending = [proposals[-1], token] if accepted == len(proposals) and proposals else [token]


def _propose(draft, cache, pending: list[int], n: int, eos: Sequence[int]) -> list[int]:
    """Up to `n` greedy draft tokens after feeding `pending`; stops early at an end-of-sequence token."""
    proposals: list[int] = []
    ids = pending
    for _ in range(n):
        proposal = greedy(draft.decoder.run(cache, draft.decoder.embed_ids(ids))[-1])
        proposals.append(proposal)
        if proposal in eos:
            break
        ids = [proposal]
    return proposals
