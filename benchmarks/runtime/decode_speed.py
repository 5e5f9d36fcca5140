"""Decode-loop speed: tokens per second of `generate_tokens` on a bundle, prefill excluded.

Uses only the public API, so the same script measures any checkout (run it with the venv of
the revision to compare). The default model never emits its end token, so every run decodes
exactly --tokens tokens. On a shared machine wall time swings with the load; the CPU time of
this process (all ORT threads included) is steadier, so both are reported: use --threads 1 to
compare loops.

    python -m benchmarks.runtime.decode_speed BUNDLE [--tokens 128] [--repeats 5] [--threads 0]
"""

from __future__ import annotations

import argparse
import json
import time

import edgemfm

from .. import record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--prompt", default="Tell me a story.")
    args = p.parse_args()
    pipe = edgemfm.load(args.bundle, threads=args.threads)
    rates, cpu_rates = [], []
    for _ in range(args.repeats):
        tokens = pipe.generate_tokens(args.prompt, max_new_tokens=args.tokens)
        next(tokens)  # the first token comes out of prefill
        start, cpu = time.perf_counter(), time.process_time()
        n = 1 + sum(1 for _ in tokens)
        rates.append((n - 1) / (time.perf_counter() - start))
        cpu_rates.append((n - 1) / (time.process_time() - cpu))
    row = {
        "bundle": args.bundle,
        "provider": pipe.provider,
        "tokens": n,
        "best_tok_s": round(max(rates), 1),
        "median_tok_s": round(sorted(rates)[len(rates) // 2], 1),
        "best_cpu_tok_s": round(max(cpu_rates), 1),
    }
    print(json.dumps(row))
    record.write("decode_speed", [row])


if __name__ == "__main__":
    main()
