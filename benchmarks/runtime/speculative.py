"""Speculative decoding: a target bundle alone and with each draft, interleaved, on one prompt set.

Rows: the target alone, each `--alone` bundle alone (the same model exported another way, e.g. on ONNX
Runtime's own kernels), then the target with each `--draft` (a bundle, or `prompt` for prompt
lookup) with k chosen from measured costs, and with `--fixed-k K` also each draft at a fixed k; then each
`--lookahead` bundle (the target exported again with a lookahead head, `edgemfm lookahead`) alone, drafting
with its head alone, and with its head and prompt lookup (`--draft lookahead`).
Every repeat runs every row over the whole set in turn (rows rotated each repeat); each row's
tokens must equal the target's alone. Reported per row: median and spread (min-max) over the
repeats of wall and process CPU seconds, tokens per CPU second, the speed-up over the target
alone in the same repeat (wall and CPU), the acceptance, target calls per 100 tokens, the mean k,
and the measured costs: ms per draft token and per target call by tokens checked. ONNX Runtime
runs one thread, so CPU seconds are the compute a row spends whatever the machine's load.

Sets: `demo` (open questions about an image: long answers) and `code` (code_edits.py: rename a
name in a standard-library function; answers copy the prompt).

    python -m benchmarks.runtime.speculative TARGET --draft DRAFT [--draft prompt] [--alone BUNDLE] [--lookahead TARGET_LA]
        [--set demo|code] [--fixed-k 4] [--tokens 64] [--repeats 5] [--image PNG] [--name runtime-speculative]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import edgemfm
from edgemfm.runtimes.lookahead import LookaheadDraft

from .. import record
from . import code_edits

DEMO = ("Write a short story about a robot.", "Explain how a bicycle works.", "Describe a day at the beach.")
COSTS = ("acceptance", "target calls / 100 tok", "mean k", "draft ms / token", "target ms by tokens checked")
TITLE = "Speculative decoding: the target alone, with a draft bundle, with prompt lookup"


def prompts(name: str, count: int) -> list[str]:
    return list(DEMO[:count]) if name == "demo" else [e.prompt for e in code_edits.build(count)]


def answer(pipe, prompts: list[str], images: list[str], tokens: int) -> tuple[list[list[int]], float, float, dict]:
    """Every prompt's tokens, the wall and CPU seconds of all of them, and the summed speculation counts."""
    wall, cpu = time.perf_counter(), time.process_time()
    out, counts = [], {"proposed": 0, "accepted": 0, "target_calls": 0, "k": []}
    for prompt in prompts:
        out.append(list(pipe.generate_tokens(prompt, images=images, max_new_tokens=tokens)))
        for key in counts if pipe.draft is not None else ():
            counts[key] += pipe.speculation[key]
    return out, time.perf_counter() - wall, time.process_time() - cpu, counts


def spread(values: list[float], digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def measure(args, rows: dict[str, edgemfm.Pipeline]) -> list[dict]:
    texts = prompts(args.set, args.prompts)
    for pipe in rows.values():  # warm-up: sessions' first runs allocate; adaptive rows measure their costs
        answer(pipe, texts[:1], args.image, args.tokens)
    runs: dict[str, list] = {name: [] for name in rows}
    loads, names = [], list(rows)
    for r in range(args.repeats):
        loads.append(loadavg())
        for name in names[r % len(names) :] + names[: r % len(names)]:
            runs[name].append(answer(rows[name], texts, args.image, args.tokens))
    want = runs[names[0]][0][0]
    table = []
    for name, got in runs.items():
        if any(g[0] != want for g in got):
            raise SystemExit(f"row {name!r}: tokens differ from the target's alone")
        tokens = sum(map(len, want))
        counts = got[-1][3]
        row = {
            "row": name,
            "tokens": tokens,
            "wall s": spread([g[1] for g in got]),
            "CPU s": spread([g[2] for g in got]),
            "tok / CPU s": spread([tokens / g[2] for g in got], 1),
            "speed-up, wall": spread([a[1] / g[1] for a, g in zip(runs[names[0]], got)]),
            "speed-up, CPU": spread([a[2] / g[2] for a, g in zip(runs[names[0]], got)]),
        }
        s = rows[name].speculation if rows[name].draft is not None else None
        if s is None:  # the target alone: the same columns, so the table's header has them all
            row |= dict.fromkeys(COSTS, "-")
        else:
            row |= {
                COSTS[0]: f"{counts['accepted'] / max(counts['proposed'], 1):.1%}",
                COSTS[1]: f"{100 * counts['target_calls'] / tokens:.0f}",
                COSTS[2]: f"{statistics.mean(counts['k']):.1f}",
                COSTS[3]: s["draft_ms"],
                COSTS[4]: ", ".join(f"{n}: {ms:.1f}" for n, ms in s["target_ms"].items()),
            }
        table.append(row)
        print(row, flush=True)
    table.append({"row": "load average (1 min) at each repeat", "tokens": " ".join(f"{x:.1f}" for x in loads)})
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("target")
    p.add_argument("--draft", action="append", default=[], help="a draft bundle, or 'prompt' (repeat for several)")
    p.add_argument(
        "--lookahead",
        action="append",
        default=[],
        help="the target exported with a lookahead head (repeat for several)",
    )
    p.add_argument(
        "--alone", action="append", default=[], help="another bundle of the model, timed alone (repeat for several)"
    )
    p.add_argument("--fixed-k", type=int, help="also each draft at this fixed k")
    p.add_argument("--set", choices=("demo", "code"), default="demo")
    p.add_argument("--prompts", type=int, default=3, help="prompts taken from the set")
    p.add_argument("--tokens", type=int, default=64, help="tokens per answer")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--image", action="append", default=[])
    p.add_argument("--name", default="runtime-speculative", help="the results file's name")
    p.add_argument("--note", help="a text file: what the figures say, printed under the table")
    args = p.parse_args()
    rows = {"target alone": edgemfm.load(args.target, threads=1)}
    for bundle in args.alone:
        rows[f"{Path(bundle).name} alone"] = edgemfm.load(bundle, threads=1)
    for draft in args.draft:
        label = "prompt lookup" if draft == "prompt" else f"draft {Path(draft).name}"
        rows[f"{label}, k by cost"] = edgemfm.load(args.target, threads=1, draft=draft)
        if args.fixed_k:
            rows[f"{label}, k={args.fixed_k}"] = edgemfm.load(args.target, threads=1, draft=draft, draft_k=args.fixed_k)
    for bundle in args.lookahead:  # and the bundle alone: what computing the head costs when nothing reads it
        name = Path(bundle).name
        rows[f"{name} alone"] = edgemfm.load(bundle, threads=1)
        rows[f"lookahead head of {name} alone, k by cost"] = head = edgemfm.load(bundle, threads=1, draft="lookahead")
        head.draft = LookaheadDraft(head, lookup=False)
        rows[f"lookahead head of {name} and prompt lookup, k by cost"] = edgemfm.load(
            bundle, threads=1, draft="lookahead"
        )
    table = measure(args, rows)
    title = f"{TITLE}: {Path(args.target).name}, {args.set} set"
    record.write(args.name, table, title=title, blocks=record.blocks(args.name, title, note=args.note))


if __name__ == "__main__":
    main()
