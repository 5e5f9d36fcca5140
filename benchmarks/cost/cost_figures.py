"""Measure the cost model's [cost] figures of this machine with ONNX Runtime kernels, one thread.

The roofline needs to know how close real kernels come to the published peaks and what a call
and a node cost when they do almost nothing; `edgemfm.measure.cost_figures` times one small graph
for each (its docstring lists them) as process CPU time with one intra-op thread, the least of
repeated calls, and this script prints them as the profile's `[cost]` lines.

    python -m benchmarks.cost.cost_figures --device host
"""

from __future__ import annotations

import argparse
import os
import time

from edgemfm.measure import cost_figures
from edgemfm.profiles import load_profile

from .. import record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="host", help="the profile whose peak the compute fraction is relative to")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    profile = load_profile(args.device)
    figures = cost_figures(profile.peak_fp32_gflops / profile.cpu_cores, args.repeats)
    print(
        f"# measured {time.strftime('%Y-%m-%d')} by benchmarks/cost/cost_figures.py, load average {os.getloadavg()[0]:.1f}"
    )
    print("[cost]")
    for name, value in figures.items():
        print(f"{name} = {value:.3g}")
    record.write("cost_figures", [{"figure": k, "value": float(f"{v:.3g}")} for k, v in figures.items()])


if __name__ == "__main__":
    main()
