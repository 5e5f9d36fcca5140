"""The encoder-output cache and multi-turn chat sessions, on the placeholder bundle."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import edgemfm
from edgemfm.cli import main
from edgemfm.errors import MemoryBudgetError
from edgemfm.runtimes import budget, streaming
from edgemfm.runtimes.decoding import Sampler
from edgemfm.runtimes.encoder_cache import EncoderCache
from edgemfm.runtimes.generation import decode

QUESTION = "What is in the picture?"
ROWS = 49  # the placeholder's vision rows per image


def pictures(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def pipe(default_bundle):
    return edgemfm.load(default_bundle)


def test_the_same_picture_encoded_again_is_a_hit_with_equal_rows(pipe, picture):
    before = pipe.stats().encoder_cache
    first = pipe.encode("image", picture)
    again = pipe.encode("image", Image.open(picture))  # the same content, read another way
    after = pipe.stats().encoder_cache
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 1)
    assert np.array_equal(first, again) and first.shape == (1, ROWS, 192)
    assert after.entries >= 1 and after.bytes >= first.nbytes and not again.flags.writeable


def test_the_cache_evicts_the_least_recently_used_beyond_its_bound(default_bundle):
    item = ROWS * 192 * 4
    pipe = edgemfm.load(default_bundle, encoder_cache_mb=2.5 * item / budget.MiB)  # room for two pictures
    a, b, c = pictures(3)
    for image in (a, b, a, c):  # a is used again after b, so b is the oldest when c arrives
        pipe.encode("image", image)
    s = pipe.stats().encoder_cache
    assert (s.entries, s.bytes, s.evictions, s.hits, s.misses) == (2, 2 * item, 1, 1, 3)
    pipe.encode("image", a)
    pipe.encode("image", b)
    assert pipe.stats().encoder_cache.hits == 2 and pipe.stats().encoder_cache.misses == 4


def test_encoder_cache_unit_keys_by_content_and_skips_rows_over_its_capacity():
    cache = EncoderCache(capacity=100)
    x = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    key = cache.key("vision_encoder", {"pixel_values": x})
    assert key == cache.key("vision_encoder", {"pixel_values": x.copy()})
    assert key != cache.key("vision_encoder", {"pixel_values": x.reshape(1, 4, 3)})
    assert key != cache.key("audio_encoder", {"pixel_values": x})
    cache.put(key, np.zeros(26, np.float32))  # 104 bytes: more than the whole cache
    assert cache.stats().entries == 0 and cache.get(key) is None


def test_greedy_tokens_are_identical_with_and_without_the_cache(default_bundle, picture):
    cached, plain = edgemfm.load(default_bundle), edgemfm.load(default_bundle, encoder_cache_mb=0)
    want = list(plain.generate_tokens(QUESTION, images=[picture], max_new_tokens=12))
    for _ in range(2):  # a miss, then a hit
        assert list(cached.generate_tokens(QUESTION, images=[picture], max_new_tokens=12)) == want
    assert cached.stats().encoder_cache.hits == 1 and plain.stats().encoder_cache.capacity == 0


def test_the_budget_counts_the_cache_and_says_when_it_cannot_fit(pipe, default_bundle):
    manifest, settings = pipe.manifest, pipe.streaming
    assert pipe.memory.encoder_cache == budget.ENCODER_CACHE_BYTES  # the default bound, counted at load
    without = budget.estimate(manifest, settings, 0)
    cached = budget.estimate(manifest, settings, 0, encoder_cache=64 * budget.MiB)
    assert cached.total - without.total == 64 * budget.MiB
    with pytest.raises(MemoryBudgetError, match=r"encoder cache 64\.0.*a smaller encoder cache"):
        budget.check(cached, without.total + budget.MiB, "bundle")
    huge = pipe.memory_budget / budget.MiB + 1  # the cache alone is over the whole budget
    with pytest.raises(MemoryBudgetError, match=r"a smaller encoder cache"):
        edgemfm.load(default_bundle, encoder_cache_mb=huge)


def whole_conversation(pipe, turns: list[tuple[str, list]], answers: list[list[int]]) -> list[streaming.Entry]:
    """The entries of the conversation as one prompt: each turn's template, its answer, an end-of-sequence token."""
    eos = list(pipe.manifest.tokenizer.eos_token_ids[:1])
    entries: list[streaming.Entry] = []
    for i, (prompt, images) in enumerate(turns):
        entries += list(pipe.plan(prompt, {"image": images}, first_turn=i == 0))
        if i < len(answers):
            entries += [*answers[i], *eos]
    return entries


def fresh_answer(pipe, entries, limit: int) -> list[int]:
    cache = pipe.decoder.new_cache()
    logits = pipe.decoder.prefill(cache, streaming.decoder_inputs(entries, pipe.decoder.embed_ids, pipe.encode))
    eos = pipe.manifest.tokenizer.eos_token_ids
    return [t for t, _ in decode(pipe.decoder, cache, logits, Sampler(), eos, limit)]


def test_turn_two_equals_a_fresh_answer_to_the_whole_conversation(pipe, picture):
    session = pipe.chat()
    turns = [(QUESTION, [picture]), ("What colour is the circle?", []), ("And the line?", [])]
    answers = []
    for i, (prompt, images) in enumerate(turns):
        got = list(session.ask_tokens(prompt, images=images, max_new_tokens=10))
        assert got == fresh_answer(pipe, whole_conversation(pipe, turns[: i + 1], answers), 10)
        answers.append(got)
    assert session.turns == 3 and all(len(a) == 10 for a in answers)


