"""Speculative decoding: acceptance rate and speed-up of a draft bundle in front of a target bundle.

Runs the target alone and with the draft on the same prompts (greedy), checks the tokens are
identical, and prints tokens/s of both, the acceptance rate and the target calls saved.

    python -m benchmarks.runtime.speculative TARGET DRAFT [--k 4] [--tokens 96] [--image PNG]
"""

from __future__ import annotations

import argparse
import json
import time

import edgemfm

from .. import record

PROMPTS = ("Describe the picture.", "What is in the image?", "Tell me about the colours.")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("target")
    p.add_argument("draft")
    p.add_argument("--k", type=int, default=4, help="tokens the draft proposes per target call")
    p.add_argument("--tokens", type=int, default=96)
    p.add_argument("--image", action="append", default=[])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    alone = edgemfm.load(args.target, threads=args.threads)
    spec = edgemfm.load(args.target, threads=args.threads, draft=args.draft, draft_k=args.k)
    totals = {"alone_s": 0.0, "spec_s": 0.0, "tokens": 0, "proposed": 0, "accepted": 0, "target_calls": 0}
    for prompt in PROMPTS:
        start = time.perf_counter()
        want = list(alone.generate_tokens(prompt, images=args.image, max_new_tokens=args.tokens))
        totals["alone_s"] += time.perf_counter() - start
        start = time.perf_counter()
        got = list(spec.generate_tokens(prompt, images=args.image, max_new_tokens=args.tokens))
        totals["spec_s"] += time.perf_counter() - start
        if got != want:
            raise SystemExit(f"speculative tokens differ from the target's on {prompt!r}")
        totals["tokens"] += len(want)
        for key in ("proposed", "accepted", "target_calls"):
            totals[key] += spec.speculation[key]
    row = {
        "target": args.target,
        "draft": args.draft,
        "k": args.k,
        "identical": True,
        "tokens": totals["tokens"],
        "acceptance": round(totals["accepted"] / max(totals["proposed"], 1), 3),
        "target_calls": totals["target_calls"],
        "alone_tok_s": round(totals["tokens"] / totals["alone_s"], 1),
        "speculative_tok_s": round(totals["tokens"] / totals["spec_s"], 1),
        "speed_up": round(totals["alone_s"] / totals["spec_s"], 2),
    }
    print(json.dumps(row))
    record.write("speculative", [row])


if __name__ == "__main__":
    main()
