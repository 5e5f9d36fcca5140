"""Held-out exact match of an exported bundle (ONNX Runtime, no torch) on a data set's eval.jsonl.

Example:
    $ python samples/demo_model/evaluate.py bundles/demo-host work/demo/data
    image: 97.1% of 172   audio: 100.0% of 136
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.progress import track

import edgemfm


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("data", type=Path, help="folder holding eval.jsonl (samples/demo_model/build_dataset.py)")
    args = p.parse_args()
    pipe = edgemfm.load(args.bundle)
    rows = [json.loads(line) for line in (args.data / "eval.jsonl").read_text().splitlines() if line.strip()]
    right: dict[str, int] = {}
    total: dict[str, int] = {}
    for row in track(rows, description="evaluating"):
        kind = "image" if "image" in row else "audio"
        media = {"images" if kind == "image" else "audio": [args.data / row[kind]]}
        got = "".join(pipe.generate(row["prompt"], **media, max_new_tokens=8)).strip()
        total[kind] = total.get(kind, 0) + 1
        right[kind] = right.get(kind, 0) + (got == row["answer"])
    print("   ".join(f"{k}: {right[k] / total[k]:.1%} of {total[k]}" for k in total))


if __name__ == "__main__":
    main()
