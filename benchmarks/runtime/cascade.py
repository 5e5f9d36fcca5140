"""Cascade: calibrate the self-test on held-out questions, measure accuracy, escalations, time and memory on others.

Reads the held-out questions of a data folder in `edgemfm finetune`'s format (DATA/eval.jsonl: one
question a line, one image or audio file each). Questions alternate between the two halves (so
each half holds every kind of question): the first calibrates the self-test and its threshold
(`cascade.choose`: of the mean token log-probability, the least sure token's, the first token's
margin, the one escalating the fewest while the cascade's answers differ from the large bundle's on
at most --tolerance of the half; `--against answers`: while its accuracy on the reference answers
is within --tolerance of the large bundle's; written to --out for `edgemfm run --cascade SMALL
--escalate-below FILE`), the second measures accuracy of small only, large only and the cascade
against the reference answers, and the fraction escalated.

Each bundle's answers to every question (tokens, text, self-test scores, CPU seconds) are kept in
--cache, one JSON per bundle (keyed by its manifest's sha256): a rerun, or another small bundle
against the same large one, answers only what is missing. --timed then runs the cascade itself on
the test half, one process per mode (`edgemfm bench LARGE --cascade SMALL`): resident (both bundles
loaded, each question answered by the large bundle alone and by the cascade in alternating order)
and on demand (only the small bundle resident; the large one opened per escalated question),
reporting mean wall and CPU time per question and each process's peak RSS. --repeats N times the
resident mode N times (the on-demand mode once): the result keeps every run, the table shows the median
cascade / large ratio and the runs' range, since one run's ratio moves by a few hundredths under load.
Run the timed step alone under the bench lock once the caches are filled:

    python -m benchmarks.runtime.cascade LARGE SMALL DATA --cache DIR --out cascade.json          # answers, calibration
    flock LOCK python -m benchmarks.runtime.cascade LARGE SMALL DATA --cache DIR --out cascade.json --timed
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from statistics import median

from rich.progress import track

import edgemfm
from edgemfm.cascade_bench import questions
from edgemfm.runtimes.cascade import AGAINST, choose, choose_threshold, normalize
from edgemfm.runtimes.selftests import TESTS, Scores, score

from .. import record


def answers(bundle: Path, items: list[dict], cache: Path, max_new_tokens: int) -> list[dict]:
    """The bundle's answer to every item (text, scores, CPU s), from the cache where it has them."""
    key = hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()[:16]
    path = cache / f"{bundle.name}-{key}-{max_new_tokens}.json"
    done = json.loads(path.read_text()) if path.is_file() else {}
    todo = [i for i in items if _id(i) not in done]
    if todo:
        pipe = edgemfm.load(bundle)
        for n, item in enumerate(track(todo, description=f"{bundle.name} answers")):
            media = {k: item[k] for k in ("images", "audio") if k in item}
            cpu = time.process_time()
            tokens, s = score(pipe.generate_steps(item["question"], max_new_tokens=max_new_tokens, **media))
            text = pipe.tokenizer.decode(tokens, skip_special_tokens=True)
            done[_id(item)] = {"text": text, "tokens": tokens, "scores": vars(s), "cpu_s": time.process_time() - cpu}
            if n % 20 == 19 or n == len(todo) - 1:  # a killed run keeps what it answered
                cache.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(done) + "\n")
    return [done[_id(i)] for i in items]


def _id(item: dict) -> str:
    return json.dumps([item["question"], item.get("images"), item.get("audio")])


