"""Fused vs unfused graphs, and the cost model's predictions vs measured latency, on this host.

Exports the small untrained placeholder model (exporters/placeholder.py) twice (fused, --no-fuse),
or takes two bundles of one model (`--fused DIR --unfused DIR`, e.g. the demo model exported
with and without `--no-fuse`), then times each component of both side by side in one run
(interleaved, so both see the same machine state; medians of repeated calls after warm-up; wall
time and the process's CPU time per call) and prints a markdown table for BENCHMARKS.md.

    python -m benchmarks.cost.fusion_and_cost --device host --context 64 --prefill 64
    python -m benchmarks.cost.fusion_and_cost --fused demo-host --unfused demo-host-unfused --threads 1
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

from .. import record


def feeds_for(pipe, work: str, context: int, prefill: int) -> tuple[str, dict]:
    m = pipe.manifest
    if work in ("vision", "audio"):
        spec = m.components[f"{work}_encoder"].inputs[0]
        return f"{work}_encoder", {spec.name: np.random.rand(1, *spec.shape[1:]).astype(np.float32)}
    kv = m.components["text_decoder"].kv_cache
    hidden = int(m.components["text_decoder"].inputs[0].shape[-1])
    past_len, seq = (context, 1) if work == "decode" else (0, prefill)
    past = {
        kv.past.format(layer=i, kind=k): np.random.rand(1, kv.kv_heads, past_len, kv.head_dim).astype(np.float32)
        for i in range(kv.layers)
        for k in ("key", "value")
    }
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
    parser.add_argument("--fused", help="a bundle exported with fusion (default: export the placeholder model)")
    parser.add_argument("--unfused", help="the same model exported with --no-fuse")
    parser.add_argument("--threads", type=int, default=0, help="threads per session (0: one per core)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.fused and args.unfused:
            bundles = {"fused": Path(args.fused), "unfused": Path(args.unfused)}
        else:
            from edgemfm.exporters import placeholder

            model = placeholder.build(Path(tmp) / "model")
            bundles = {
                "fused": edgemfm.export(edgemfm.ExportConfig(model=model, device=args.device, out=Path(tmp) / "fused")),
                "unfused": edgemfm.export(
                    edgemfm.ExportConfig(model=model, device=args.device, out=Path(tmp) / "unfused", fuse=False)
                ),
            }
        pipes = {k: edgemfm.load(v, threads=args.threads) for k, v in bundles.items()}
        works = [w for w in ("vision", "audio") if f"{w}_encoder" in pipes["fused"].manifest.components] + [
            "decode",
            "prefill",
        ]
        times: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for work in works:
            calls = {k: feeds_for(p, work, args.context, args.prefill) for k, p in pipes.items()}
            for k, (name, feeds) in calls.items():  # warm-up
                for _ in range(5):
                    pipes[k].sessions[name].run(feeds)
            for _ in range(args.repeats):  # interleaved: both see the same machine state
                for k, (name, feeds) in calls.items():
                    t, cpu = time.perf_counter(), time.process_time()
                    pipes[k].sessions[name].run(feeds)
                    times.setdefault((k, work), []).append(
                        (1e3 * (time.perf_counter() - t), 1e3 * (time.process_time() - cpu))
                    )
        median = {
            key: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for key, v in times.items()
        }
        predicted = {
            e.component + e.work.split()[0]: e.latency_ms
            for e in predict(
                pipes["fused"].manifest, load_profile(args.device), context=args.context, prefill=args.prefill
            )
        }
        nodes = {k: {c: p.manifest.report.parity[c].nodes for c in p.manifest.components} for k, p in pipes.items()}
    print(
        "| call | unfused ms | fused ms | speed-up | unfused CPU ms | fused CPU ms | CPU speed-up | predicted ms (roofline) | fused / predicted |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    keys = {
        "vision": "vision_encoderone",
        "audio": "audio_encoderone",
        "decode": "text_decoderdecode",
        "prefill": "text_decoderprefill",
    }
    for work in works:
        (f, fc), (u, uc) = median[("fused", work)], median[("unfused", work)]
        p = predicted[keys[work]]
        print(
            f"| {work} | {u:.3f} | {f:.3f} | {u / f:.2f}x | {uc:.3f} | {fc:.3f} | {uc / fc:.2f}x | {p:.3f} | {f / p:.1f} |"
        )
    print(f"\nnodes: {nodes}")
    record.write(
        "fusion_and_cost",
        [
            {
                "call": work,
                "unfused_ms": round(median[("unfused", work)][0], 3),
                "fused_ms": round(median[("fused", work)][0], 3),
                "unfused_cpu_ms": round(median[("unfused", work)][1], 3),
                "fused_cpu_ms": round(median[("fused", work)][1], 3),
                "predicted_ms": round(predicted[keys[work]], 3),
            }
            for work in works
        ],
        nodes=nodes,
    )


if __name__ == "__main__":
    main()
