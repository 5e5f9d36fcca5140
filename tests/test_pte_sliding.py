"""A pte decoder's static cache past its buffers (runtimes/static_cache.py): the window slides, keeping the sink
entries and the most recent ones, by feeding the kept rows again at positions 0..; after each slide the program
holds what a fresh program fed those rows holds, so its next logits are that program's.

One tiny Llama exported at fp32 with a 48-position cache, shared by the module (about a minute on 2 cores).
"""

from __future__ import annotations

import numpy as np
import pytest
from tiny_text import tiny_text_model

import edgemfm
from edgemfm.cli import main
from edgemfm.errors import InputError
from edgemfm.manifest import KVCache as KVLayout
from edgemfm.runtimes.static_cache import StaticKVCache

MAX_SEQ_LEN = 48
SINKS = 4  # pi5's streaming.sink_tokens


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    checkpoint = tiny_text_model("LlamaForCausalLM", tmp_path_factory.mktemp("models") / "tiny-llama")
    out = tmp_path_factory.mktemp("bundles") / "pte"
    argv = ["export", "--model", str(checkpoint), "--device", "pi5", "--format", "pte", "--precision", "fp32"]
    assert main([*argv, "--max-seq-len", str(MAX_SEQ_LEN), "--out", str(out)]) == 0
    return out


def _slide(kept: list[int], incoming: int) -> list[int]:
    """The ids a cache holding `kept` keeps before `incoming` more: all while they fit, else the sinks and half
    the recent ones that fit beside the incoming (StaticKVCache.KEPT_SHARE)."""
    if len(kept) + incoming <= MAX_SEQ_LEN:
        return kept
    recent = (MAX_SEQ_LEN - SINKS - incoming) // 2
    return kept[:SINKS] + kept[len(kept) - recent :]


def _fresh(bundle, ids: list[int]) -> np.ndarray:
    """The last logits of the program loaded anew and fed `ids` from position 0."""
    decoder = edgemfm.load(bundle).decoder
    return decoder.prefill(decoder.new_cache(), [decoder.embed_ids(ids)])


def _close(got: np.ndarray, expected: np.ndarray) -> None:
    assert float(np.abs(got - expected).max()) <= 1e-4 * max(1.0, float(np.abs(expected).max()))


def test_a_stream_past_twice_the_cache_slides_and_each_slide_equals_a_fresh_program_fed_the_kept_rows(bundle):
    pipe = edgemfm.load(bundle)
    decoder, cache = pipe.decoder, pipe.decoder.new_cache()
    kept = pipe.prompt_ids("Hello there")
    logits, tokens = decoder.prefill(cache, [decoder.embed_ids(kept)]), []
    for _ in range(3 * MAX_SEQ_LEN):
        tokens.append(int(np.argmax(logits)))
        slides = cache.slides
        kept = _slide(kept, 1) + tokens[-1:]
        logits = decoder.run(cache, decoder.embed_ids(tokens[-1:]))[-1]
        assert cache.length == len(kept)
        if cache.slides > slides:
            _close(logits, _fresh(bundle, kept))
    assert cache.slides >= 4 and cache.evicted > 2 * MAX_SEQ_LEN  # a slide per 23 tokens past the first 48
    assert pipe.stats().decoder_positions > 3 * MAX_SEQ_LEN  # the kept rows fed again count
    # the answer of the pipeline: the same steps, no refusal
    eos = pipe.manifest.tokenizer.eos_token_ids
    answer = list(edgemfm.load(bundle).generate_tokens("Hello there", max_new_tokens=3 * MAX_SEQ_LEN))
    ended = [i for i, t in enumerate(tokens) if t in eos]
    assert answer == tokens[: ended[0] if ended else None] and len(answer) > 2 * MAX_SEQ_LEN


def test_a_speculative_rollback_after_a_slide_keeps_the_accepted_rows(bundle):
    pipe = edgemfm.load(bundle)
    decoder, cache = pipe.decoder, pipe.decoder.new_cache()
    kept = pipe.prompt_ids("Hello there")
    logits = decoder.prefill(cache, [decoder.embed_ids(kept)])
    while len(kept) < MAX_SEQ_LEN - 2:
        kept.append(int(np.argmax(logits)))
        logits = decoder.run(cache, decoder.embed_ids(kept[-1:]))[-1]
    checked = [int(np.argmax(logits)), 7, 8, 9]  # a token and three proposals: past the cache, so the window slides
    decoder.run(cache, decoder.embed_ids(checked))
    cache.rollback(2)  # the target rejected the last two proposals
    assert cache.slides == 1
    kept = _slide(kept, len(checked)) + checked[:2] + [10]
    _close(decoder.run(cache, decoder.embed_ids([10]))[-1], _fresh(bundle, kept))


