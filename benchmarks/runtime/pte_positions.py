"""What a pte decoder's decode step costs at a few cache positions: does it grow with the positions used?

A decode step of the static decoder at position p attends over p + 1 positions (llama::custom_sdpa,
exporters/llm_ops.py) whatever the program's capacity. This feeds one token's embedding to each
bundle's `text_decoder` method at each position, in interleaved rounds (bundle A at a, b, bundle B
at a, b, A ...: a load change hits every row alike), and reports the median CPU seconds per step at
each position and their ratio to the bundle's first position. Several bundles (a float and an int8
KV cache) compare what fewer cache bytes buy; `--text` adds each bundle's perplexity on that text
(edgemfm.bench.perplexity, as `edgemfm bench --text` and the side-by-side table score it).

Example:
    $ python -m benchmarks.runtime.pte_positions work/pte-int4 work/pte-int4-kv8 --positions 64 1024 --text benchmarks/eval_en.txt
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


def _kv_cache(decoder) -> str:
    kv = decoder.kv_cache
    return f"int8 ({kv.scales.replace('_', '-')} scales)" if kv.dtype == "int8" else "float32"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundles", type=Path, nargs="+", help="pte bundles")
    p.add_argument("--positions", type=int, nargs="+", default=[64, 1024])
    p.add_argument("--steps", type=int, default=20, help="decode steps per measurement")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--text", type=Path, help="a text file: each bundle's perplexity on it (after the timing)")
    p.add_argument("--note", help="a text file: what the figures say, printed under the table")
    args = p.parse_args()
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (the llama:: kernels)
    import executorch.kernels.quantized  # noqa: F401
    from executorch.runtime import Runtime

    from edgemfm.bundle import read_manifest
    from edgemfm.runtimes.executorch import load_kernels, set_threads

    set_threads(args.threads)  # ExecuTorch's pool and torch's, which custom_sdpa's kernel runs on
    decoders = {b: read_manifest(b).components["text_decoder"] for b in args.bundles}
    load_kernels(decoders.values())  # an int8 cache's write and attention (runtimes/kernels/int8_cache.cpp)
    methods = {b: Runtime.get().load_program(b / d.file).load_method(d.method) for b, d in decoders.items()}
    hidden = {b: d.inputs[0].shape[-1] for b, d in decoders.items()}
    for bundle, method in methods.items():  # warm-up
        for position in args.positions:
            step_seconds(method, hidden[bundle], position, 2)
    runs: dict[tuple[Path, int], list[float]] = {(b, q): [] for b in args.bundles for q in args.positions}
    for _ in range(args.rounds):
        for bundle, position in runs:
            runs[bundle, position].append(step_seconds(methods[bundle], hidden[bundle], position, args.steps))
    load = os.getloadavg()  # at the end of the timing (the perplexity pass after it is not timed)
    scores = {b: _perplexity(b, args.text, args.threads) for b in args.bundles} if args.text else {}
    rows = []
    for (bundle, q), r in runs.items():
        base = statistics.median(runs[bundle, args.positions[0]])
        rows.append(
            {
                "bundle": bundle.name,
                "KV cache": _kv_cache(decoders[bundle]),
                "cache capacity": decoders[bundle].kv_cache.max_seq_len,
                "position": q,
                "ms per step (CPU, median)": round(1000 * statistics.median(r), 2),
                "spread ms": f"{1000 * min(r):.2f} to {1000 * max(r):.2f}",
                "x the first position": round(statistics.median(r) / base, 3),
                **({f"perplexity ({args.text.name})": round(scores[bundle], 2)} if scores else {}),
            }
        )
    for row in rows:
        print(row)
    print(f"load average {load}")
    caption = (
        f"Median of {args.rounds} interleaved rounds of {args.steps} steps at each position, {args.threads} thread(s) in "
        f"ExecuTorch's pool and torch's; load average {load[0]:.1f} at the end of the timing (2 cores shared with "
        "other work)."
        + (f" Perplexity: edgemfm.bench.perplexity on {args.text.name}, after the timing." if scores else "")
    )
    blocks = record.blocks(NAME, TITLE, caption, note=args.note)
    record.write(NAME, rows, title=TITLE, load_average=list(load), blocks=blocks)


def _perplexity(bundle: Path, text: Path, threads: int) -> float:
    from edgemfm.bench import perplexity
    from edgemfm.runtimes.pipeline import load

    return perplexity(load(bundle, threads=threads), text.read_text(encoding="utf-8"))[0]


if __name__ == "__main__":
    main()
