"""Fused vs unfused graphs, and the cost model's predictions vs measured latency, on this host.

Exports the built-in default model twice (fused, --no-fuse), then times each component of both
bundles side by side in one run (interleaved, medians of repeated calls after warm-up) and
prints a markdown table for BENCHMARKS.md.

    python benchmarks/fusion_and_cost.py --device host --context 64 --prefill 64
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import edgemfm
from edgemfm.cost import predict
from edgemfm.profiles import load_profile


def feeds_for(pipe, work: str, context: int, prefill: int) -> tuple[str, dict]:
    m = pipe.manifest
    if work == "vision":
        spec = m.components["vision_encoder"].inputs[0]
        return "vision_encoder", {spec.name: np.random.rand(1, *spec.shape[1:]).astype(np.float32)}
    kv = m.components["text_decoder"].kv_cache
    hidden = int(m.components["text_decoder"].inputs[0].shape[-1])
    past_len, seq = (context, 1) if work == "decode" else (0, prefill)
    past = {kv.past.format(layer=i, kind=k): np.random.rand(1, kv.kv_heads, past_len, kv.head_dim).astype(np.float32)
            for i in range(kv.layers) for k in ("key", "value")}
    return "text_decoder", {
        "inputs_embeds": np.random.rand(1, seq, hidden).astype(np.float32),
        "attention_mask": np.ones((1, past_len + seq), np.int64),
        "position_ids": np.arange(past_len, past_len + seq, dtype=np.int64)[None],
        **past,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="host")
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--prefill", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bundles = {
            "fused": edgemfm.export(device=args.device, out=Path(tmp) / "fused"),
            "unfused": edgemfm.export(device=args.device, out=Path(tmp) / "unfused", fuse=False),
        }
        pipes = {k: edgemfm.load(v, threads=0) for k, v in bundles.items()}
        times: dict[tuple[str, str], list[float]] = {}
        for work in ("vision", "decode", "prefill"):
            calls = {k: feeds_for(p, work, args.context, args.prefill) for k, p in pipes.items()}
            for k, (name, feeds) in calls.items():  # warm-up
                for _ in range(5):
                    pipes[k].sessions[name].run(feeds)
            for _ in range(args.repeats):  # interleaved: both see the same machine state
                for k, (name, feeds) in calls.items():
                    t = time.perf_counter()
                    pipes[k].sessions[name].run(feeds)
                    times.setdefault((k, work), []).append(1e3 * (time.perf_counter() - t))
        median = {key: statistics.median(v) for key, v in times.items()}
        predicted = {e.work.split()[0]: e.latency_ms for e in predict(pipes["fused"].manifest, load_profile(args.device),
                                                                      context=args.context, prefill=args.prefill)}
        nodes = {k: {c: p.manifest.report["parity"][c]["nodes"] for c in p.manifest.components} for k, p in pipes.items()}
    print(f"| call | unfused ms | fused ms | speed-up | predicted ms (roofline) | fused / predicted |")
    print("|---|---|---|---|---|---|")
    for work, key in (("vision", "one"), ("decode", "decode"), ("prefill", "prefill")):
        f, u = median[("fused", work)], median[("unfused", work)]
        print(f"| {work} | {u:.3f} | {f:.3f} | {u / f:.2f}x | {predicted[key]:.3f} | {f / predicted[key]:.1f} |")
    print(f"\nnodes: {nodes}")


if __name__ == "__main__":
    main()