def test_turn_two_prefills_only_its_new_tokens(pipe, picture):
    session = pipe.chat()
    first = list(session.ask_tokens(QUESTION, images=[picture], max_new_tokens=6))
    turn1 = session.prefilled
    before = pipe.stats()
    list(session.ask_tokens("What colour is it?", max_new_tokens=1))  # one token: its prefill is the only decoder call
    after = pipe.stats()
    new_text = len(pipe.prompt_ids("What colour is it?", first_turn=False))
    unfed = 1 if len(first) == 6 else 0  # the last answer token when the answer hit its limit, then the end token
    assert session.prefilled == new_text + unfed + 1 == after.decoder_positions - before.decoder_positions
    assert after.decoder_calls - before.decoder_calls == 1 and after.encoder_cache == before.encoder_cache
    assert turn1 == len(pipe.prompt_ids(QUESTION, {"image": 1})) - 1 + ROWS  # the image's rows were turn 1's alone


def test_a_conversation_past_max_seq_len_keeps_working_with_its_sinks(default_bundle, picture):
    pipe = edgemfm.load(default_bundle, max_seq_len=96, prefill_chunk=32, sink_tokens=4)
    session = pipe.chat()
    list(session.ask_tokens(QUESTION, images=[picture], max_new_tokens=8))
    sinks = {name: v[:, :, :4].copy() for name, v in session.cache.values.items()}
    for i in range(6):
        assert len(list(session.ask_tokens(f"Tell me more, part {i}.", max_new_tokens=8))) == 8
    cache = session.cache
    assert cache.evicted > 0 and cache.length <= 96 and cache.position == cache.length + cache.evicted
    assert all(np.array_equal(cache.values[name][:, :, :4], kept) for name, kept in sinks.items())


def test_reset_forgets_the_conversation(pipe, picture):
    session = pipe.chat()
    want = list(session.ask_tokens(QUESTION, images=[picture], max_new_tokens=5))
    list(session.ask_tokens("Why?", max_new_tokens=5))
    session.reset()
    assert (session.turns, session.cache.position, session.pending) == (0, 0, [])
    assert list(session.ask_tokens(QUESTION, images=[picture], max_new_tokens=5)) == want


def test_an_answer_read_halfway_still_closes_its_turn(pipe, picture):
    session = pipe.chat()
    tokens = session.ask_tokens(QUESTION, images=[picture], max_new_tokens=10)
    first = [next(tokens), next(tokens)]
    tokens.close()
    assert session.pending == [first[-1], *pipe.manifest.tokenizer.eos_token_ids[:1]]
    got = list(session.ask_tokens("Go on.", max_new_tokens=4))
    turns = [(QUESTION, [picture]), ("Go on.", [])]
    assert got == fresh_answer(pipe, whole_conversation(pipe, turns, [first]), 4)


def test_edgemfm_chat_answers_each_line_of_stdin(default_bundle, picture, monkeypatch, capsys):
    session = edgemfm.load(default_bundle).chat()
    want = [
        "".join(session.ask(QUESTION, images=[str(picture)], max_new_tokens=4)),
        "".join(session.ask("Why?", max_new_tokens=4)),
    ]
    session.reset()
    want.append("".join(session.ask("Hello", max_new_tokens=4)))
    lines = f"/image {picture}\n{QUESTION}\nWhy?\n\n/reset\nHello\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    assert main(["chat", str(default_bundle), "--max-new-tokens", "4"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "".join(f"{answer}\n" for answer in want)
    assert "conversation reset" in captured.err


def test_edgemfm_chat_names_a_bad_bundle_in_one_line(tmp_path, capsys):
    assert main(["chat", str(tmp_path / "missing")]) == 2
    assert "\n" not in capsys.readouterr().err.strip()


# A fresh interpreter (no torch, no pytest): 50 distinct pictures through one chat under a small budget.
CHAT_CHILD = """
import json, sys, numpy as np, edgemfm
from edgemfm.runtimes import budget
from PIL import Image
pipe = edgemfm.load(sys.argv[1], memory_budget=128, max_seq_len=256, prefill_chunk=64, sink_tokens=4, encoder_cache_mb=1)
session, rng = pipe.chat(), np.random.default_rng(0)
for i in range(50):
    picture = Image.fromarray(rng.integers(0, 256, (180, 240, 3), dtype=np.uint8))
    list(session.ask_tokens(f"Picture {i}: what is in it?", images=[picture], max_new_tokens=2))
s = pipe.stats().encoder_cache
print(json.dumps({"peak": budget.peak_resident_bytes(), "cache": [s.bytes, s.capacity, s.evictions, s.misses]}))
"""


def test_fifty_pictures_through_a_chat_keep_the_peak_under_the_budget(default_bundle):
    run = subprocess.run(
        [sys.executable, "-c", CHAT_CHILD, str(default_bundle)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    held, capacity, evictions, misses = result["cache"]
    assert misses == 50 and evictions > 0 and held <= capacity == 2**20  # the cache filled and stayed at its bound
    assert result["peak"] <= 128 * 2**20, f"peak {result['peak'] / 2**20:.1f} MiB over 128 MiB"
