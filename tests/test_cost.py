"""The roofline cost model: its arithmetic, its use of the profile's figures, and the CLI."""

from __future__ import annotations

import dataclasses

import pytest

from edgemfm.bundle import read_manifest
from edgemfm.cli import main
from edgemfm.cost import ATTAINABLE_BANDWIDTH, ATTAINABLE_COMPUTE, kv_bytes, predict
from edgemfm.profiles import load_profile


@pytest.fixture
def manifest(default_bundle):
    return read_manifest(default_bundle)


def test_every_component_is_predicted_with_counted_flops(manifest):
    rows = {(e.component, e.work.split()[0]) for e in predict(manifest, load_profile("pi5"))}
    assert rows == {("vision_encoder", "one"), ("token_embedding", "1"), ("text_decoder", "decode"), ("text_decoder", "prefill")}
    decoder = manifest.components["text_decoder"]
    # a decoder step does about 2 FLOPs per weight it reads (the embedding table is not in it)
    assert 1.5 < decoder.flops_per_item / (decoder.weight_bytes / 4) < 2.5


def test_latency_is_the_roofline_of_bytes_and_flops(manifest):
    profile = load_profile("jetson")
    for e in predict(manifest, profile, context=100, prefill=64):
        memory_ms = e.bytes / (profile.bandwidth_gbps * 1e9 * ATTAINABLE_BANDWIDTH) * 1e3
        compute_ms = e.flops / (profile.peak_fp32_gflops * 1e9 * ATTAINABLE_COMPUTE) * 1e3
        assert e.latency_ms == pytest.approx(max(memory_ms, compute_ms))
        assert e.bound == ("memory" if memory_ms >= compute_ms else "compute")


def test_decode_is_memory_bound_and_grows_with_the_cache(manifest):
    pi5 = load_profile("pi5")
    short, long = (next(e for e in predict(manifest, pi5, context=c) if e.work.startswith("decode")) for c in (16, 2048))
    assert short.bound == "memory"
    assert long.bytes - short.bytes == kv_bytes(manifest.components["text_decoder"], 2048 - 16)
    faster = dataclasses.replace(pi5, bandwidth_gbps=2 * pi5.bandwidth_gbps)
    doubled = next(e for e in predict(manifest, faster, context=16) if e.work.startswith("decode"))
    assert doubled.latency_ms == pytest.approx(short.latency_ms / 2)


def test_inspect_prints_predictions_with_their_sources(default_bundle, capsys):
    assert main(["inspect", str(default_bundle), "--device", "pi5"]) == 0
    text = capsys.readouterr().out
    assert "predicted on raspberry-pi-5-8gb" in text and "decode 1 token" in text and "prefill 256" in text
    assert "bandwidth_gbps = 17.07: " + load_profile("pi5").sources["bandwidth_gbps"][:20] in text
