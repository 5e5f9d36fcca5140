"""The decode loop: chunked prefill of decoder inputs, then one token at a time, the cache kept in place.

`Decoder` pairs the text decoder's session with the token embedding's and runs them on a
`KVCache`. Prefill takes decoder inputs as they come (text embeddings, an image's rows) and
feeds them in chunks of at most `prefill_chunk` rows, so the attention activation stays
bounded whatever the prompt's length; before each call the cache slides if the stream has
outgrown `max_seq_len` (a static cache's slide hands back the rows it keeps, fed again first).

Example:
    >>> decoder = Decoder(sessions["text_decoder"], sessions["token_embedding"], manifest, streaming)  # doctest: +SKIP
    >>> cache = decoder.new_cache()                                                                  # doctest: +SKIP
    >>> logits = decoder.prefill(cache, [decoder.embed_ids([1, 2, 3])])                              # doctest: +SKIP
    >>> list(decode(decoder, cache, logits, Sampler(), eos=(2,), limit=8))                           # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from edgemfm.manifest import Manifest, StreamingSettings
from edgemfm.runtimes.backend import Session
from edgemfm.runtimes.decoding import Sampler, greedy, suppress
from edgemfm.runtimes.kvcache import KVCache, SharedKVCache, in_place
from edgemfm.runtimes.static_cache import StaticKVCache

CACHES = {"dynamic": KVCache, "static": StaticKVCache}  # the manifest's kv_cache.kind -> what the loop drives


class Decoder:
    """The text decoder and token embedding of one bundle, run on a cache."""

    def __init__(self, decoder: Session, embedding: Session, manifest: Manifest, streaming: StreamingSettings):
        self.session, self.embedding = decoder, embedding
        component = manifest.components[manifest.generation.decoder]
        self.layout, self.dtype, self.streaming = component.kv_cache, component.dtype, streaming
        self.generation = manifest.generation
        subset = manifest.generation.head_subset
        self.columns = None if subset is None else (subset.vocab_size, np.asarray(subset.ids, dtype=np.int64))
        self.calls = self.positions = 0  # runs and token positions fed since load: what a chat turn saves is counted
        # a lookahead head's proposals [seq] from the last run, the token after next at each position (a bundle
        # exported with --lookahead: runtimes/lookahead.py); None without one
        self.lookahead: np.ndarray | None = None

    def new_cache(self) -> KVCache | StaticKVCache:
        s = self.streaming
        kind = SharedKVCache if in_place(self.layout, self.session.provider) else CACHES[self.layout.kind]
        return kind(self.layout, s.max_seq_len, s.sink_tokens, self.dtype)

    def embed_ids(self, ids: Sequence[int]) -> np.ndarray:
        """Decoder inputs [1, len(ids), hidden] for token ids."""
        return self.embedding.run({"input_ids": np.asarray([ids], dtype=np.int64)})["inputs_embeds"]

    def run(self, cache: KVCache | StaticKVCache, embeds: np.ndarray) -> np.ndarray:
        """Logits [seq, vocab] for `embeds` [1, seq, hidden] after the cache; the cache grows by seq."""
        seq, table = embeds.shape[1], self.layout.rotary_table
        if table and seq > table:  # one call's positions fit the kernel's cos/sin table
            # (the lookahead proposals are the last piece's: of a prefill, only its last row is read)
            return np.concatenate([self.run(cache, embeds[:, i : i + table]) for i in range(0, seq, table)])
        kept = cache.make_room(seq)
        if kept is not None:  # a static cache slid: its program is fed the kept rows again from position 0
            chunk = self.streaming.prefill_chunk
            for i in range(0, kept.shape[1], chunk):
                self._call(cache, kept[:, i : i + chunk])
        logits = self._call(cache, embeds)
        return logits if self.columns is None else self._whole_vocabulary(logits)

    def _call(self, cache: KVCache | StaticKVCache, embeds: np.ndarray) -> np.ndarray:
        seq = embeds.shape[1]
        out = cache.run(self.session, {"inputs_embeds": embeds, **cache.feeds(seq)})
        cache.advance(out, seq, embeds)
        self.calls += 1
        self.positions += seq
        self.lookahead = out["lookahead"][0] if "lookahead" in out else None
        return out["logits"][0]

    def _whole_vocabulary(self, logits: np.ndarray) -> np.ndarray:
        """A subset head's logits [seq, len(ids)] spread over the whole vocabulary, -inf elsewhere: a
        token the head never scores is never chosen, and callers see one width whatever the head."""
        size, ids = self.columns
        whole = np.full((logits.shape[0], size), -np.inf, dtype=logits.dtype)
        whole[:, ids] = logits
        return whole

    def prefill(self, cache: KVCache, pieces: Iterable[np.ndarray]) -> np.ndarray:
        """Feed decoder-input pieces in chunks of at most `prefill_chunk` rows; the last position's logits.

        Pieces are gathered until a chunk is full, so short text runs between images do not each
        cost a decoder call; a piece is dropped as soon as its rows are in the cache.
        """
        return self.prefill_rows(cache, pieces, 1)[-1]

    def prefill_rows(self, cache: KVCache, pieces: Iterable[np.ndarray], rows: int) -> np.ndarray:
        """`prefill`, keeping the logits of the last `rows` positions [rows, vocab]: a known continuation fed
        after the prompt is checked in the prompt's own calls (`decode_checked`)."""
        chunk, buffered, taken = self.streaming.prefill_chunk, [], 0
        tail = None

        def run() -> np.ndarray:  # the last `rows` logits so far: the continuation may straddle two chunks
            out = self.run(cache, np.concatenate(buffered, axis=1))
            return out[-rows:] if tail is None else np.concatenate([tail, out])[-rows:]

        for piece in pieces:
            while piece.shape[1]:
                take = min(chunk - taken, piece.shape[1])
                buffered.append(piece[:, :take])
                taken += take
                piece = piece[:, take:]
                if taken == chunk:
                    tail, buffered, taken = run(), [], 0
        if taken:
            tail = run()
        assert tail is not None and len(tail) == rows, "every prompt has at least the template's tokens"
        return tail


