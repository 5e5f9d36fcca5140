"""Lookahead drafting: the target's own decoder call proposes the token after next (`exporters/lookahead.py`).

A bundle exported with `--lookahead HEAD` has a decoder output `lookahead` [batch, seq]. At each position it
holds a proposal for the token after the one the target chooses there. Speculative decoding
(`speculative.py`) then needs no draft call: the proposal for the next check is in the last check's output,
at the row of the last token the target kept.

    target call [t, p]:  row 0 ─► target's token y0 (p accepted if p = y0), lookahead q0 (after y0)
                         row 1 ─► target's token y1,                        lookahead q1 (after y1)
    p accepted: emit p, y1; next check [y1, q1]     p rejected: emit y0; next check [y0, q0]

One token is proposed per call. Each round is one 2-token target call, against one 1-token call
without a draft. On the demo's int4 target it pays when the head is right more often than a
2-token call costs over a 1-token one (BENCHMARKS.md).

Example:
    >>> pipe = edgemfm.load("bundles/demo-int4-lookahead", draft="lookahead")   # doctest: +SKIP
    >>> tokens = list(pipe.generate_tokens("Describe it.", images=["a.png"]))  # doctest: +SKIP
    >>> pipe.speculation["accepted"] / pipe.speculation["proposed"]           # doctest: +SKIP
    0.45
"""

from __future__ import annotations

from collections.abc import Sequence

from edgemfm.errors import InputError

OUTPUT = "lookahead"  # the decoder output it reads (exporters/lookahead.OUTPUT; the runtime imports no exporter)


class LookaheadDraft:
    """The target's own lookahead head as its draft: `start` returns one answer's proposer.

    Example:
        >>> pipe = edgemfm.load("bundles/demo-int4-lookahead", draft="lookahead")   # doctest: +SKIP
        >>> type(pipe.draft).__name__                                              # doctest: +SKIP
        'LookaheadDraft'
    """

    k = 1  # the head proposes the token after next only

    def __init__(self, pipe):
        component = pipe.manifest.components[pipe.manifest.generation.decoder]
        if OUTPUT not in {o.name for o in component.outputs}:
            raise InputError(
                f"draft 'lookahead': the bundle {str(pipe.path)!r} has no lookahead head; allowed: a bundle exported "
                "with --lookahead HEAD (edgemfm lookahead trains one), a draft bundle or 'prompt'"
            )
        self.decoder = pipe.decoder

    def start(self, prompt: str, media: dict) -> _Lookahead:
        """The proposer for one answer: it reads the target's calls, the prompt's last one first."""
        return _Lookahead(self.decoder)


class _Lookahead:
    def __init__(self, decoder):
        self.decoder = decoder
        self.row = -1  # the row of the target's last call whose token was kept: the prompt's last position first

    def propose(self, pending: list[int], n: int, eos: Sequence[int]) -> list[int]:
        return [int(self.decoder.lookahead[self.row])]

    def catch_up(self, tokens: list[int]) -> None:
        """Nothing to read: the head saw every token in the target's own calls."""

    def forget(self, proposals: list[int], accepted: int) -> None:
        self.row = accepted  # the target's token after the accepted ones came from that row
