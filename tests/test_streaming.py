"""Memory budget and streaming: refused budgets, streamed images under a measured peak, bounded cache."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

import edgemfm
from edgemfm.cli import main
from edgemfm.errors import InputError, MemoryBudgetError
from edgemfm.manifest import KVCache as KVLayout
from edgemfm.runtimes import budget
from edgemfm.runtimes.audio_windows import windows
from edgemfm.runtimes.kvcache import KVCache
from edgemfm.runtimes.streaming import from_ids, planned, split_template

PROMPT = "What happens in the video?"
BUDGET_MB = 128  # the streamed run's whole process, interpreter and onnxruntime included


def frames(n: int, seed: int = 0):
    """Video frames as they would come from a camera: made one at a time, never all held."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield rng.integers(0, 256, (180, 240, 3), dtype=np.uint8)


# A fresh interpreter (no torch, no pytest) works out how many frames would fit unstreamed (one
# prefill, the whole sequence cached) in the budget, streams N frames, and reports its peak from the OS.
CHILD = (
    """
import dataclasses, json, sys, numpy as np, edgemfm
from edgemfm import bundle
from edgemfm.runtimes import budget
def frames(n, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield rng.integers(0, 256, (180, 240, 3), dtype=np.uint8)
path, budget_mb, n, rows = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
manifest, baseline = bundle.read_manifest(path), budget.resident_bytes()
def unstreamed(k):
    length = k * (rows + 1) + 32  # each frame's rows and newline, and the prompt's text
    settings = dataclasses.replace(manifest.streaming, prefill_chunk=length, max_seq_len=length)
    return budget.estimate(manifest, settings, baseline).total
fits = max(k for k in range(1, 1000) if unstreamed(k) <= budget_mb * 2**20)
pipe = edgemfm.load(path, memory_budget=budget_mb, max_seq_len=256, prefill_chunk=64, sink_tokens=4)
tokens = list(pipe.generate_tokens(%r, images=frames(n), max_new_tokens=16))
print(json.dumps({"peak": budget.peak_resident_bytes(), "tokens": tokens, "needed": pipe.memory.total, "fits": fits}))
"""  # noqa: UP031
    % PROMPT
)