def offline(
    items: list[dict], small: list[dict], large: list[dict], tolerance: float, against: str = "large"
) -> tuple[dict, object]:
    """Calibration on the first half (judged `against` the large bundle's answers or the reference ones, as
    `cascade.judge`), every self-test's figures on the second (against the reference), from the answers alone."""
    rows = [
        (
            Scores(**s["scores"]),
            normalize(s["text"]) == normalize(i["answer"]),
            normalize(g["text"]) == normalize(i["answer"]),
        )
        for i, s, g in zip(items, small, large)
    ]
    agrees = [normalize(s["text"]) == normalize(g["text"]) for s, g in zip(small, large)]
    calibrating = [(r[0], a, True) if against == "large" else r for r, a in zip(rows, agrees)][0::2]
    calibration = replace(choose(calibrating, tolerance), against=against)
    test = rows[1::2]
    n = len(test)
    per_test = {}
    for name in TESTS:
        c = choose_threshold([(getattr(s, name), sr, lr) for s, sr, lr in calibrating], tolerance)
        up = [getattr(s, name) < c.threshold for s, _, _ in test]
        per_test[name] = {
            "threshold": round(c.threshold, 4),
            "calibration_escalated": round(c.escalated, 4),
            "escalated": round(sum(up) / n, 4),
            "cascade_accuracy": round(sum(lr if e else sr for (_, sr, lr), e in zip(test, up)) / n, 4),
        }
    chosen = per_test[calibration.test]
    by_type: Counter = Counter()
    for item, (s, sr, lr) in zip(items[1::2], test):
        kind = f"{'image' if 'images' in item else 'audio'}: {item['question']}"
        up = getattr(s, calibration.test) < calibration.threshold
        by_type[(kind, "questions")] += 1
        by_type[(kind, "escalated")] += up
        by_type[(kind, "small_right")] += sr
        by_type[(kind, "cascade_right")] += lr if up else sr
    kinds = sorted({k for k, _ in by_type})
    result = {
        "test_questions": n,
        "calibrated_against": against,
        "small_agrees_with_large": {
            "calibration": round(sum(agrees[0::2]) / len(agrees[0::2]), 4),
            "test": round(sum(agrees[1::2]) / n, 4),
        },
        "self_test": calibration.test,
        "threshold": calibration.threshold,
        "small_accuracy": round(sum(r[1] for r in test) / n, 4),
        "large_accuracy": round(sum(r[2] for r in test) / n, 4),
        "cascade_accuracy": chosen["cascade_accuracy"],
        "escalated": chosen["escalated"],
        "per_test": per_test,
        "by_type": {
            k: {f: by_type[(k, f)] for f in ("questions", "escalated", "small_right", "cascade_right")} for k in kinds
        },
        "small_cpu_ms": round(1e3 * sum(s["cpu_s"] for s in small[1::2]) / n, 1),
        "large_cpu_ms": round(1e3 * sum(g["cpu_s"] for g in large[1::2]) / n, 1),
    }
    return result, calibration


