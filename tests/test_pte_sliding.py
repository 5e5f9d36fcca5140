"""A pte decoder's static cache past its buffers (runtimes/static_cache.py): the window slides, keeping the sink
entries and the most recent ones, by feeding the kept rows again at positions 0..; after each slide the program
holds what a fresh program fed those rows holds, so its next logits are that program's.

One tiny Llama exported at fp32 with a 48-position cache, shared by the module (about a minute on 2 cores); a tiny
Qwen2-VL (M-RoPE: 3-D positions beside the slots) with an image in its prompt under -m slow.
"""

from __future__ import annotations

import numpy as np
import pytest
from tiny_models import tiny_qwen2_vl
from tiny_text import tiny_text_model

import edgemfm
from edgemfm.cli import main
from edgemfm.errors import InputError
from edgemfm.manifest import KVCache as KVLayout
from edgemfm.runtimes.positions import decoder_positions, mrope_prompt
from edgemfm.runtimes.static_cache import StaticKVCache

MAX_SEQ_LEN = 48
SINKS = 4  # pi5's streaming.sink_tokens
QWEN_MAX = 96  # Qwen2-VL's cache: less than its prompt with the image (135 rows), then a slide every 45 tokens
PROMPT = "Describe the picture."


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


def _mrope_cache(max_len: int, sinks: int) -> StaticKVCache:
    """A cache whose stream starts with a prompt of 2 text rows, a 2 x 3 image and 1 text row (M-RoPE)."""
    cache = StaticKVCache(_layout(max_len), max_len, sinks)
    cache.mrope = mrope_prompt(
        [2, (1, 2, 3), 1]
    )  # t, h, w: [0 1 2 2 2 2 2 2 5] [0 1 2 2 2 3 3 3 5] [0 1 2 3 4 2 3 4 5]
    return cache


def test_a_slide_feeds_the_kept_3d_positions_again_the_recent_ones_moved_down_to_follow_the_sinks():
    cache = _mrope_cache(12, 1)
    cache.advance({}, 9, np.zeros((1, 9, 2), np.float32))  # the prompt
    assert cache.make_room(4).shape == (1, 4, 2)  # the sink and (12 - 1 - 4) // 2 recent rows: the image's last two
    again = cache.feeds(4)["position_ids"][:, 0].tolist()
    assert again == [[0, 1, 1, 4], [0, 2, 2, 4], [0, 2, 3, 4]]  # (2 3 2) (2 3 3) (5 5 5) each moved down by 1
    cache.advance({}, 4, np.zeros((1, 4, 2), np.float32))
    # the stream goes on after the kept text row, moved down by the same 1 (the prompt's next position is 6)
    assert cache.feeds(2)["position_ids"][:, 0].tolist() == [[5, 6]] * 3
    assert cache.feeds(2)["input_pos"].tolist() == [4, 5]


def test_a_text_stream_with_3d_positions_slides_to_the_compact_positions_of_a_cache_without():
    cache = StaticKVCache(_layout(12), 12, 2)
    cache.mrope = mrope_prompt([5])
    for _ in range(40):
        kept = cache.make_room(1)
        if kept is not None:  # fed again at 0..: each row's three positions are its slot
            assert cache.feeds(kept.shape[1])["position_ids"][:, 0].tolist() == [list(range(kept.shape[1]))] * 3
            cache.advance({}, kept.shape[1], kept)
        assert cache.feeds(1)["position_ids"][:, 0].tolist() == [cache.feeds(1)["input_pos"].tolist()] * 3
        cache.advance({}, 1, np.zeros((1, 1, 2), np.float32))
    assert cache.slides >= 4
    cache.rollback(2)  # rejected proposals: the next rows take their positions
    assert cache.feeds(1)["position_ids"][:, 0, 0].tolist() == [cache.length] * 3


