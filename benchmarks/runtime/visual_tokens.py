"""Visual tokens vs first-token time vs fidelity: each checkpoint exported at its full row count and at smaller
`--visual-tokens` budgets, measured side by side in one run.

For every MODEL:N1,N2,... the checkpoint is exported fp32 for the host once per budget (and once
without one: the reference). Each round asks every bundle the same question about each picture in
turn (interleaved), timing the process CPU and wall time to the first generated token. Fidelity: the
share of the reference's greedy answer (`--tokens` tokens) a budget bundle reproduces, position by
position up to the first difference, and how many answers are identical.

    python -m benchmarks.runtime.visual_tokens --work /tmp/vt MODEL_DIR:5,1 OTHER_DIR:16,4

Needs: pip install -e '.[export]'
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from .. import record

QUESTION = "Describe the picture."


def pictures(work: Path, n: int) -> list[Path]:
    """`n` 320x240 drawings (shapes and colours from a fixed seed), saved once."""
    from PIL import Image, ImageDraw

    rng, out = np.random.default_rng(0), []
    for i in range(n):
        path = work / f"picture-{i}.png"
        if not path.exists():
            img = Image.new("RGB", (320, 240), tuple(int(c) for c in rng.integers(180, 255, 3)))
            draw = ImageDraw.Draw(img)
            for _ in range(4):
                x, y = rng.integers(0, 260), rng.integers(0, 180)
                draw.ellipse(
                    (x, y, x + rng.integers(20, 60), y + rng.integers(20, 60)), fill=tuple(rng.integers(0, 255, 3))
                )
            img.save(path)
        out.append(path)
    return out


def export(model: Path, budget: int | None, out: Path) -> Path:
    import edgemfm

    if not out.exists():
        edgemfm.export(edgemfm.ExportConfig(model=str(model), device="host", out=str(out), visual_tokens=budget))
    return out


def first_token(pipe, picture: Path) -> tuple[float, float]:
    """(CPU s, wall s) until the first generated token of QUESTION about `picture`."""
    start, start_cpu = time.perf_counter(), time.process_time()
    next(iter(pipe.generate_tokens(QUESTION, images=[picture], max_new_tokens=1)))
    return time.process_time() - start_cpu, time.perf_counter() - start


def agreement(reference: list[int], answer: list[int]) -> float:
    """The share of `reference` that `answer` repeats from its start."""
    same = next(
        (i for i, (a, b) in enumerate(zip(reference, answer, strict=False)) if a != b), min(len(reference), len(answer))
    )
    return same / max(1, len(reference))


def measure(pipes: dict, pics: list[Path], rounds: int, tokens: int) -> tuple[list[dict], list[float]]:
    times = {k: [] for k in pipes}
    load = []
    for r in range(rounds + 1):  # round 0 warms up
        load.append(float(Path("/proc/loadavg").read_text().split()[0]))
        for key, (pipe, _) in pipes.items():
            for pic in pics:
                t = first_token(pipe, pic)
                if r:
                    times[key].append(t)
    answers = {
        k: [list(p.generate_tokens(QUESTION, images=[x], max_new_tokens=tokens)) for x in pics]
        for k, (p, _) in pipes.items()
    }
    rows = []
    for (model, budget), (pipe, rows_per_image) in pipes.items():
        ref = answers[(model, None)]
        got = answers[(model, budget)]
        cpu = [1000 * c for c, _ in times[(model, budget)]]
        wall = [1000 * w for _, w in times[(model, budget)]]
        full_cpu = statistics.median(1000 * c for c, _ in times[(model, None)])
        rows.append(
            {
                "model": f"{pipe.manifest.family} ({model})",
                "visual tokens per image": str(rows_per_image),
                "first-token CPU ms, median (min-max)": f"{statistics.median(cpu):.1f} ({min(cpu):.1f}-{max(cpu):.1f})",
                "of the full-token CPU ms": f"{100 * statistics.median(cpu) / full_cpu:.0f}%",
                "first-token wall ms": f"{statistics.median(wall):.1f}",
                "fidelity to the full-token answer": f"{np.mean([agreement(a, b) for a, b in zip(ref, got, strict=True)]):.2f}",
                "identical answers": f"{sum(a == b for a, b in zip(ref, got, strict=True))}/{len(ref)}",
            }
        )
    return rows, load[1:]


def main() -> None:
    import edgemfm

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="MODEL_DIR:N1,N2,... checkpoints and their budgets")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--pictures", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--note", type=Path, help="a text file put under the table (what it says)")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    pics = pictures(args.work, args.pictures)
    pipes = {}
    for spec in args.models:
        model, _, budgets = spec.rpartition(":")
        for budget in [None, *map(int, budgets.split(","))]:
            out = export(Path(model), budget, args.work / f"{Path(model).name}-{budget or 'full'}")
            pipe = edgemfm.load(out, threads=1, encoder_cache_mb=0)  # no cache: every repeat encodes its picture
            prepared = pipe.prepare({"image": [pics[0]]})["image"][0].calls
            pipes[(Path(model).name, budget)] = (pipe, max(pipe.encode("image", c).shape[1] for c in prepared))
    rows, load = measure(pipes, pics, args.rounds, args.tokens)
    title = "Visual tokens vs first-token time vs fidelity (export --visual-tokens)"
    caption = (
        f"{args.rounds} interleaved rounds x {len(pics)} pictures (320x240 drawings) per bundle, one thread, fp32 host "
        f"bundles, encoder cache off; fidelity over {args.tokens} greedy tokens; load average (1 min) at each round: "
        f"{' '.join(f'{x:.1f}' for x in load)} on 2 shared cores"
    )
    source = {"from": "runtime-visual-tokens.json", "commit": record.commit(), "command": record.command()}
    blocks = [{"heading": title, "level": 2}, {"code": record.command(), "lang": "bash"}, {"text": caption}, source]
    if args.note:
        blocks.append({"text": args.note.read_text().strip()})
    record.write("runtime-visual-tokens", rows, title=title, load_average=load, blocks=blocks)
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
