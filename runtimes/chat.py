"""Multi-turn chat: one KV cache kept across turns, so a follow-up question prefills only its own text.

A conversation is the concatenation of its turns' token ids: turn 1 is the manifest's prompt
template with the tokenizer's special tokens (as `generate` uses it), then each answer, closed
by the end-of-sequence token, then the next turn's template without special tokens: the
manifest's `prompt.turn` where a text checkpoint's chat template gave one (exporters/chat_template.py:
what the template writes between an answer and the next), else `prompt.template` again:
`USER: <image>\\nWhat is it? ASSISTANT:` for the LLaVA-style models. The cache is the decoder's
own: it slides past `max_seq_len` keeping the sink entries across turns (a static pte cache by
feeding the kept rows again, `static_cache.py`, so the turn that slides counts them in `prefilled`).

    turn 1:  BOS USER: <image> q1 ASSISTANT: │ a1 a2 … an
    turn 2:  (an EOS, not yet in the cache)   USER: q2 ASSISTANT: │ b1 …   <- the only rows prefilled

Example:
    >>> session = pipe.chat()                                                     # doctest: +SKIP
    >>> "".join(session.ask("What is in the picture?", images=["cat.png"]))       # doctest: +SKIP
    'A cat on a mat.'
    >>> "".join(session.ask("What colour is the mat?")), session.prefilled        # doctest: +SKIP
    ('Red.', 12)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import chain
from typing import Any

from edgemfm.errors import EdgemfmError, InputError
from edgemfm.runtimes import streaming
from edgemfm.runtimes.decoding import Sampler, detokenize, suppress
from edgemfm.runtimes.media import grid_segments
from edgemfm.runtimes.positions import mrope_prompt


class ChatSession:
    """A conversation with one pipeline: `ask` answers a turn, `reset` forgets the conversation."""

    def __init__(self, pipe):
        cross = pipe.manifest.components[pipe.manifest.generation.decoder].cross_attention
        if cross is not None:
            raise InputError(
                f"this bundle transcribes one {cross.media} input per call and cannot chat; allowed: decoder-only bundles"
            )
        self.pipe = pipe
        self.reset()

    def reset(self) -> None:
        """Forget the conversation: an empty cache; the next turn is a first turn.

        Example:
            >>> session.reset(); session.turns  # doctest: +SKIP
            0
        """
        self.cache = self.pipe.decoder.new_cache()
        self.pending: list[int] = []  # conversation ids not in the cache yet: the answer's last token and its end
        self.turns = 0
        self.prefilled = 0  # token positions the latest turn prefilled (its prompt, media rows and `pending`)

    def ask(
        self,
        prompt: str,
        images: Iterable[Any] = (),
        audio: Iterable[Any] = (),
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> Iterator[str]:
        """Pieces of this turn's answer; the conversation so far stays in the cache.

        Example:
            >>> print("".join(session.ask("And the other one?")))  # doctest: +SKIP
        """
        tokens = self.ask_tokens(prompt, images, audio, max_new_tokens, Sampler(temperature, top_k, top_p, seed))
        return detokenize(self.pipe.tokenizer, tokens)

    def ask_tokens(
        self,
        prompt: str,
        images: Iterable[Any] = (),
        audio: Iterable[Any] = (),
        max_new_tokens: int | None = None,
        sampler: Sampler | None = None,
    ) -> Iterator[int]:
        """This turn's answer as token ids (greedy by default); the prompt is checked before the first is asked for.

        Example:
            >>> list(session.ask_tokens("Hi", max_new_tokens=3))  # doctest: +SKIP
            [85, 101, 33]
        """
        limit = self.pipe.manifest.generation.max_new_tokens if max_new_tokens is None else max_new_tokens
        if limit < 0:
            raise InputError(f"max_new_tokens {limit} is not allowed; allowed: 0 or more")
        media = {"image": images, "audio": audio}
        entries = self.pipe.plan(prompt, media, first_turn=self.turns == 0)
        if self.pipe.manifest.generation.positions == "mrope":
            entries = self._mrope(entries)
        return self._turn(entries, sampler or Sampler(), limit)

    def _mrope(self, entries: Iterator[streaming.Entry]) -> list[streaming.Entry]:
        # 3-D positions are laid out for the first prompt; later text-only turns continue after it.
        entries = list(entries)
        segments = grid_segments(entries)
        if self.turns == 0:
            self.cache.mrope = mrope_prompt(segments)
        elif any(not isinstance(s, int) for s in segments):
            raise InputError(
                "this bundle's 3-D positions take images in a chat's first turn only; allowed: reset() and ask again"
            )
        return entries

    def _turn(self, entries: Iterable[streaming.Entry], sampler: Sampler, limit: int) -> Iterator[int]:
        decoder, eos = self.pipe.decoder, self.pipe.manifest.tokenizer.eos_token_ids
        before = decoder.positions
        try:
            inputs = streaming.decoder_inputs(chain(self.pending, entries), decoder.embed_ids, self.pipe.encode)
            logits = decoder.prefill(self.cache, inputs)
        except EdgemfmError:
            self.reset()  # a half-prefilled turn leaves the cache unlike any conversation
            raise
        self.prefilled, self.pending, self.turns = decoder.positions - before, [], self.turns + 1
        unfed: list[int] = []  # the newest answer token, until the decoder has consumed it
        end = list(eos[:1])
        g = decoder.generation
        try:
            for i in range(limit):
                logits = suppress(logits, g.suppress_tokens + (g.begin_suppress_tokens if i == 0 else ()))
                token = sampler(logits)
                if token in eos:
                    end = [token]
                    break
                unfed = [token]
                yield token
                if i + 1 < limit:
                    logits = decoder.run(self.cache, decoder.embed_ids([token]))[-1]
                    unfed = []
        finally:
            # Also when the caller stops reading early: the answer so far, closed, is the conversation.
            self.pending = unfed + end
