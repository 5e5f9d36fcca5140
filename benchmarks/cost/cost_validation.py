"""The cost model against this machine: predicted vs measured latency of each bundle component.

Measures every call `edgemfm.cost.predict` predicts (one image, one audio clip, one token's
embedding, a decode step, a prefill) on the bundle, one thread, least process CPU time of
`--repeats` calls (edgemfm.measure says why), and compares it with the prediction for one
thread on `--device`: with the profile's figures (measured on this host by
benchmarks/cost/cost_figures.py), and with the same figures re-measured in this run, next to the
components, so the machine's load at the time weighs on both sides.
Prints a markdown table for BENCHMARKS.md; exits 1 when a call is outside `--tolerance` of the profile-based prediction.

    edgemfm export --device host --out /work/tune-demo-bundle      # the demo model, fp32
    python -m benchmarks.cost.cost_validation /work/tune-demo-bundle --device host --context 64 --prefill 64
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

from edgemfm.bundle import read_manifest
from edgemfm.cost import Estimate, predict
from edgemfm.measure import cost_figures, measure
from edgemfm.profiles import load_profile

from .. import record


def predictions(manifest, profile, context: int, prefill: int) -> dict[str, Estimate]:
    """One-thread predictions keyed as `edgemfm.measure.calls` keys its calls."""
    out = {}
    for e in predict(manifest, profile, context=context, prefill=prefill, threads=1):
        out[f"{e.component} {e.work.split()[0]}" if manifest.components[e.component].kv_cache else e.component] = e
    return out


def compare(
    bundle: str, device: str, context: int, prefill: int, repeats: int
) -> list[tuple[str, str, float, float, float, str]]:
    """(call, work, predicted ms, predicted on figures re-measured now, measured ms, bound) for each call."""
    manifest, profile = read_manifest(bundle), load_profile(device)
    now = replace(profile, cost=replace(profile.cost, **cost_figures(profile.peak_fp32_gflops / profile.cpu_cores)))
    measured = measure(bundle, context=context, prefill=prefill, repeats=repeats)
    a, b = predictions(manifest, profile, context, prefill), predictions(manifest, now, context, prefill)
    return [(k, a[k].work, a[k].latency_ms, b[k].latency_ms, ms, a[k].bound) for k, ms in measured.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--device", default="host")
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--prefill", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--tolerance", type=float, default=0.3, help="largest |measured / predicted - 1| accepted")
    args = parser.parse_args()
    rows = compare(args.bundle, args.device, args.context, args.prefill, args.repeats)
    print(f"load average {os.getloadavg()[0]:.1f}; one thread, least process CPU time of {args.repeats} calls\n")
    print(
        "| component | one call | predicted ms (profile) | measured ms | measured / predicted | predicted ms (figures re-measured in this run) | measured / that | bound |"
    )
    print("|---|---|---|---|---|---|---|---|")
    worst = 0.0
    for key, work, p, now, m, bound in rows:
        worst = max(worst, abs(m / p - 1))
        print(f"| {key.split()[0]} | {work} | {p:.3f} | {m:.3f} | {m / p:.2f} | {now:.3f} | {m / now:.2f} | {bound} |")
    record.write(
        "cost_validation",
        [
            {
                "component": key.split()[0],
                "call": work,
                "predicted_ms": round(p, 3),
                "measured_ms": round(m, 3),
                "predicted_now_ms": round(now, 3),
                "bound": bound,
            }
            for key, work, p, now, m, bound in rows
        ],
    )
    sys.exit(0 if worst <= args.tolerance else 1)


if __name__ == "__main__":
    main()
