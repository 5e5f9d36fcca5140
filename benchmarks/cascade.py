"""Cascade: calibrate the escalation threshold on held-out questions, then measure it on the rest.

Reads a JSONL file of {"question": ..., "answer": ..., "images": [paths relative to the file]};
the first --calibrate fraction calibrates the threshold (written to --out for `edgemfm run
--cascade SMALL --escalate-below FILE`), the rest measures accuracy of small only, large only
and the cascade, and the fraction escalated.

    python benchmarks/cascade.py LARGE SMALL questions.jsonl [--calibrate 0.5] [--tolerance 0.01] [--out cascade.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.progress import track

import edgemfm
from edgemfm.runtimes.cascade import calibrate, mean_logprob, normalize


def read_items(path: Path) -> list[dict]:
    items = []
    for line in path.read_text().splitlines():
        if line.strip():
            item = json.loads(line)
            item["images"] = [str(path.parent / p) for p in item.get("images", [])]
            items.append(item)
    return items


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("large")
    p.add_argument("small")
    p.add_argument("questions", type=Path)
    p.add_argument("--calibrate", type=float, default=0.5, help="fraction of the items used to calibrate")
    p.add_argument("--tolerance", type=float, default=0.01, help="accuracy the cascade may lose against large only")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--out", type=Path, default=Path("cascade.json"))
    args = p.parse_args()
    items = read_items(args.questions)
    split = max(1, int(len(items) * args.calibrate))
    held, test = items[:split], items[split:]
    large, small = edgemfm.load(args.large), edgemfm.load(args.small)
    calibration = calibrate(small, large, held, args.max_new_tokens, args.tolerance)
    calibration.save(args.out)
    right = {"small": 0, "large": 0, "cascade": 0}
    escalated = 0
    for item in track(test, description="measuring"):
        ref = normalize(item["answer"])
        scored = list(small.generate_scored(item["question"], item["images"], (), args.max_new_tokens))
        small_ok = normalize(small.tokenizer.decode([t for t, _ in scored], skip_special_tokens=True)) == ref
        large_ok = normalize("".join(large.generate(item["question"], item["images"], max_new_tokens=args.max_new_tokens))) == ref
        up = mean_logprob(scored) < calibration.threshold
        escalated += up
        right["small"] += small_ok
        right["large"] += large_ok
        right["cascade"] += large_ok if up else small_ok
    n = max(len(test), 1)
    print(json.dumps({
        "calibration": {"questions": calibration.questions, "threshold": calibration.threshold, "escalated": calibration.escalated},
        "test_questions": len(test), **{f"{k}_accuracy": round(v / n, 4) for k, v in right.items()},
        "escalated": round(escalated / n, 4),
    }))


if __name__ == "__main__":
    main()