def timed(large: Path, small: Path, data: Path, calibration: Path, on_demand: bool) -> dict:
    """`edgemfm bench LARGE --cascade SMALL` in a process of its own (its peak RSS is the mode's alone)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        command = [sys.executable, "-m", "edgemfm.cli", "bench", str(large), "--cascade", str(small), "--threads", "1"]
        command += ["--escalate-below", str(calibration), "--data", str(data), "--json", str(out)]
        load = os.getloadavg()[0]
        subprocess.run(command + (["--on-demand"] if on_demand else []), check=True)
        report = json.loads(out.read_text())
    report["load_average"] = f"{load:.1f} -> {os.getloadavg()[0]:.1f}"
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("large", type=Path)
    p.add_argument("small", type=Path)
    p.add_argument("data", type=Path, help="a data folder with eval.jsonl (edgemfm finetune's format)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        help="the fraction of the calibration half the cascade may answer "
        "otherwise than the large bundle (--against answers: the accuracy it may lose against it)",
    )
    p.add_argument("--against", choices=AGAINST, default="large", help="what the calibration counts as right")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--cache", type=Path, default=Path("cascade-answers"), help="each bundle's answers, kept here")
    p.add_argument("--out", type=Path, default=Path("cascade.json"), help="the calibration file to write")
    p.add_argument("--timed", action="store_true", help="also run the cascade on the test half, timed (both modes)")
    p.add_argument("--repeats", type=int, default=1, help="--timed: how many times to time the resident mode")
    p.add_argument("--note", type=Path, help="a text file: what the figures say, printed under the table")
    args = p.parse_args()
    if args.repeats < 1:
        p.error(f"--repeats {args.repeats}: at least 1")
    items = questions(args.data, "all")
    large = answers(args.large, items, args.cache, args.max_new_tokens)
    small = answers(args.small, items, args.cache, args.max_new_tokens)
    result, calibration = offline(items, small, large, args.tolerance, args.against)
    calibration.save(args.out)
    size = lambda b: round(sum(f.stat().st_size for f in b.iterdir()) / 2**20, 1)  # noqa: E731
    result |= {
        "small": args.small.name,
        "small_mib": size(args.small),
        "large": args.large.name,
        "large_mib": size(args.large),
    }
    if args.timed:
        result["timed"] = {
            "resident": [timed(args.large, args.small, args.data, args.out, False) for _ in range(args.repeats)],
            "on_demand": [timed(args.large, args.small, args.data, args.out, True)],
        }
        for report in [r for runs in result["timed"].values() for r in runs]:
            expected = [
                large[k] if a["answered_by"] == "large" else small[k]
                for k, a in zip(range(1, len(items), 2), report["answers"])
            ]
            report["answers_as_cached"] = sum(
                normalize(e["text"]) == normalize(a["text"]) for e, a in zip(expected, report["answers"])
            )
            del report["answers"]
    print(json.dumps(result, indent=1))
    blocks = [{"heading": TITLE, "level": 2}, {"code": record.command(), "lang": "bash"}]
    blocks.append({"from": "runtime-cascade.json", "commit": record.commit(), "command": record.command()})
    if args.note:
        blocks.append({"text": args.note.read_text().strip()})
    record.write("runtime-cascade", table_rows(result), title=TITLE, detail=result, blocks=blocks)


CALIBRATED_AGAINST = {"large": "the large bundle's answers", "answers": "the reference answers"}
TITLE = "Cascade: a small bundle answers, a self-test escalates the rest (the demo's held-out questions)"


def table_rows(r: dict) -> list[dict]:
    """One row per mode timed (or one untimed row): what BENCHMARKS.md shows; a mode timed several times shows its
    runs' median times, the median of their ratios with the range, the highest peak RSS and every run's load."""
    head = {
        "small bundle": f"{r['small']} ({r['small_mib']} MiB; large {r['large_mib']} MiB)",
        "small alone": f"{r['small_accuracy']:.1%}",
        "large alone": f"{r['large_accuracy']:.1%}",
        "cascade": f"{r['cascade_accuracy']:.1%} ({100 * (r['cascade_accuracy'] - r['large_accuracy']):+.1f})",
        "escalated": f"{r['escalated']:.1%}",
        "self-test": f"{r['self_test']} < {r['threshold']:.3f}",
        "calibrated against": CALIBRATED_AGAINST[r["calibrated_against"]],
        "answer CPU ms, small / large (untimed pass)": f"{r['small_cpu_ms']} / {r['large_cpu_ms']}",
    }
    rows = []
    for mode, runs in r.get("timed", {}).items():
        t = {k: median(run[k] for run in runs) if k.endswith("_s") else runs[0][k] for k in runs[0]}
        rows.append(
            head
            | {
                "timed mode": mode.replace("_", " "),
                "cascade ms per question (CPU ms)": f"{1e3 * t['cascade_s']:.0f} ({1e3 * t['cascade_cpu_s']:.0f})",
                "large alone ms (CPU ms)": "-"
                if t["large_s"] is None
                else f"{1e3 * t['large_s']:.0f} ({1e3 * t['large_cpu_s']:.0f})",
                "cascade / large": _ratio(runs),
                "timed: escalated, right": f"{t['escalated']:.1%}, {t['cascade_accuracy']:.1%}",
                "RSS MiB: peak, after": f"{max(run['peak_rss_mib'] for run in runs):.0f}, {t['rss_after_mib']:.0f}",
                "load average": "; ".join(run["load_average"] for run in runs),
            }
        )
    return rows or [head]


def _ratio(runs: list[dict]) -> str:
    """Cascade / large, wall (CPU): one run's, or the runs' median with their range and how many."""
    if runs[0]["large_s"] is None:
        return "-"
    wall = [run["cascade_s"] / run["large_s"] for run in runs]
    cpu = [run["cascade_cpu_s"] / run["large_cpu_s"] for run in runs]
    text = f"{median(wall):.2f} ({median(cpu):.2f})"
    if len(runs) > 1:
        text += f": median of {len(runs)} runs, range {min(wall):.2f}-{max(wall):.2f} ({min(cpu):.2f}-{max(cpu):.2f})"
    return text


if __name__ == "__main__":
    main()
