"""The roofline cost model: its arithmetic, its use of the profile's figures, and the CLI."""

from __future__ import annotations

import dataclasses
import statistics

import pytest

from edgemfm.bundle import read_manifest
from edgemfm.cli import main
from edgemfm.cost import attention_flops, kv_bytes, nodes_of, predict, rates
from edgemfm.profiles import load_profile


@pytest.fixture
def manifest(default_bundle):
    return read_manifest(default_bundle)


def test_every_component_is_predicted_with_counted_flops(manifest):
    rows = {(e.component, e.work.split()[0]) for e in predict(manifest, load_profile("pi5"))}
    assert rows == {
        ("vision_encoder", "one"),
        ("token_embedding", "1"),
        ("text_decoder", "decode"),
        ("text_decoder", "prefill"),
    }
    decoder = manifest.components["text_decoder"]
    # a decoder step does about 2 FLOPs per weight it reads (the embedding table is not in it)
    assert 1.5 < decoder.flops_per_item / (decoder.weight_bytes / 4) < 2.5


def test_latency_is_the_roofline_of_bytes_and_flops_plus_the_fixed_costs(manifest):
    profile = load_profile("jetson")
    for threads in (None, 1):
        for e in predict(manifest, profile, context=100, prefill=64, threads=threads):
            bandwidth, throughput = rates(profile, profile.peak_fp32_gflops, threads)
            memory_ms, compute_ms = e.bytes / bandwidth * 1e3, e.flops / throughput * 1e3
            fixed_ms = (profile.cost.call_us + nodes_of(manifest, e.component) * profile.cost.node_us) / 1e3
            assert e.overhead_ms == pytest.approx(fixed_ms)
            assert e.latency_ms == pytest.approx(fixed_ms + max(memory_ms, compute_ms))


def test_one_thread_gets_a_core_share_of_compute_and_at_most_a_core_of_bandwidth():
    host = load_profile("host")
    bandwidth, throughput = rates(host, host.peak_fp32_gflops, threads=1)
    assert throughput == pytest.approx(host.peak_fp32_gflops * host.cost.compute_fraction / host.cpu_cores * 1e9)
    assert bandwidth == pytest.approx(
        min(host.cost.core_bandwidth_gbps, host.bandwidth_gbps * host.cost.bandwidth_fraction) * 1e9
    )
    jetson = load_profile("jetson")  # a GPU: threads do not apply
    assert rates(jetson, 100.0, threads=1) == rates(jetson, 100.0, threads=None)


def test_prefill_counts_attention_over_the_whole_chunk(manifest):
    decoder = manifest.components["text_decoder"]
    short, long = (
        next(e for e in predict(manifest, load_profile("pi5"), prefill=p) if e.work.startswith("prefill"))
        for p in (64, 128)
    )
    assert long.flops - 2 * short.flops == pytest.approx(
        attention_flops(decoder, 128, 128) - 2 * attention_flops(decoder, 64, 64)
    )


def test_decode_is_memory_bound_and_grows_with_the_cache(manifest):
    pi5 = load_profile("pi5")
    short, long = (
        next(e for e in predict(manifest, pi5, context=c) if e.work.startswith("decode")) for c in (16, 2048)
    )
    assert short.bound == "memory"
    assert long.bytes - short.bytes == 2 * kv_bytes(
        manifest.components["text_decoder"], 2048 - 16
    )  # read, and written back
    faster = dataclasses.replace(
        pi5,
        bandwidth_gbps=2 * pi5.bandwidth_gbps,
        cost=dataclasses.replace(pi5.cost, core_bandwidth_gbps=2 * pi5.cost.core_bandwidth_gbps),
    )
    doubled = next(e for e in predict(manifest, faster, context=16) if e.work.startswith("decode"))
    assert doubled.latency_ms - doubled.overhead_ms == pytest.approx((short.latency_ms - short.overhead_ms) / 2)


def test_inspect_prints_predictions_with_their_sources(default_bundle, capsys):
    assert main(["inspect", str(default_bundle), "--device", "pi5"]) == 0
    text = capsys.readouterr().out
    assert "predicted on raspberry-pi-5-8gb" in text and "decode 1 token" in text and "prefill 256" in text
    assert "bandwidth_gbps = 17.07: " + load_profile("pi5").sources["bandwidth_gbps"][:20] in text
    assert "cost.node_us = 0.28: " + load_profile("pi5").sources["cost.node_us"][:20] in text


def _ratios(bundle, context=64, prefill=64, repeats=10) -> dict[str, float]:
    """measured / predicted of every call, one thread: CPU time of the least disturbed call (edgemfm.measure),
    over the median of those ratios. The median is the machine's own speed against the host profile's figures:
    a CI runner is not the machine they were measured on (one twice as fast read 0.45-0.79 on every call), and
    what the model gets wrong between calls stays. It is itself held within 4x either way."""
    from edgemfm.measure import measure

    m = read_manifest(bundle)
    predicted = {}
    for e in predict(m, load_profile("host"), context=context, prefill=prefill, threads=1):
        predicted[f"{e.component} {e.work.split()[0]}" if m.components[e.component].kv_cache else e.component] = (
            e.latency_ms
        )
    ratios = {k: ms / predicted[k] for k, ms in measure(bundle, context, prefill, repeats).items()}
    machine = statistics.median(ratios.values())
    assert 0.25 <= machine <= 4.0, ratios
    return {k: r / machine for k, r in ratios.items()}


@pytest.mark.slow
def test_tiny_bundle_is_predicted_within_a_factor_of_two(default_bundle):
    """The placeholder model's 0.01-3 ms calls, where the per-call and per-node costs dominate.

    A factor of two, not 30%: the bound still catches what the bytes-and-FLOPs roofline alone got wrong
    (4-6x). -m slow: it times calls, and timing belongs outside the default suite. Normalized by the median
    it still failed one fresh-clone run of the suite (session 16, at 3c1a6b8: token_embedding's 0.01 ms
    call at 2.39x the median, the others 0.91-1.01).
    """
    ratios = _ratios(default_bundle)
    assert set(ratios) == {"vision_encoder", "token_embedding", "text_decoder decode", "text_decoder prefill"}
    assert all(0.5 <= r <= 2.0 for r in ratios.values()), ratios


@pytest.mark.slow
def test_demo_bundle_is_predicted_within_30_percent_on_the_host(demo_bundle):
    """The demo model's five calls, each within 30% of the others' measured / predicted."""
    ratios = _ratios(demo_bundle)
    assert len(ratios) == 5
    assert all(0.7 <= r <= 1.3 for r in ratios.values()), ratios