def test_speculative_decoding_streams_past_the_cache_and_agrees_until_the_first_slide(bundle):
    """Proposals of the same program (a draft of its own) are rejected only where the two caches slid at
    different tokens; the answer goes on past three windows."""
    plain = list(edgemfm.load(bundle).generate_tokens("Hello there", max_new_tokens=3 * MAX_SEQ_LEN))
    pipe = edgemfm.load(bundle, draft=bundle, draft_k=4)
    drafted = list(pipe.generate_tokens("Hello there", max_new_tokens=3 * MAX_SEQ_LEN))
    before = MAX_SEQ_LEN - len(pipe.prompt_ids("Hello there")) - 5  # no call of either has slid yet
    assert len(drafted) == len(plain) > 2 * MAX_SEQ_LEN and drafted[:before] == plain[:before]
    assert pipe.speculation["accepted"] > MAX_SEQ_LEN


def test_a_chat_past_the_cache_keeps_its_sinks_and_its_latest_turn(bundle):
    pipe = edgemfm.load(bundle)
    session = pipe.chat()
    first = pipe.prompt_ids("Hello there")
    answers = [list(session.ask_tokens("Hello there", max_new_tokens=12)) for _ in range(6)]
    assert session.turns == 6 and all(answers) and session.cache.slides >= 2
    cache, decoder = session.cache, pipe.decoder
    rows = cache.rows[: cache.length]
    np.testing.assert_array_equal(rows[:SINKS], decoder.embed_ids(first[:SINKS])[0])  # the conversation's start
    # the last answer's tokens, but its 12th (pending, fed with the next turn)
    latest = answers[-1][:11]
    np.testing.assert_array_equal(rows[-len(latest) :], decoder.embed_ids(latest)[0])
    session.reset()
    assert [list(session.ask_tokens("Hello there", max_new_tokens=12)) for _ in range(6)] == answers


def test_a_window_past_the_programs_buffers_is_one_line(bundle):
    with pytest.raises(InputError) as e:
        edgemfm.load(bundle, max_seq_len=MAX_SEQ_LEN + 1)
    assert "\n" not in str(e.value)
    assert f"max_seq_len {MAX_SEQ_LEN + 1} is past the decoder's static KV cache of {MAX_SEQ_LEN} positions" in str(
        e.value
    )
    with pytest.raises(InputError, match="sink_tokens"):
        edgemfm.load(bundle, sink_tokens=MAX_SEQ_LEN)


def test_a_smaller_window_slides_inside_the_programs_buffers(bundle):
    pipe = edgemfm.load(bundle, max_seq_len=24, prefill_chunk=16)
    tokens = list(pipe.generate_tokens("Hello there", max_new_tokens=40))
    fed = len(pipe.prompt_ids("Hello there")) + len(tokens) - 1
    assert len(tokens) == 40 and pipe.stats().decoder_positions > fed  # slid (kept rows fed again), never refused


def _layout(max_seq_len: int) -> KVLayout:
    return KVLayout(1, 1, 2, "", "", kind="static", max_seq_len=max_seq_len, position="input_pos")


def test_the_cache_hands_back_the_sinks_and_half_the_recent_rows_that_fit():
    cache = StaticKVCache(_layout(12), 12, 2)
    rows = np.arange(12, dtype=np.float32)[None, :, None]
    assert cache.make_room(12) is None
    cache.advance({}, 12, rows)
    kept = cache.make_room(1)
    assert kept[0, :, 0].tolist() == [0, 1, 8, 9, 10, 11]  # sinks 2, then (12 - 2 - 1) // 2 recent
    assert (cache.length, cache.position, cache.evicted, cache.slides) == (0, 0, 6, 1)
    assert cache.feeds(6)["input_pos"].tolist() == list(range(6))  # fed again from position 0


def test_a_static_cache_with_3d_positions_refuses_to_slide_in_one_line():
    cache = StaticKVCache(_layout(8), 8, 2)
    cache.mrope = (np.zeros((3, 4), np.int64), 0)
    cache.advance({}, 8, np.zeros((1, 8, 2), np.float32))
    with pytest.raises(InputError, match="M-RoPE") as e:
        cache.make_room(1)
    assert "\n" not in str(e.value) and "need 9 positions" in str(e.value)
