"""The cascade's self-tests: cheap scores of the small bundle's answer, read off the logits its decode loop already has.

Each score is higher when the small bundle is surer of its answer; the cascade escalates a question
whose score falls below a threshold calibrated on held-out questions (`cascade.calibrate`). None of
them costs a model call:

    mean_logprob  the answer's mean token log-probability
    min_logprob   its least sure token's log-probability (one unsure word in a sure answer)
    first_margin  the first token's log-probability minus the best other token's: how clearly the
                  answer's first word beat the runner-up (the demo's answers are one word)

An empty answer scores -inf on every test, so it always escalates.

Example:
    >>> import numpy as np
    >>> tokens, s = score([(0, np.array([2.0, 0.0])), (1, np.array([0.0, 1.0]))])
    >>> tokens, round(s.first_margin, 2), round(s.min_logprob, 2)
    ([0, 1], 2.0, -0.31)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from edgemfm.errors import InputError
from edgemfm.runtimes.decoding import logprob


@dataclass(frozen=True)
class Scores:
    """Every self-test's score of one answer (higher: surer)."""

    mean_logprob: float
    min_logprob: float
    first_margin: float


TESTS = ("mean_logprob", "min_logprob", "first_margin")  # the names a calibration file or --self-test may give
# by how soon an answer that fails is known to: first_margin at its first token, min_logprob at its first token below
# the threshold, mean_logprob at its end. The cascade stops the small bundle there; the calibration prefers the earlier
EARLIEST = ("first_margin", "min_logprob", "mean_logprob")


def check_test(name: str) -> str:
    """`name` if it is a self-test, else an InputError naming the allowed ones.

    Example:
        >>> check_test("first_margin")
        'first_margin'
    """
    if name not in TESTS:
        raise InputError(f"unknown self-test {name!r}; allowed: {', '.join(TESTS)}")
    return name


def fails_at(test: str, threshold: float, step: int, token: int, logits: np.ndarray) -> bool:
    """Whether the answer's step number `step` (0: its first token) fails `test` below `threshold` whatever
    tokens follow it: the cascade escalates there without decoding the rest.

    Example:
        >>> fails_at("min_logprob", -1.0, 3, 1, np.array([2.0, 0.0]))  # log-probability -2.13
        True
    """
    if test == "first_margin":
        return step == 0 and _margin(logits, token) < threshold
    return test == "min_logprob" and logprob(logits, token) < threshold


def score(steps: Iterable[tuple[int, np.ndarray]]) -> tuple[list[int], Scores]:
    """The answer's tokens and its scores from the decode loop's (token, logits) steps; no logits are kept.

    Example:
        >>> score([])[1].mean_logprob
        -inf
    """
    tokens: list[int] = []
    logprobs: list[float] = []
    margin = -math.inf
    for token, logits in steps:
        if not tokens:
            margin = _margin(logits, token)
        tokens.append(token)
        logprobs.append(logprob(logits, token))
    if not tokens:
        return tokens, Scores(-math.inf, -math.inf, -math.inf)
    return tokens, Scores(sum(logprobs) / len(logprobs), min(logprobs), margin)


def _margin(logits: np.ndarray, token: int) -> float:
    """logits[token] minus the largest other logit: a log-probability gap (the softmax's normalizer cancels)."""
    if logits.size < 2:
        return math.inf  # one token to choose from: nothing else could have been said
    others = np.delete(logits, token)
    return float(logits[token] - others.max())
