"""Lookahead drafting: the target's own decoder call proposes the token after next (`exporters/lookahead.py`).

A bundle exported with `--lookahead HEAD` has a decoder output `lookahead` [batch, seq]. At each position it
holds a proposal for the token after the one the target chooses there. Speculative decoding
(`speculative.py`) then needs no draft call: the proposal for the next check is in the last check's output,
at the row of the last token the target kept.

    target call [t, p]:  row 0 ─► target's token y0 (p accepted if p = y0), lookahead q0 (after y0)
                         row 1 ─► target's token y1,                        lookahead q1 (after y1)
    p accepted: emit p, y1; next check [y1, q1]     p rejected: emit y0; next check [y0, q0]

The head proposes one token per call. Where the answer repeats itself, prompt lookup (`prompt_lookup.py`)
proposes first: the tokens that followed an earlier occurrence of the last few tokens of the prompt and answer,
as many as k by cost allows. Small models loop: in the demo int4 target's answers to its 12 held-out open
prompts, 54% of the tokens follow a bigram seen earlier in the answer and repeat what followed it there (93%
of the matches), where the head proposes 46% right. Together they need fewer target calls than either
(BENCHMARKS.md), and a lookup runs no call either.

Each round is one target call of 1 + k tokens, against one 1-token call without a draft. On the demo's
int4 target it pays when the proposals are right more often than a longer call costs over a 1-token one.

Example:
    >>> pipe = edgemfm.load("bundles/demo-int4-lookahead", draft="lookahead")   # doctest: +SKIP
    >>> tokens = list(pipe.generate_tokens("Describe it.", images=["a.png"]))  # doctest: +SKIP
    >>> pipe.speculation["accepted"] / pipe.speculation["proposed"]           # doctest: +SKIP
    0.45
"""

from __future__ import annotations

from collections.abc import Sequence

from edgemfm.errors import InputError
from edgemfm.runtimes.prompt_lookup import DRAFT_K, NGRAM, Lookup

OUTPUT = "lookahead"  # the decoder output it reads (exporters/lookahead.OUTPUT; the runtime imports no exporter)


class LookaheadDraft:
    """The target's own lookahead head as its draft, with prompt lookup first where `lookup`: `start` returns one
    answer's proposer.

    Example:
        >>> pipe = edgemfm.load("bundles/demo-int4-lookahead", draft="lookahead")   # doctest: +SKIP
        >>> type(pipe.draft).__name__, pipe.draft.k                                # doctest: +SKIP
        ('LookaheadDraft', 10)
    """

    def __init__(self, pipe, lookup: bool = True):
        component = pipe.manifest.components[pipe.manifest.generation.decoder]
        if OUTPUT not in {o.name for o in component.outputs}:
            raise InputError(
                f"draft 'lookahead': the bundle {str(pipe.path)!r} has no lookahead head; allowed: a bundle exported "
                "with --lookahead HEAD (edgemfm lookahead trains one), a draft bundle or 'prompt'"
            )
        self.decoder, self.tokenizer, self.lookup = pipe.decoder, pipe.tokenizer, lookup
        self.k = DRAFT_K if lookup else 1  # the head alone proposes one token a call

    def start(self, prompt: str, media: dict) -> _Lookahead:
        """The proposer for one answer: it reads the target's calls, the prompt's last one first."""
        history = self.tokenizer.encode(prompt, add_special_tokens=False).ids if self.lookup else None
        return _Lookahead(self.decoder, history)


class _Lookahead:
    """One answer's proposals: prompt lookup's over `history` (the prompt's ids, then the answer's) where it finds
    a match, else the head's at the row of the last token kept; without a history, the head's always."""

    def __init__(self, decoder, history: list[int] | None):
        self.decoder = decoder
        self.row = -1  # the row of the target's last call whose token was kept: the prompt's last position first
        self.lookup = None if history is None else Lookup(history, NGRAM)

    def propose(self, pending: list[int], n: int, eos: Sequence[int]) -> list[int]:
        found = self.lookup.propose(pending, n, eos) if self.lookup else []
        return found or [int(self.decoder.lookahead[self.row])]

    def catch_up(self, tokens: list[int]) -> None:
        """The head saw every token in the target's own calls; the lookup's history takes them."""
        if self.lookup:
            self.lookup.catch_up(tokens)

    def forget(self, proposals: list[int], accepted: int) -> None:
        if self.lookup:
            self.lookup.forget(proposals, accepted)
        self.row = accepted  # the target's token after the accepted ones came from that row
