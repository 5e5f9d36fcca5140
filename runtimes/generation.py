"""The decode loop: chunked prefill of decoder inputs, then one token at a time, the cache kept in place.

`Decoder` pairs the text decoder's session with the token embedding's and runs them on a
`KVCache`. Prefill takes decoder inputs as they come (text embeddings, an image's rows) and
feeds them in chunks of at most `prefill_chunk` rows, so the attention activation stays
bounded whatever the prompt's length; before each call the cache slides if the stream has
outgrown `max_seq_len`.

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
from edgemfm.runtimes.decoding import Sampler, suppress
from edgemfm.runtimes.kvcache import KVCache
from edgemfm.runtimes.static_cache import StaticKVCache

CACHES = {"dynamic": KVCache, "static": StaticKVCache}  # the manifest's kv_cache.kind -> what the loop drives


class Decoder:
    """The text decoder and token embedding of one bundle, run on a cache."""

    def __init__(self, decoder: Session, embedding: Session, manifest: Manifest, streaming: StreamingSettings):
        self.session, self.embedding = decoder, embedding
        component = manifest.components[manifest.generation.decoder]
        self.layout, self.dtype, self.streaming = component.kv_cache, component.dtype, streaming
        self.generation = manifest.generation
        self.calls = self.positions = 0  # runs and token positions fed since load: what a chat turn saves is counted

    def new_cache(self) -> KVCache | StaticKVCache:
        s = self.streaming
        return CACHES[self.layout.kind](self.layout, s.max_seq_len, s.sink_tokens, self.dtype)

    def embed_ids(self, ids: Sequence[int]) -> np.ndarray:
        """Decoder inputs [1, len(ids), hidden] for token ids."""
        return self.embedding.run({"input_ids": np.asarray([ids], dtype=np.int64)})["inputs_embeds"]

    def run(self, cache: KVCache, embeds: np.ndarray) -> np.ndarray:
        """Logits [seq, vocab] for `embeds` [1, seq, hidden] after the cache; the cache grows by seq."""
        seq, table = embeds.shape[1], self.layout.rotary_table
        if table and seq > table:  # one call's positions fit the kernel's cos/sin table
            return np.concatenate([self.run(cache, embeds[:, i : i + table]) for i in range(0, seq, table)])
        cache.make_room(seq)
        out = self.session.run({"inputs_embeds": embeds, **cache.feeds(seq)})
        cache.advance(out, seq)
        self.calls += 1
        self.positions += seq
        return out["logits"][0]

    def prefill(self, cache: KVCache, pieces: Iterable[np.ndarray]) -> np.ndarray:
        """Feed decoder-input pieces in chunks of at most `prefill_chunk` rows; the last position's logits.

        Pieces are gathered until a chunk is full, so short text runs between images do not each
        cost a decoder call; a piece is dropped as soon as its rows are in the cache.
        """
        chunk, buffered, rows = self.streaming.prefill_chunk, [], 0
        logits = None
        for piece in pieces:
            while piece.shape[1]:
                take = min(chunk - rows, piece.shape[1])
                buffered.append(piece[:, :take])
                rows += take
                piece = piece[:, take:]
                if rows == chunk:
                    logits = self.run(cache, np.concatenate(buffered, axis=1))[-1]
                    buffered, rows = [], 0
        if rows:
            logits = self.run(cache, np.concatenate(buffered, axis=1))[-1]
        assert logits is not None, "every prompt has at least the template's tokens"
        return logits


def decode(
    decoder: Decoder, cache: KVCache, logits: np.ndarray, sampler: Sampler, eos: Sequence[int], limit: int
) -> Iterator[tuple[int, np.ndarray]]:
    """(token, the logits it was chosen from) from the prefilled cache until an EOS token or `limit` tokens.

    The logits go out unchanged so a caller that wants the token's log-probability (the
    cascade's self-test) computes it, and one that does not pays nothing.
    """
    g = decoder.generation
    for i in range(limit):
        logits = suppress(logits, g.suppress_tokens + (g.begin_suppress_tokens if i == 0 else ()))
        token = sampler(logits)
        if token in eos:
            return
        yield token, logits
        if i + 1 < limit:
            logits = decoder.run(cache, decoder.embed_ids([token]))[-1]
