"""Side-by-side runs as one table through benchmarks.record: each run's rows with their rounds' spread.

    python -m benchmarks.side_by_side.runs NAME LABEL=RUN.json [LABEL=RUN.json ...] [--title TITLE]

RUN.json is what `python -m benchmarks.side_by_side.run --out PREFIX` wrote for one model
(PREFIX-MODEL.json). Each row keeps its run's label, its median tokens per CPU second and the
range over the run's interleaved rounds, the ratio to the run's own first row (the reference the
run measured beside it), perplexity, size, peak RSS and the load average at the end of its run.
Writes benchmarks/results/NAME.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import record


def rows(label: str, report: dict) -> list[dict]:
    """One run's rows as record rows."""
    results = {n: r for n, r in report["results"].items() if "error" not in r}
    first = next(iter(results.values()))["decode_tokens_per_cpu_s"]
    out = []
    for name, r in results.items():
        rates = r.get("rounds", {}).get("decode_tokens_per_cpu_s", [r["decode_tokens_per_cpu_s"]])
        out.append(
            {
                "run": label,
                "row": name,
                "tok / CPU s": f"{r['decode_tokens_per_cpu_s']:.1f}",
                "range (rounds)": f"{min(rates):.1f}-{max(rates):.1f} ({len(rates)})",
                "x first row": f"{r['decode_tokens_per_cpu_s'] / first:.2f}",
                "perplexity": f"{r['perplexity']:.2f}",
                "on disk MiB": f"{r['size_bytes'] / 2**20:.1f}",
                "peak RSS MiB": f"{r['peak_rss_bytes'] / 2**20:.0f}",
                "load average": " / ".join(map(str, report["machine"]["load_average"])),
                "commit": report["commit"],
            }
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", help="the result file's name")
    p.add_argument("runs", nargs="+", help="LABEL=PATH of a side_by_side run's model JSON")
    p.add_argument("--title", default="Side-by-side runs")
    args = p.parse_args()
    table = []
    for run in args.runs:
        label, _, path = run.partition("=")
        table += rows(label, json.loads(Path(path).read_text()))
    record.write(args.name, table, title=args.title)


if __name__ == "__main__":
    main()
