"""Token choice (greedy, seeded sampling with temperature, top-k and top-p), stop strings, detokenization.

Example:
    >>> import numpy as np
    >>> greedy(np.array([0.1, 2.0, -1.0]))
    1
    >>> Sampler(temperature=0.8, top_k=2, seed=0)(np.array([0.1, 2.0, -1.0])) in (0, 1)
    True
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from edgemfm.arguments import SEED_MAX, number
from edgemfm.errors import InputError


def greedy(logits: np.ndarray) -> int:
    """The most likely next token (the first one on ties, as torch.argmax)."""
    return int(np.argmax(logits))


def suppress(logits: np.ndarray, tokens: Sequence[int]) -> np.ndarray:
    """`logits` with `tokens` made impossible (as transformers' SuppressTokensLogitsProcessor).

    Example:
        >>> suppress(np.array([0.1, 2.0, -1.0]), [1]).tolist()
        [0.1, -inf, -1.0]
    """
    if not tokens:
        return logits
    out = logits.copy()
    out[list(tokens)] = -np.inf
    return out


def logprob(logits: np.ndarray, token: int) -> float:
    """log softmax(logits)[token], without materializing the whole log-softmax."""
    top = logits.max()
    return float(logits[token] - top - np.log(np.exp(logits - top).sum()))


def nll(logits: np.ndarray, targets: Sequence[int]) -> float:
    """Summed negative log-likelihood of `targets` under `logits` [n, vocab] (log-softmax in float64).

    Example:
        >>> round(nll(np.zeros((2, 4)), [1, 3]), 4)   # two uniform guesses over 4 tokens: 2 ln 4
        2.7726
    """
    x = np.asarray(logits, np.float64)
    top = x.max(-1, keepdims=True)
    logp = x - top - np.log(np.exp(x - top).sum(-1, keepdims=True))
    return -float(logp[np.arange(len(targets)), targets].sum())


@dataclass
class Sampler:
    """Picks the next token: greedy at temperature 0, else seeded sampling after top-k and top-p.

    The filters follow transformers' TopKLogitsWarper / TopPLogitsWarper: top-k keeps the k most
    likely tokens, top-p the smallest set whose probability reaches p (at least one token).
    """

    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0  # 1: no limit
    seed: int | None = None  # the same seed gives the same tokens
    rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self):
        if not (isinstance(self.temperature, (int, float)) and np.isfinite(self.temperature) and self.temperature >= 0):
            raise InputError(
                f"temperature {self.temperature!r} is not allowed; allowed: 0 (greedy) or a positive number"
            )
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise InputError(f"top-k {self.top_k!r} is not allowed; allowed: 0 (no limit) or a positive integer")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise InputError(f"top-p {self.top_p!r} is not allowed; allowed: a number in (0, 1]")
        if self.seed is not None:
            number("seed", self.seed, low=0, high=SEED_MAX, integer=True)
        self.rng = np.random.default_rng(self.seed)

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """The distribution sampled from, after temperature, top-k and top-p (float64, sums to 1)."""
        scores = logits.astype(np.float64) / self.temperature
        if 0 < self.top_k < scores.size:
            kth = np.partition(scores, -self.top_k)[-self.top_k]
            scores = np.where(scores < kth, -np.inf, scores)
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        if self.top_p < 1:
            order = np.argsort(-probs, kind="stable")
            before = np.cumsum(probs[order]) - probs[order]  # mass of the more likely tokens
            probs[order[before >= self.top_p]] = 0.0
            probs /= probs.sum()
        return probs

    def __call__(self, logits: np.ndarray) -> int:
        if self.is_greedy:
            return greedy(logits)
        probs = self.probabilities(logits)
        return int(self.rng.choice(probs.size, p=probs))


def detokenize(tokenizer, ids: Iterable[int]) -> Iterator[str]:
    """Text pieces as tokens arrive, never splitting a multi-byte character.

    Decodes the whole sequence each time and yields what was added; a piece ending in an
    incomplete UTF-8 sequence (U+FFFD) waits for the next token.
    """
    seen: list[int] = []
    emitted = ""
    for token in ids:
        seen.append(token)
        text = tokenizer.decode(seen, skip_special_tokens=True)
        if text.endswith("\ufffd") or len(text) <= len(emitted):
            continue
        yield text[len(emitted) :]
        emitted = text


def stop_at(pieces: Iterable[str], stop: Sequence[str]) -> Iterator[str]:
    """Text pieces up to (not including) the first stop string; generation ends there.

    A piece that may begin a stop string is held back until the next one decides.

    Example:
        >>> "".join(stop_at(["Hel", "lo\\nUS", "ER: more"], ["\\nUSER:"]))
        'Hello'
    """
    if any(not s for s in stop):
        raise InputError("a stop string must not be empty; allowed: any non-empty text")
    if not stop:
        yield from pieces
        return
    held = ""
    longest = max(len(s) for s in stop)
    for piece in pieces:
        held += piece
        hits = [i for i in (held.find(s) for s in stop) if i >= 0]
        if hits:
            if min(hits):
                yield held[: min(hits)]
            return
        keep = longest - 1  # a stop string may straddle this piece and the next
        if len(held) > keep:
            out, held = held[: len(held) - keep], held[len(held) - keep :]
            if out:
                yield out
    if held:
        yield held
