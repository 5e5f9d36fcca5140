"""Speculative decoding: a draft proposes up to k tokens, the target checks them all in one pass.

The target's decoder graph takes several tokens after a past cache, so checking k proposals
costs one target call instead of k. Greedy verification keeps the target's own choices: a
proposal is accepted while it equals the target's argmax at its position; the first mismatch
is replaced by the target's token (and when all k pass, the target's next token comes free).
The target's cache rolls back the rejected entries by slicing (`KVCache.rollback`).

    draft:   t ─► p1 ─► p2 ─► p3 ─► p4          (k single-token draft calls)
    target:  [t, p1, p2, p3, p4] ─► argmax at each position, one call
             p1 ✓  p2 ✓  p3 ✗ ─► emit p1 p2 + target's token; drop p3 p4 from both caches

The draft is a small bundle (`BundleDraft`) or an n-gram lookup in the prompt (`prompt_lookup.py`).
k is chosen before each target call from measured costs (`Costs`): the seconds of a draft
proposal, of a target call by the tokens it checks, and the acceptance rate so far; it pays to
propose fewer tokens, or none, when the draft is slow or often wrong. A `k` given at load is
used as is. Leviathan et al., "Fast Inference from Transformers via Speculative Decoding"
(arXiv 2211.17192). Media given as iterators are collected first: a draft bundle encodes every item too.

Example:
    >>> pipe = edgemfm.load("bundles/big", draft="bundles/small")             # doctest: +SKIP
    >>> tokens = list(pipe.generate_tokens("Describe it.", images=["a.png"]))  # doctest: +SKIP
    >>> pipe.speculation["accepted"], pipe.speculation["target_calls"]         # doctest: +SKIP
    (41, 16)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from edgemfm.runtimes.decoding import greedy


class Proposer(Protocol):
    """One answer's draft state."""

    def propose(self, pending: list[int], n: int, eos: Sequence[int]) -> list[int]:
        """Up to `n` proposals after `pending`: the target's own tokens since the last call (accepted
        proposals are not repeated there)."""

    def forget(self, proposals: list[int], accepted: int) -> None:
        """The target accepted the first `accepted` of `proposals`: drop what followed them."""

    def catch_up(self, tokens: list[int]) -> None:
        """Read the target's `tokens` from steps where nothing was proposed, before the next proposals."""


class BundleDraft:
    """A draft bundle: greedy single-token steps on its own KV cache.

    Example:
        >>> pipe = edgemfm.load("bundles/demo-fp32", draft="bundles/demo-int8")  # doctest: +SKIP
        >>> type(pipe.draft).__name__                                            # doctest: +SKIP
        'BundleDraft'
    """

    k = 8  # most tokens proposed per target call when k is chosen from measured costs

    def __init__(self, pipe):
        self.pipe = pipe

    def start(self, prompt: str, media: dict[str, list]) -> _BundleProposer:
        """One answer's proposer: the draft's own cache, prefilled with the prompt and its media."""
        cache = self.pipe.decoder.new_cache()
        media, cache.fixed = self.pipe.attend(media)
        self.pipe.prefill(cache, prompt, media)
        return _BundleProposer(self.pipe.decoder, cache)


class _BundleProposer:
    def __init__(self, decoder, cache):
        self.decoder, self.cache = decoder, cache
        self.unfed: list[int] = []  # an accepted last proposal: proposed, never fed to the draft

    def propose(self, pending: list[int], n: int, eos: Sequence[int]) -> list[int]:
        proposals: list[int] = []
        ids, self.unfed = self.unfed + pending, []
        for _ in range(n):
            proposal = greedy(self.decoder.run(self.cache, self.decoder.embed_ids(ids))[-1])
            proposals.append(proposal)
            if proposal in eos:
                break
            ids = [proposal]
        return proposals

    def catch_up(self, tokens: list[int]) -> None:
        ids, self.unfed = self.unfed + tokens, []
        self.decoder.run(self.cache, self.decoder.embed_ids(ids))

    def forget(self, proposals: list[int], accepted: int) -> None:
        # The cache holds every proposal but the last; keep the accepted ones.
        self.cache.rollback(max(len(proposals) - 1 - accepted, 0))
        if proposals and accepted == len(proposals):
            self.unfed = [proposals[-1]]


