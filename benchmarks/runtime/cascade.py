"""Cascade: calibrate the escalation threshold on held-out questions, then measure it on others.

Reads the held-out questions of a data folder in `edgemfm finetune`'s format (DATA/eval.jsonl:
one question a line, one image or audio file each). Questions alternate between the two halves
(so each half holds every kind of question): the first calibrates the threshold (written to
--out for `edgemfm run --cascade SMALL --escalate-below FILE`), the second measures accuracy
of small only, large only and the cascade, and the fraction escalated.

    python -m benchmarks.runtime.cascade LARGE SMALL DATA [--tolerance 0.01] [--out cascade.json]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from rich.progress import track

import edgemfm
from edgemfm.finetune import read_examples
from edgemfm.runtimes.cascade import choose_threshold, judge

from .. import record


def questions(data: Path) -> list[dict]:
    """The held-out questions as cascade items, each with its question type for the breakdown."""
    return [
        {
            "question": e.prompt,
            "answer": e.answer,
            "images" if e.kind == "image" else "audio": [str(e.media)],
            "type": f"{e.kind}: {e.prompt}",
        }
        for e in read_examples(data, "eval")
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("large")
    p.add_argument("small")
    p.add_argument("data", type=Path, help="a data folder with eval.jsonl (edgemfm finetune's format)")
    p.add_argument("--tolerance", type=float, default=0.01, help="accuracy the cascade may lose against large only")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--out", type=Path, default=Path("cascade.json"))
    args = p.parse_args()
    items = questions(args.data)
    large, small = edgemfm.load(args.large), edgemfm.load(args.small)
    rows = [
        judge(small, large, item, args.max_new_tokens) for item in track(items, description="small and large answer")
    ]
    calibration = choose_threshold(rows[0::2], args.tolerance)
    calibration.save(args.out)
    test = list(zip(items[1::2], rows[1::2]))
    up = [score < calibration.threshold for _, (score, _, _) in test]
    n = len(test)
    by_type: Counter[str] = Counter()
    for (item, (_, small_ok, large_ok)), escalated in zip(test, up):
        by_type[(item["type"], "questions")] += 1
        by_type[(item["type"], "escalated")] += escalated
        by_type[(item["type"], "cascade")] += large_ok if escalated else small_ok
    result = {
        "calibration": {
            "questions": calibration.questions,
            "threshold": calibration.threshold,
            "escalated": calibration.escalated,
        },
        "test_questions": n,
        "small_accuracy": round(sum(r[1] for _, r in test) / n, 4),
        "large_accuracy": round(sum(r[2] for _, r in test) / n, 4),
        "cascade_accuracy": round(sum(r[2] if e else r[1] for (_, r), e in zip(test, up)) / n, 4),
        "escalated": round(sum(up) / n, 4),
        "by_type": {
            t: {
                "questions": by_type[(t, "questions")],
                "escalated": by_type[(t, "escalated")],
                "cascade_right": by_type[(t, "cascade")],
            }
            for t in sorted({i["type"] for i, _ in test})
        },
    }
    print(json.dumps(result, indent=1))
    record.write("cascade", [result])


if __name__ == "__main__":
    main()