@pytest.mark.slow
def test_qwen2_vl_past_its_buffers_with_an_image_slides_and_equals_a_fresh_program_at_the_same_positions(
    tmp_path_factory, picture
):
    """M-RoPE: after each slide the logits are a fresh program's fed the kept rows at the kept 3-D positions
    (the sinks' unchanged, the recent rows' moved down to follow them; later rows moved as much)."""
    checkpoint = tiny_qwen2_vl(tmp_path_factory.mktemp("models") / "tiny-qwen2-vl", seed=1)
    bundle = tmp_path_factory.mktemp("bundles") / "qwen2-vl-pte"
    argv = ["export", "--model", str(checkpoint), "--device", "pi5", "--format", "pte", "--precision", "fp32"]
    assert main([*argv, "--max-seq-len", str(QWEN_MAX), "--out", str(bundle)]) == 0
    mrope_stream_past_the_cache(bundle, picture)


def mrope_stream_past_the_cache(bundle, picture) -> None:
    pipe = edgemfm.load(bundle)
    decoder, cache = pipe.decoder, pipe.decoder.new_cache()
    media, cache.fixed = pipe.attend({"image": [picture]})
    prompt = np.concatenate(list(pipe._inputs(cache, PROMPT, media)), axis=1)[0]  # sets the prompt's 3-D positions
    assert len(prompt) > QWEN_MAX  # the prompt itself slides, its image's rows kept (about 55 of its 135 rows)
    held, chunk, tokens = _Held(cache.mrope), decoder.streaming.prefill_chunk, []

    def call(rows: np.ndarray) -> np.ndarray:
        slid = held.feed(rows)
        logits = decoder.run(cache, rows[None])[-1]
        assert cache.slides == held.slides and cache.length == len(held.rows)
        if slid:
            _close(logits, _fresh_at(bundle, np.stack(held.rows), np.stack(held.positions)))
        return logits

    for i in range(0, len(prompt), chunk):
        logits = call(prompt[i : i + chunk])
    for _ in range(3 * QWEN_MAX):
        tokens.append(int(np.argmax(logits)))
        logits = call(decoder.embed_ids(tokens[-1:])[0])
    assert held.slides >= 5 and held.image_kept > 0  # an image's rows were among the kept ones
    eos = pipe.manifest.tokenizer.eos_token_ids
    answer = list(edgemfm.load(bundle).generate_tokens(PROMPT, images=[picture], max_new_tokens=3 * QWEN_MAX))
    ended = [i for i, t in enumerate(tokens) if t in eos]
    assert answer == tokens[: ended[0] if ended else None]


class _Held:
    """The rule, written out: the rows [hidden] and 3-D positions [3] a cache of QWEN_MAX holds after each call. A
    slide keeps the sinks as they are and half the recent rows that fit, moved down to follow the sinks; the
    stream's later positions move down as much."""

    def __init__(self, mrope: tuple[np.ndarray, int]):
        self.mrope, self.rows, self.positions = mrope, [], []
        self.stream = self.moved = self.slides = self.image_kept = 0

    def feed(self, rows: np.ndarray) -> bool:
        slid = len(self.rows) + len(rows) > QWEN_MAX
        if slid:
            recent = (QWEN_MAX - SINKS - len(rows)) // 2
            tail = np.stack(self.positions[len(self.positions) - recent :])
            down = int(tail.min()) - (int(np.max(self.positions[:SINKS])) + 1)
            self.rows = self.rows[:SINKS] + self.rows[len(self.rows) - recent :]
            self.positions = self.positions[:SINKS] + list(tail - down)
            self.moved, self.slides = self.moved + down, self.slides + 1
            self.image_kept = max(self.image_kept, sum(len(set(p.tolist())) > 1 for p in self.positions))
        fed = decoder_positions(self.stream, len(rows), self.mrope)[:, 0] - self.moved
        self.rows += list(rows)
        self.positions += list(fed.T)
        self.stream += len(rows)
        return slid


def _fresh_at(bundle, rows: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The last logits of the program loaded anew and fed `rows` [n, hidden] at slots 0.. and M-RoPE `positions` [n, 3]."""
    decoder = edgemfm.load(bundle).decoder
    chunk, logits = decoder.streaming.prefill_chunk, None
    for i in range(0, len(rows), chunk):
        feeds = {
            "inputs_embeds": rows[None, i : i + chunk],
            "input_pos": np.arange(i, min(i + chunk, len(rows)), dtype=np.int64),
            "position_ids": np.ascontiguousarray(positions[i : i + chunk].T[:, None]).astype(np.int64),
        }
        logits = decoder.session.run(feeds)["logits"][0, -1]
    return logits
