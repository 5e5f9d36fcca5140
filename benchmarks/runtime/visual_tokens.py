"""Visual tokens vs first-token time vs fidelity: each checkpoint exported at its full row count and at smaller
`--visual-tokens` budgets, measured side by side in one run.

For every MODEL:N1,N2,... the checkpoint (a directory, or `demo`: the built-in demo model) is exported
fp32 for the host once per budget (and once without one: the reference); a bundle already in WORK
(WORK/NAME-N, WORK/NAME-full) is reused. Each round asks every bundle the same question about each picture in
turn (interleaved), timing the process CPU and wall time to the first generated token. Fidelity: the
share of the reference's greedy answer (`--tokens` tokens) a budget bundle reproduces, position by
position up to the first difference, and how many answers are identical. MODEL:N1,...@DATA also scores
each of its bundles on the image questions of DATA/eval.jsonl (the demo's held-out set: held-out exact
match, as benchmarks/side_by_side/demo.py scores it). The curve goes to runtime-visual-tokens.png.

    python -m benchmarks.runtime.visual_tokens --work /tmp/vt demo:2,1@DEMO_DATA MODEL_DIR:5,1 OTHER_DIR:16,4

A checkpoint given with no budget (MODEL:@DATA) is measured at its own rows only: the demo fine-tuned with
its map pooled to 1x2 before the projector (vision_grid [1, 2]) sits beside the demo's 4-row and pooled rows.

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


def export(model: str, budget: int | None, out: Path) -> Path:
    """`model` (a checkpoint directory, or "demo") exported fp32 for the host at `budget` rows per image, once."""
    import edgemfm

    if not out.exists():
        source = None if model == "demo" else model
        edgemfm.export(edgemfm.ExportConfig(model=source, device="host", out=str(out), visual_tokens=budget))
    return out


def parse(spec: str) -> tuple[str, list[int], Path | None]:
    """MODEL:N1,N2[@DATA] -> (MODEL, [N1, N2], DATA or None); MODEL:[@DATA] (no budget): its own rows only."""
    spec, _, data = spec.partition("@")
    model, _, budgets = spec.rpartition(":")
    return model, [int(n) for n in budgets.split(",") if n], Path(data) if data else None


def held_out(pipe, data: Path) -> float:
    """Exact match on the image questions of `data`/eval.jsonl."""
    from edgemfm.exporters.trainee import read_examples

    from ..side_by_side.demo import exact_match

    return exact_match(pipe, [e for e in read_examples(data, "eval") if e.kind == "image"])["image"]


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


def measure(
    pipes: dict, pics: list[Path], rounds: int, tokens: int, data: dict, lock: Path | None
) -> tuple[list[dict], list[float]]:
    times = {k: [] for k in pipes}
    load = []
    with record.timing_lock(lock):
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
    scores = {key: held_out(pipe, data[key[0]]) for key, (pipe, _) in pipes.items() if data.get(key[0])}
    rows = []
    for (model, budget), (pipe, rows_per_image) in pipes.items():
        ref = answers[(model, None)]
        got = answers[(model, budget)]
        cpu = [1000 * c for c, _ in times[(model, budget)]]
        wall = [1000 * w for _, w in times[(model, budget)]]
        full_cpu = statistics.median(1000 * c for c, _ in times[(model, None)])
        score = scores.get((model, budget))
        rows.append(
            {
                "model": f"{pipe.manifest.family} ({model})",
                "visual tokens per image": str(rows_per_image),
                "first-token CPU ms, median (min-max)": f"{statistics.median(cpu):.1f} ({min(cpu):.1f}-{max(cpu):.1f})",
                "of the full-token CPU ms": f"{100 * statistics.median(cpu) / full_cpu:.0f}%",
                "first-token wall ms": f"{statistics.median(wall):.1f}",
                "fidelity to the full-token answer": f"{np.mean([agreement(a, b) for a, b in zip(ref, got, strict=True)]):.2f}",
                "identical answers": f"{sum(a == b for a, b in zip(ref, got, strict=True))}/{len(ref)}",
                "held-out image exact match %": "" if score is None else f"{100 * score:.1f}",
                "vs full (points)": "" if score is None else f"{100 * (score - scores[(model, None)]):+.1f}",
            }
        )
    return rows, load[1:]


def chart(rows: list[dict], out: Path) -> None:
    """The curve: per model, first-token CPU ms (share of full) and fidelity / exact match against visual tokens."""
    from edgemfm.bench import plotting

    plt = plotting(out)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = sorted((r for r in rows if r["model"] == model), key=lambda r: int(r["visual tokens per image"]))
        x = [int(r["visual tokens per image"]) for r in mine]
        left.plot(x, [float(r["of the full-token CPU ms"].rstrip("%")) for r in mine], "o-", label=model)
        right.plot(x, [float(r["fidelity to the full-token answer"]) for r in mine], "o-", label=f"{model}: fidelity")
        if mine[0]["held-out image exact match %"]:
            exact = [float(r["held-out image exact match %"]) / 100 for r in mine]
            right.plot(x, exact, "s--", label=f"{model}: held-out exact match")
    for ax, title in ((left, "first-token CPU ms, % of full"), (right, "fidelity / exact match")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("visual tokens per image")
        ax.set_title(title, fontsize=10)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> None:
    import edgemfm

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="MODEL_DIR:N1,N2,... checkpoints and their budgets")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--pictures", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--note", type=Path, help="a text file put under the table (what it says)")
    p.add_argument("--lock", type=Path, help="a lock file held while timing (a machine shared with other benchmarks)")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    pics = pictures(args.work, args.pictures)
    pipes, data = {}, {}
    for spec in args.models:
        model, budgets, data[Path(model).name] = parse(spec)
        for budget in [None, *budgets]:
            out = export(model, budget, args.work / f"{Path(model).name}-{budget or 'full'}")
            pipe = edgemfm.load(out, threads=1, encoder_cache_mb=0)  # no cache: every repeat encodes its picture
            prepared = pipe.prepare({"image": [pics[0]]})["image"][0].calls
            pipes[(Path(model).name, budget)] = (pipe, max(pipe.encode("image", c).shape[1] for c in prepared))
    rows, load = measure(pipes, pics, args.rounds, args.tokens, data, args.lock)
    png = record.RESULTS / "runtime-visual-tokens.png"
    title = "Visual tokens vs first-token time vs fidelity (export --visual-tokens)"
    caption = (
        f"{args.rounds} interleaved rounds x {len(pics)} pictures (320x240 drawings) per bundle, one thread, fp32 host "
        f"bundles, encoder cache off; fidelity over {args.tokens} greedy tokens; load average (1 min) at each round: "
        f"{' '.join(f'{x:.1f}' for x in load)} on 2 shared cores"
    )
    picture = {"image": f"benchmarks/results/{png.name}", "alt": title}
    blocks = record.blocks("runtime-visual-tokens", title, caption, after=(picture,), note=args.note)
    record.write("runtime-visual-tokens", rows, title=title, load_average=load, blocks=blocks)
    chart(rows, png)  # after record.write: a tracked PNG changed first would make the result's commit "+dirty"
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
