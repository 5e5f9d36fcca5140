"""Token choice and incremental detokenization for the generation loop.

Example:
    >>> import numpy as np
    >>> greedy(np.array([0.1, 2.0, -1.0]))
    1
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np


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