class Costs:
    """Measured seconds of draft proposals and target calls, and the acceptance so far: the k that pays.

    With a first proposal accepted at a rate f and each one after an accepted one at a rate a,
    proposing k tokens yields 1 + f (1 + a + ... + a^(k-1)) tokens per target call (the target's own
    token comes free) for k draft proposals and one call checking k + 1 tokens; `choose` takes the
    k with the most tokens per second. The two rates differ where a draft mixes sources: the demo's
    lookahead head proposes one token, right 45% of the time, and prompt lookup a run of them where
    the answer loops, where each one after the first is nearly always right. One pooled rate
    (0.63) kept k at 3 there, and k = 4 ran 11% faster; with the two (0.53 and 0.85) k by cost
    takes 4 and 5 (15 interleaved repeats each). Seconds per target call are
    kept by tokens checked (a moving average) and interpolated between measured sizes. Seconds are
    the process's CPU time: on a shared device the wall clock measures the neighbours, while
    the ratio of draft to target work is what decides k.

    Example:
        >>> c = Costs(); c.target.update({1: 0.045, 5: 0.054}); c.draft = 0.019
        >>> for accepted in (4, 4, 2, 4, 0, 4, 1, 4, 3, 0): c.record(4, accepted)  # 10 rounds of 4 proposals
        >>> c.first, c.after, c.choose(8)
        ([10, 8], [21, 18], 2)
        >>> c.draft = 0.060; c.choose(8)    # a draft dearer than the target never pays
        0
    """

    SMOOTHING = 0.2  # weight of the newest measurement: follows a changing load within ~5 calls
    PROBE_EVERY = 16  # plain steps in a row before the draft is tried (and measured) again
    # A probe proposes one token: it re-measures the draft's cost and its first token's acceptance for
    # one draft step and a 2-token check. Probing with the most (8 steps and a 9-token check, ~6 plain
    # steps' time) cost a draft that never pays ~20% of the answer's time (measured at commit 4073bce).
    PROBE_K = 1

    def __init__(self):
        self.target: dict[int, float] = {}  # tokens checked -> seconds per target call
        self.draft: float | None = None  # seconds per draft proposal
        self.first = [0, 0]  # rounds that proposed, and those whose first proposal was accepted
        self.after = [0, 0]  # proposals after an accepted one, and those accepted
        self.plain = 0  # target calls in a row with nothing proposed
        self.proposing = 0  # target calls in a row with proposals

    def observe(self, kind: str, tokens: int, seconds: float) -> None:
        """Fold one measured call in: `kind` "target" (checking `tokens`) or "draft" (`tokens` proposals)."""
        if kind == "draft":
            per = seconds / tokens
            self.draft = per if self.draft is None else self.draft + self.SMOOTHING * (per - self.draft)
        else:
            old = self.target.get(tokens)
            self.target[tokens] = seconds if old is None else old + self.SMOOTHING * (seconds - old)

    def record(self, proposed: int, accepted: int) -> None:
        """Fold one round in: `proposed` tokens checked, the first `accepted` of them kept."""
        if proposed:
            self.first[0] += 1
            self.first[1] += accepted > 0
            self.after[0] += min(accepted, proposed - 1)
            self.after[1] += max(accepted - 1, 0)

    def choose(self, most: int) -> int:
        """The k in 0..most with the most tokens per second; unmeasured costs are measured first."""
        if 1 not in self.target:
            return 0  # one plain step: the cost of checking one token
        if self.draft is None or max(self.target) == 1:
            return most
        first, after = ((hits + 1) / (n + 2) for n, hits in (self.first, self.after))  # Laplace: no rate of 0 or 1
        gains = 1 + first * np.cumsum([0.0, *after ** np.arange(most)])  # expected tokens per call for k = 0..most
        seconds = [k * self.draft + self.check_seconds(k + 1) for k in range(most + 1)]
        best = int(np.argmax(gains / np.asarray(seconds)))
        # A draft once measured slow (a loaded moment) is measured again now and then, not dropped for good;
        # and a plain step is too: its cost is measured only on plain steps, and the first ones (cold caches,
        # a loaded moment) kept a demo int4 draft proposing at 0.86x the target alone (BENCHMARKS.md).
        self.plain = self.plain + 1 if best == 0 else 0
        self.proposing = self.proposing + 1 if best else 0
        if self.plain > self.PROBE_EVERY:
            self.plain, best = 0, min(self.PROBE_K, most)
        if self.proposing > self.PROBE_EVERY:
            self.proposing, best = 0, 0
        return best

    def check_seconds(self, tokens: int) -> float:
        """A target call checking `tokens`: measured, else linear between (or beyond) the nearest measured sizes."""
        if tokens in self.target:
            return self.target[tokens]
        sizes = sorted(self.target)
        low = max([s for s in sizes if s < tokens], default=sizes[0])
        high = min([s for s in sizes if s > tokens], default=sizes[-1])
        if low == high:
            low, high = sizes[0], sizes[-1]
        slope = (self.target[high] - self.target[low]) / (high - low)
        return self.target[low] + slope * (tokens - low)

    def summary(self) -> dict[str, Any]:
        """Milliseconds of a draft proposal and of a target call by tokens checked."""
        return {
            "draft_ms": None if self.draft is None else round(self.draft * 1e3, 2),
            "target_ms": {n: round(s * 1e3, 2) for n, s in sorted(self.target.items())},
        }


