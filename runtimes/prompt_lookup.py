"""Prompt-lookup drafting: the draft is the text that followed the last few tokens where they occurred before.

Answers that copy their input (a code edit, a quote, text read from an image) repeat long runs
of the prompt. The last `ngram` tokens of the prompt + answer so far are looked up in that same
history; the tokens that followed the match are proposed, and the target checks them in one call
as it checks a draft bundle's (`speculative.py`). No draft model, no cache: a miss proposes
nothing and the step is a plain one.

    history:  ... def f(a, b):\\n    return a + b ... rename f to g: def g(a, b
    last 2:                                                            (a, b
    match:        def f(a, b):  ─► propose  "):\\n    return a + b"

As transformers' prompt_lookup_num_tokens (PromptLookupCandidateGenerator): the longest n-gram
from `ngram` down to 1 that occurs earlier, its first occurrence.

Example:
    >>> lookup([5, 6, 7, 8, 9, 5, 6], n=3, ngram=2)
    [7, 8, 9]
    >>> lookup([1, 2, 3], n=3, ngram=2)
    []
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NGRAM = 3  # the longest suffix looked up: 3 tokens keep chance matches (", the") from proposing
DRAFT_K = 10  # most tokens proposed per target call (k chosen by cost), as transformers' prompt_lookup_num_tokens


def lookup(history: Sequence[int], n: int, ngram: int = NGRAM) -> list[int]:
    """Up to `n` tokens that followed the first earlier occurrence of the history's last m tokens (m = ngram..1).

    Example:
        >>> lookup([1, 2, 3, 4, 1, 2], n=2)
        [3, 4]
    """
    ids = np.asarray(history, np.int64)
    for m in range(min(ngram, len(ids) - 1), 0, -1):
        tail = ids[-m:]
        windows = np.lib.stride_tricks.sliding_window_view(ids[:-1], m)  # every m-gram that starts before the tail
        hits = np.flatnonzero((windows == tail).all(axis=1))
        if hits.size:
            return ids[hits[0] + m : hits[0] + m + n].tolist()
    return []


class PromptLookup:
    """A draft without a model: `start` returns one answer's proposer over its prompt's token ids.

    Example:
        >>> pipe = edgemfm.load("bundles/smollm2", draft="prompt")  # doctest: +SKIP
    """

    k = DRAFT_K

    def __init__(self, tokenizer, ngram: int = NGRAM):
        self.tokenizer, self.ngram = tokenizer, ngram

    def start(self, prompt: str, media: dict) -> Lookup:
        """The proposer for one answer: its history starts as the prompt's own text (no template, no media)."""
        return Lookup(self.tokenizer.encode(prompt, add_special_tokens=False).ids, self.ngram)


class Lookup:
    """One answer's proposer: its history is the prompt's ids, then every token the target accepted.

    Example:
        >>> Lookup([5, 6, 7, 5], ngram=2).propose([6], 2, eos=[])
        [7, 5]
    """

    def __init__(self, history: list[int], ngram: int):
        self.history, self.ngram = history, ngram

    def propose(self, pending: list[int], n: int, eos: Sequence[int]) -> list[int]:
        self.history += pending
        proposals = lookup(self.history, n, self.ngram)
        ends = [i for i, t in enumerate(proposals) if t in eos]
        return proposals[: ends[0] + 1] if ends else proposals

    def catch_up(self, tokens: list[int]) -> None:
        self.history += tokens

    def forget(self, proposals: list[int], accepted: int) -> None:
        """Proposals enter the history once accepted: the target's own tokens arrive as `pending`."""
        self.history += proposals[:accepted]
