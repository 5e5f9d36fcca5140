"""Past and present in one buffer (exporters/fusions/shared_cache.py, runtimes/kvcache.SharedKVCache): the fused
decoder reads its past tensors only in GroupQueryAttention, and a stream run on one bound buffer per tensor, appended
in place, gives the logits of the same graph run on the cache it returns grown at every call."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgemfm import validate
from edgemfm.bundle import read_manifest
from edgemfm.errors import BundleError
from edgemfm.exporters.fusions.shared_cache import METADATA
from edgemfm.runtimes.generation import Decoder
from edgemfm.runtimes.kvcache import KVCache, SharedKVCache
from edgemfm.runtimes.onnxruntime import OrtSession


def test_the_fused_decoder_reads_its_past_only_in_group_query_attention(default_bundle):
    manifest = read_manifest(default_bundle)
    kv = manifest.components["text_decoder"].kv_cache
    graph = onnx.load(str(default_bundle / "text_decoder.onnx"), load_external_data=False)
    pasts = {kv.past.format(layer=i, kind=k) for i in range(kv.layers) for k in ("key", "value")}
    readers = [n for n in graph.graph.node if pasts & set(n.input)]
    attention = [n for n in readers if n.op_type == "GroupQueryAttention"]
    assert kv.shared and {p.key for p in graph.metadata_props} >= {METADATA}
    layers = [[kv.past.format(layer=i, kind=k) for k in ("key", "value")] for i in range(kv.layers)]
    assert sorted(list(n.input[3:5]) for n in attention) == sorted(layers)
    # the rest read the batch and head axes only: a length axis longer than the entries held changes nothing
    for shape in (n for n in readers if n not in attention):
        axes = {a.name: a.i for a in shape.attribute}
        assert shape.op_type == "Shape" and axes.get("end", 4) <= 2, shape


def _stream(cache, session, hidden: int, calls: list[int], rollback_every: int = 5):
    """Logits of each call of a seeded stream of `calls` rows each, through `cache` on `session`; every
    `rollback_every`-th call is followed by a rollback of 3 entries (a speculative step's rejected tokens)."""
    rng, got = np.random.default_rng(0), []
    for step, seq in enumerate(calls):
        x = rng.standard_normal((1, seq, hidden), np.float32)
        cache.make_room(seq)
        out = cache.run(session, {"inputs_embeds": x, **cache.feeds(seq)})
        cache.advance(out, seq)
        got.append(out["logits"].copy())
        if step % rollback_every == 2:
            cache.rollback(3)
    return got


def test_a_stream_on_one_buffer_appended_in_place_equals_the_grown_cache(default_bundle):
    """A prefill, single tokens, chunked prefills, rollbacks, a sliding window with sink entries, and re-bases
    (a 96-position table, so the stream passes it several times): the same logits either way, every call."""
    manifest = read_manifest(default_bundle)
    kv = dataclasses.replace(manifest.components["text_decoder"].kv_cache, rotary_table=96)
    session = OrtSession(
        ort.InferenceSession(str(default_bundle / "text_decoder.onnx"), providers=["CPUExecutionProvider"])
    )
    hidden = session.session.get_inputs()[0].shape[2]
    calls = [7, 1, 1, 20, 1, *[30] * 10, 3, 1, 1]
    plain, shared = KVCache(kv, max_len=64, sinks=4), SharedKVCache(kv, max_len=64, sinks=4)
    buffers = dict(shared.values)
    for want, got in zip(_stream(plain, session, hidden, calls), _stream(shared, session, hidden, calls)):
        np.testing.assert_array_equal(got, want)  # the same kernel on the same entries, only held elsewhere
    assert shared.position == plain.position > 3 * kv.rotary_table and shared.base == plain.base > 0
    assert shared.length == plain.length and shared.evicted == plain.evicted > 0
    # the same arrays all along, holding what the grown cache holds
    assert all(shared.values[name] is buffers[name] for name in buffers)
    for name, grown in plain.values.items():
        np.testing.assert_allclose(shared.values[name][:, :, : shared.length], grown, atol=1e-5)


def test_the_in_place_run_writes_the_logits_into_a_new_array_of_the_calls_shape(default_bundle):
    """The logits' shape follows from the feeds ([batch, seq, vocab]), so the run binds an array of its own and
    wraps no ONNX Runtime value; the next call takes a new one, leaving the array a caller kept as it was."""
    session = OrtSession(
        ort.InferenceSession(str(default_bundle / "text_decoder.onnx"), providers=["CPUExecutionProvider"])
    )
    kv = read_manifest(default_bundle).components["text_decoder"].kv_cache
    cache, hidden, rng = (
        SharedKVCache(kv, max_len=64, sinks=4),
        session.session.get_inputs()[0].shape[2],
        np.random.default_rng(1),
    )
    kept = []
    for seq in (5, 1, 3):
        out = cache.run(
            session, {"inputs_embeds": rng.standard_normal((1, seq, hidden), np.float32), **cache.feeds(seq)}
        )
        cache.advance(out, seq)
        kept.append((out["logits"], out["logits"].copy()))
    assert [a.shape[1] for a, _ in kept] == [5, 1, 3] and len({id(a) for a, _ in kept}) == 3
    assert all(np.array_equal(a, copy) and np.isfinite(a).all() for a, copy in kept)


def _decode(bundle, shared: bool) -> tuple[type, list[int], np.ndarray]:
    """(the cache type the decode loop took, 12 greedy tokens after a prompt, their logits) with the manifest's
    `kv_cache.shared` as given."""
    from edgemfm.runtimes.decoding import Sampler
    from edgemfm.runtimes.generation import decode

    manifest = read_manifest(bundle)
    decoder = manifest.components["text_decoder"]
    layout = dataclasses.replace(decoder.kv_cache, shared=shared)
    components = {**manifest.components, "text_decoder": dataclasses.replace(decoder, kv_cache=layout)}
    manifest = dataclasses.replace(manifest, components=components)
    sessions = [
        OrtSession(ort.InferenceSession(str(bundle / components[name].file), providers=["CPUExecutionProvider"]))
        for name in ("text_decoder", "token_embedding")
    ]
    loop = Decoder(*sessions, manifest, manifest.streaming)
    cache = loop.new_cache()
    logits = loop.prefill(cache, [loop.embed_ids([1, 2, 3, 4, 5])])
    steps = list(decode(loop, cache, logits, Sampler(), eos=(), limit=12))
    return type(cache), [t for t, _ in steps], np.stack([x for _, x in steps])


def test_the_decode_loop_appends_in_place_where_the_manifest_allows_it(default_bundle):
    kind, tokens, logits = _decode(default_bundle, shared=True)
    plain_kind, plain_tokens, plain_logits = _decode(default_bundle, shared=False)
    assert (kind, plain_kind) == (SharedKVCache, KVCache)
    assert tokens == plain_tokens and np.abs(logits - plain_logits).max() <= 1e-5 * np.abs(plain_logits).max()


def test_a_max_length_buffer_costs_only_the_entries_written_generation_after_generation():
    """SmolLM2's cache layout at 2,048 positions (90 MiB): three caches in turn, 8 entries written in each. Buffers
    from np.zeros measured 88.6 MiB resident after the third (freed heap memory, cleared page by page)."""
    from edgemfm.manifest import KVCache as KVLayout
    from edgemfm.runtimes.budget import resident_bytes

    layout = KVLayout(30, 3, 64, past="past.{layer}.{kind}", present="present.{layer}.{kind}", shared=True)
    before = resident_bytes()
    for _ in range(3):
        cache = SharedKVCache(layout, max_len=2048, sinks=4)
        for buffer in cache.values.values():
            buffer[:, :, :8] = 1.0
        del cache
    assert resident_bytes() - before < 8 * 2**20


def test_a_static_cache_marked_shared_is_refused_in_one_line(default_bundle):
    """A program's static cache owns its buffers: a manifest that also marks it shared is refused by name."""
    manifest = read_manifest(default_bundle)
    decoder = manifest.components["text_decoder"]
    static = dataclasses.replace(decoder.kv_cache, kind="static", max_seq_len=64, position="position_ids", shared=False)
    assert validate.check(_with_cache(manifest, static), "m")  # valid as a static cache
    with pytest.raises(
        BundleError, match=r"^m: components.text_decoder.kv_cache.shared True is not allowed; allowed: false"
    ):
        validate.check(_with_cache(manifest, dataclasses.replace(static, shared=True)), "m")


def _with_cache(manifest, kv):
    decoder = dataclasses.replace(manifest.components["text_decoder"], kv_cache=kv)
    return dataclasses.replace(manifest, components={**manifest.components, "text_decoder": decoder})