def speculate(
    target, draft, prompt: str, media: dict[str, Iterable[Any]], eos: Sequence[int], limit: int, k: int | None
) -> Iterator[tuple[int, np.ndarray]]:
    """(token, the target's logits for it) pairs, identical in tokens to greedy decoding with `target` alone.

    `k` tokens are proposed per target call, or with None the k that pays (`Costs.choose`, at most
    `draft.k`). Counts go to `target.speculation`: tokens proposed, accepted, target decoder calls,
    the k of each call, and the measured costs (`Costs.summary`). The costs persist on `target`
    between answers (`target.speculation_costs`), so later answers start from measured values.
    """
    stats = target.speculation = {"proposed": 0, "accepted": 0, "target_calls": 0, "k": []}
    media = {kind: list(items) for kind, items in media.items()}
    cache = target.decoder.new_cache()
    rest, cache.fixed = target.attend(media)
    logits = target.prefill(cache, prompt, rest)
    proposer = draft.start(prompt, media)
    try:
        choose = (lambda: k) if k else (lambda: target.speculation_costs.choose(draft.k))
        yield from _verify(target, proposer, cache, logits, eos, limit, choose, stats)
    finally:
        stats |= target.speculation_costs.summary()


def _verify(target, proposer: Proposer, cache, logits, eos, limit: int, choose: Callable[[], int], stats: dict):
    """The loop of `speculate` after both prefills: propose, check in one target call, emit, roll back."""
    costs: Costs = target.speculation_costs
    token, produced = greedy(logits), 0
    pending: list[int] = []  # the target's own tokens the draft has not seen yet
    while produced < limit and token not in eos:
        yield token, logits
        produced += 1
        if produced == limit:
            return
        pending.append(token)
        n, proposals = min(choose(), limit - produced), []
        if n:
            if len(pending) > 1:
                # Plain steps since the draft last ran: it reads them first, a cost of having fallen behind
                # (once per return), not of proposing. Timed with the proposals, a draft probed after 16 plain
                # steps measured 4.1 ms a proposal for ~1.0 and was never chosen again (BENCHMARKS.md, the demo's int4 draft).
                proposer.catch_up(pending[:-1])
                pending = pending[-1:]
            start = time.process_time()
            proposals, pending = proposer.propose(pending, n, eos), []
            costs.observe("draft", max(len(proposals), 1), time.process_time() - start)
        start = time.process_time()
        checked = target.decoder.run(cache, target.decoder.embed_ids([token, *proposals]))
        costs.observe("target", 1 + len(proposals), time.process_time() - start)
        accepted = 0
        while accepted < len(proposals) and greedy(checked[accepted]) == proposals[accepted]:
            accepted += 1
        for key, value in (("target_calls", 1), ("proposed", len(proposals)), ("accepted", accepted)):
            stats[key] += value
        stats["k"].append(n)
        costs.record(len(proposals), accepted)
        for i in range(accepted):
            if proposals[i] in eos:
                return
            yield proposals[i], checked[i]
            produced += 1
            if produced == limit:
                return
        cache.rollback(len(proposals) - accepted)
        proposer.forget(proposals, accepted)
        logits = checked[accepted]
        token = greedy(logits)
