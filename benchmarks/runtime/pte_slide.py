"""What a pte decoder's static cache costs when a generation outgrows it (runtimes/static_cache.py).

Past its window a static cache slides by recompute: it feeds the sink rows and half the recent rows that
fit again at positions 0.., one prefill per half window of tokens. This decodes the same greedy steps
with the bundle's whole window (no slide) and with a narrower one set at load (`load(max_seq_len=...)`,
the same code path as a program exported with that many positions), in interleaved rounds (a load change
hits both alike), and reports decode tokens per CPU second (median and spread), the slides, the rows fed
again, and for how many steps the greedy tokens of the two windows agree.

Example:
    $ python -m benchmarks.runtime.pte_slide work/smollm2-pte-int4 --window 256 --prefill-chunk 252 --steps 768
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from .. import record

NAME = "runtime-pte-slide"
TITLE = "pte static cache past its window: decode speed with slides"
PROMPT = "Write a short story about a lighthouse keeper."


def decode(pipe, steps: int) -> tuple[float, list[int], int, int]:
    """Tokens per CPU second of `steps` greedy steps after the prompt, the tokens, the slides, the rows fed again."""
    import numpy as np

    decoder = pipe.decoder
    cache, ids = decoder.new_cache(), pipe.prompt_ids(PROMPT)
    logits = decoder.prefill(cache, [decoder.embed_ids(ids)])
    fed, tokens, start = decoder.positions, [], time.process_time()
    for _ in range(steps):
        tokens.append(int(np.argmax(logits)))
        logits = decoder.run(cache, decoder.embed_ids(tokens[-1:]))[-1]
    return steps / (time.process_time() - start), tokens, cache.slides, decoder.positions - fed - steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path, help="a pte bundle")
    p.add_argument("--window", type=int, default=256, help="the narrower window (positions), inside the buffers")
    p.add_argument("--prefill-chunk", type=int, help="for the narrower window (at most window - sink tokens)")
    p.add_argument("--steps", type=int, default=768, help="greedy decode steps per run")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--note", help="a text file: what the figures say, printed under the table")
    args = p.parse_args()
    from edgemfm.runtimes.pipeline import load

    narrow = {"max_seq_len": args.window} | ({"prefill_chunk": args.prefill_chunk} if args.prefill_chunk else {})
    pipes = {
        "whole": load(args.bundle, threads=args.threads),
        "narrow": load(args.bundle, threads=args.threads, **narrow),
    }
    runs: dict[str, list] = {name: [] for name in pipes}
    for _ in range(args.rounds):
        for name, pipe in pipes.items():
            runs[name].append(decode(pipe, args.steps))
    load_average = os.getloadavg()
    whole_tokens = runs["whole"][0][1]
    rows = []
    for name, pipe in pipes.items():
        speeds, (_, tokens, slides, again) = [r[0] for r in runs[name]], runs[name][0]
        same = next((i for i, (a, b) in enumerate(zip(tokens, whole_tokens)) if a != b), len(tokens))
        rows.append(
            {
                "bundle": args.bundle.name,
                "window": pipe.decoder.streaming.max_seq_len,
                "decode steps": args.steps,
                "slides": slides,
                "rows fed again": again,
                "tokens per CPU s (median)": round(statistics.median(speeds), 1),
                "spread": f"{min(speeds):.1f} to {max(speeds):.1f}",
                "greedy tokens as the whole window's": same,
            }
        )
        print(rows[-1])
    print(f"load average {load_average}")
    caption = (
        f"Median of {args.rounds} interleaved rounds of {args.steps} greedy steps after a 1-line prompt, "
        f"{args.threads} thread(s); CPU seconds of the decode loop, slides included; load average "
        f"{load_average[0]:.1f} at the end of the timing (2 cores shared with other work)."
    )
    blocks = record.blocks(NAME, TITLE, caption, note=args.note)
    record.write(NAME, rows, title=TITLE, load_average=list(load_average), blocks=blocks)


if __name__ == "__main__":
    main()