def test_image_stream_stays_under_a_measured_memory_budget(default_bundle):
    """Streams 10x more frames than fit unstreamed in the budget; the OS-measured peak stays under it."""
    rows, streamed = 49, 200  # (224 / 32)^2 patches per frame in the default model
    run = subprocess.run(
        [sys.executable, "-c", CHILD, str(default_bundle), str(BUDGET_MB), str(streamed), str(rows)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert 1 <= result["fits"] and streamed >= 10 * result["fits"], result["fits"]
    assert streamed * (rows + 1) > 10 * 256  # the stream outgrew the bounded cache many times over
    assert result["needed"] <= result["peak"] * 1.5  # the estimate is of the right size, not padding
    assert result["peak"] <= BUDGET_MB * 2**20, f"peak {result['peak'] / 2**20:.1f} MiB over {BUDGET_MB} MiB"
    assert len(result["tokens"]) == 16


def test_streamed_and_unstreamed_outputs_agree_when_both_fit(default_bundle):
    streamed = edgemfm.load(default_bundle, max_seq_len=256, prefill_chunk=16)
    whole = edgemfm.load(default_bundle)  # one prefill of the whole prompt, the cache unbounded at this length
    pictures = list(frames(3, seed=1))
    got = list(streamed.generate_tokens(PROMPT, images=iter(pictures), max_new_tokens=24))
    want = list(whole.generate_tokens(PROMPT, images=pictures, max_new_tokens=24))
    assert len(want) == 24 and got == want


def test_long_stream_keeps_the_cache_bounded(default_bundle):
    pipe = edgemfm.load(default_bundle, max_seq_len=128, prefill_chunk=32, sink_tokens=4)
    cache = pipe.decoder.new_cache()
    pipe.prefill(cache, PROMPT, {"image": frames(8)})
    assert cache.length <= 128 and cache.position == 8 * 50 + len(pipe.prompt_ids(PROMPT))
    assert cache.evicted == cache.position - cache.length


def test_sliding_window_keeps_sinks_and_the_most_recent_entries():
    layout = KVLayout(layers=2, kv_heads=3, head_dim=5, past="past.{layer}.{kind}", present="present.{layer}.{kind}")
    cache = KVCache(layout, max_len=10, sinks=2)
    values = np.arange(9, dtype=np.float32)[None, None, :, None] * np.ones((1, 3, 9, 5), np.float32)
    cache.advance({name: values for name in cache.present_names}, 9)
    cache.make_room(4)  # 9 + 4 > 10: keep 2 sinks and the 4 most recent, room for 4
    kept = cache.values["past.1.value"][0, 0, :, 0]
    assert kept.tolist() == [0, 1, 5, 6, 7, 8] and cache.length == 6 and cache.position == 9
    assert cache.feeds(4)["attention_mask"].shape == (1, 10) and cache.feeds(4)["position_ids"].tolist() == [
        [9, 10, 11, 12]
    ]
    cache.rollback(3)
    assert cache.length == 3 and cache.position == 6 and cache.values["past.0.key"].shape == (1, 3, 3, 5)


def test_a_rotary_table_re_bases_positions_and_turns_the_kept_keys_exactly():
    """A stand-in decoder that caches each token's key rotated at its fed position (as GroupQueryAttention
    with the rotation inside does): through slides, rollbacks and re-bases, every fed position stays
    inside the 8-position table, and every kept key is the rotation at its absolute position minus the
    current base: the distance between any two tokens is exact."""
    from edgemfm.runtimes.kvcache import rotate

    frequencies = (0.7, 0.05)
    layout = KVLayout(
        1, 1, 4, "past.{layer}.{kind}", "present.{layer}.{kind}", rotary_table=8, rotary_frequencies=frequencies
    )
    cache = KVCache(layout, max_len=6, sinks=1)
    unit = np.array([1.0, 0.5, -0.25, 2.0])
    absolute = []  # the absolute position of each kept entry
    for step, seq in enumerate([3, 1, 2, 1, 1, 3, 1, 1, 2, 1, 1, 1, 3, 1, 1] * 2):
        cache.make_room(seq)
        if cache.length < len(absolute):  # slid: the sinks and the most recent entries stay
            absolute = absolute[: cache.sinks] + absolute[len(absolute) - cache.length + cache.sinks :]
        fed = cache.feeds(seq)["position_ids"][0]
        assert 0 <= fed.min() and fed.max() < layout.rotary_table
        new = np.stack([rotate(unit, int(p), frequencies) for p in fed]).astype(np.float32)[None, None]
        keys = np.concatenate([cache.values["past.0.key"], new], axis=2)
        values = np.concatenate(
            [cache.values["past.0.value"], np.tile(unit.astype(np.float32), (1, 1, seq, 1))], axis=2
        )
        cache.advance({"present.0.key": keys, "present.0.value": values}, seq)
        absolute += list(range(cache.position - seq, cache.position))
        if step % 4 == 3:  # a speculative step's rejected proposal
            cache.rollback(1)
            absolute.pop()
        want = np.stack([rotate(unit, p - cache.base, frequencies) for p in absolute])
        assert np.abs(cache.values["past.0.key"][0, 0] - want).max() < 1e-5
        assert np.array_equal(cache.values["past.0.value"][0, 0], np.tile(unit, (cache.length, 1)))  # never turned
    assert cache.base > 2 * layout.rotary_table and cache.evicted > 0


def test_an_impossible_budget_fails_at_load_in_one_line(default_bundle, capsys):
    assert main(["run", str(default_bundle), "--prompt", "hi", "--memory-budget", "40"]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "needs " in line and "allows 41943040 bytes (40.0 MiB)" in line
    needed = int(line.split("needs ")[1].split()[0])
    assert needed > 40 * 2**20


def test_budget_counts_the_kv_cache_at_its_bound(default_bundle):
    manifest = edgemfm.load(default_bundle).manifest
    decoder = manifest.components["text_decoder"]
    kv = decoder.kv_cache
    assert budget.kv_cache_bytes(decoder, 1000) == 2 * kv.layers * 2 * kv.kv_heads * kv.head_dim * 1000 * 4
    # appended in place (kv_cache.shared, on the CPU): past and present are one buffer, counted once
    assert (
        kv.shared
        and edgemfm.load(default_bundle).memory.kv_cache
        == budget.kv_cache_bytes(decoder, manifest.streaming.max_seq_len) // 2
    )
    assert budget.fused_attention(manifest, "text_decoder")  # the export fuses attention: 3 score tensors, not 6
    plain, fused = (budget.decoder_activation_bytes(decoder, 512, 2048, f) for f in (False, True))
    heads = 192 // kv.head_dim
    assert plain - fused == 3 * heads * 512 * 2048 * 4
    small = dataclasses.replace(manifest.streaming, max_seq_len=256)
    with pytest.raises(MemoryBudgetError, match=r"needs \d+ bytes .* allows \d+ bytes"):
        edgemfm.load(
            default_bundle, memory_budget=budget.estimate(manifest, small, budget.resident_bytes()).total / 2**20 / 2
        )


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"prefill_chunk": 300, "max_seq_len": 256}, "prefill_chunk=300, max_seq_len=256"),
        ({"window": 3}, "unknown streaming setting 'window'; allowed: audio_window_s"),
        # the decoder rotates inside GroupQueryAttention from a table of the export's max_seq_len rows
        (
            {"max_seq_len": 4096},
            "max_seq_len 4096 is past the decoder's rotary table of 2048 positions; allowed: 1 to 2048",
        ),
    ],
)
def test_bad_streaming_settings_are_named(default_bundle, overrides, message):
    with pytest.raises(InputError, match=message):
        edgemfm.load(default_bundle, **overrides)


def test_prompt_template_splits_around_items_or_falls_back():
    # ids: 1 BOS, 9 placeholder, 5 newline, 7 question, 2 end; a merging tokenizer fuses "\n" + question into 8
    plain = lambda counts: [1, *[9, 5] * counts.get("image", 0), 7, 2]  # noqa: E731
    layout = split_template(plain, ["image"], {"image": 9})
    assert list(planned(layout, {"image": iter("ab")})) == [1, ("image", "a"), 5, ("image", "b"), 5, 7, 2]
    merging = lambda counts: [1, *[9, 5] * (counts.get("image", 0) - 1), *([9, 8] if counts.get("image") else [7]), 2]  # noqa: E731
    assert split_template(merging, ["image"], {"image": 9}) is None
    assert list(from_ids(merging({"image": 2}), {"image": 9}, {"image": ["a", "b"]})) == [
        1,
        ("image", "a"),
        5,
        ("image", "b"),
        8,
        2,
    ]


def test_audio_windows_cover_a_stream_in_fixed_windows():
    rng = np.random.default_rng(0)
    chunks = [rng.standard_normal(n).astype(np.float32) for n in (3, 17, 1, 40, 9)]  # 70 samples, odd chunks
    got = list(windows(iter(chunks), size=16))
    assert [w.size for w in got] == [16] * 5
    assert np.array_equal(np.concatenate(got)[:70], np.concatenate(chunks)) and not np.concatenate(got)[70:].any()
    assert len(list(windows(iter(chunks), size=16, pad_last=False))) == 4
