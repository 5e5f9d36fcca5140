"""What a pte decoder's decode step costs at a few cache positions: does it grow with the positions used?

A decode step of the static decoder at position p attends over p + 1 positions (llama::custom_sdpa,
exporters/llm_ops.py) whatever the program's capacity. This feeds one token's embedding to the
bundle's `text_decoder` method at each position, in interleaved rounds (position a, b, a, b, ...),
and reports the median CPU seconds per step at each position and their ratio to the first.

Example:
    $ python -m benchmarks.runtime.pte_positions work/side_by_side/smollm2/edgemfm-pte-int4 --positions 64 1024
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from .. import record

NAME = "runtime-pte-positions"
TITLE = "pte decode step cost by cache position"


def step_seconds(method, hidden: int, position: int, steps: int) -> float:
    """CPU seconds per decode step at `position` (each step writes and attends at the same slot)."""
    import torch

    embeds, pos = torch.randn(1, 1, hidden), torch.tensor([position])
    start = time.process_time()
    for _ in range(steps):
        method.execute([embeds, pos])
    return (time.process_time() - start) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path, help="a pte bundle")
    p.add_argument("--positions", type=int, nargs="+", default=[64, 1024])
    p.add_argument("--steps", type=int, default=20, help="decode steps per measurement")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--note", help="a text file: what the figures say, printed under the table")
    args = p.parse_args()
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (the llama:: kernels)
    import executorch.kernels.quantized  # noqa: F401
    from executorch.runtime import Runtime

    from edgemfm.bundle import read_manifest
    from edgemfm.runtimes.executorch import set_threads

    set_threads(args.threads)  # ExecuTorch's pool and torch's, which custom_sdpa's kernel runs on
    manifest = read_manifest(args.bundle)
    decoder = manifest.components["text_decoder"]
    method = Runtime.get().load_program(args.bundle / decoder.file).load_method(decoder.method)
    hidden = decoder.inputs[0].shape[-1]
    for position in args.positions:  # warm-up
        step_seconds(method, hidden, position, 2)
    runs: dict[int, list[float]] = {q: [] for q in args.positions}
    for _ in range(args.rounds):
        for position in args.positions:
            runs[position].append(step_seconds(method, hidden, position, args.steps))
    base = statistics.median(runs[args.positions[0]])
    rows = [
        {
            "bundle": args.bundle.name,
            "cache capacity": decoder.kv_cache.max_seq_len,
            "position": q,
            "ms per step (CPU, median)": round(1000 * statistics.median(r), 2),
            "spread ms": f"{1000 * min(r):.2f} to {1000 * max(r):.2f}",
            "x the first position": round(statistics.median(r) / base, 3),
        }
        for q, r in runs.items()
    ]
    for row in rows:
        print(row)
    load = os.getloadavg()
    print(f"load average {load}")
    caption = (
        f"Median of {args.rounds} interleaved rounds of {args.steps} steps at each position, {args.threads} thread(s) in "
        f"ExecuTorch's pool and torch's; load average {load[0]:.1f} at the end (2 cores shared with other work)."
    )
    blocks = record.blocks(NAME, TITLE, caption, note=args.note)
    record.write(NAME, rows, title=TITLE, load_average=list(load), blocks=blocks)


if __name__ == "__main__":
    main()