def decode(
    decoder: Decoder,
    cache: KVCache,
    logits: np.ndarray,
    sampler: Sampler,
    eos: Sequence[int],
    limit: int,
    start: int = 0,
) -> Iterator[tuple[int, np.ndarray]]:
    """(token, the logits it was chosen from) from the prefilled cache until an EOS token or `limit` tokens
    (`start` of them already given: `logits` choose the answer's token number `start`).

    The logits go out unchanged so a caller that wants the token's log-probability (the
    cascade's self-test) computes it, and one that does not pays nothing.
    """
    g = decoder.generation
    for i in range(start, limit):
        logits = suppress(logits, g.suppress_tokens + (g.begin_suppress_tokens if i == 0 else ()))
        token = sampler(logits)
        if token in eos:
            return
        yield token, logits
        if i + 1 < limit:
            logits = decoder.run(cache, decoder.embed_ids([token]))[-1]


def decode_checked(
    decoder: Decoder, cache: KVCache, checked: np.ndarray, proposal: Sequence[int], eos: Sequence[int], limit: int
) -> Iterator[tuple[int, np.ndarray]]:
    """Greedy `decode` after a prefill that fed `proposal` right after the prompt (`Decoder.prefill_rows`):
    `checked` holds the logits after the prompt and after each proposed token. The proposed tokens are the
    answer while they are the greedy choice; at the first that is not, the cache forgets the rest and the
    loop goes on from there. The tokens are greedy decoding's whatever the proposal; an answer that was
    proposed whole costs the prompt's calls alone (no single-token step finds its end).

    Example:
        >>> checked = decoder.prefill_rows(cache, [prompt_rows, decoder.embed_ids([7, 8])], 3)  # doctest: +SKIP
        >>> [t for t, _ in decode_checked(decoder, cache, checked, [7, 8], eos=(2,), limit=8)]  # doctest: +SKIP
        [7, 8]
    """
    assert len(checked) == len(proposal) + 1, "one row of logits after the prompt and after each proposed token"
    g, kept, i = decoder.generation, proposal[: max(limit - 1, 0)], 0
    while i < len(kept):
        logits = suppress(checked[i], g.suppress_tokens + (g.begin_suppress_tokens if i == 0 else ()))
        if kept[i] in eos or greedy(logits) != kept[i]:
            break
        yield kept[i], logits
        i += 1
    cache.rollback(len(proposal) - i)  # the proposal from here on is not the answer's
    yield from decode(decoder, cache, checked[i], Sampler(), eos, limit, start=i)
