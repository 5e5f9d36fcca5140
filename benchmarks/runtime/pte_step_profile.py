"""Where a pte decode step's time goes: ExecuTorch's own LLM program beside an edgemfm bundle's, op by op.

Both programs are loaded twice in one process: once plain, for the CPU milliseconds per decode step
at each cache position (interleaved rounds: program a at p, program b at p, ... as
benchmarks/runtime/pte_positions.py times one program), and once with ExecuTorch's ETDump on, for
the time of every instruction of the step (its `Inspector`; each instruction's median over the
steps, so a step preempted on a shared machine moves no figure). The instructions are grouped as
the step's parts: the int4 linears (with their inputs' dynamic int8 conversion), the output head (the
largest linear), the other ops inside XNNPACK, llama::custom_sdpa, llama::update_cache,
the RMSNorms' mean (a portable op in both programs), the other portable ops, and the calls'
own cost (a delegate or operator call's time less the ops it ran: for XNNPACK, also re-planning its
dynamic-shape subgraph at every call). The counts: delegate calls, ops run inside XNNPACK (transposes
among them) and portable/custom operator calls per step. The token table's lookup is its
own method in an edgemfm bundle (`token_embedding`), run once per step beside the decoder.

ETDump's times are wall-clock and its events cost a little each: compare its parts between the
programs, and take the plain loads' CPU ms as the step's cost.

Example:
    $ python -m benchmarks.runtime.pte_step_profile work/smollm2/edgemfm-pte-int4 \\
        --executorch work/smollm2/executorch/smollm2_8da4w.pte --positions 64 500
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from .. import record

NAME = "runtime-pte-step-profile"
TITLE = "pte decode step, op by op: ExecuTorch's own SmolLM2 program beside edgemfm's"
PARTS = (
    "linears",
    "head",
    "other XNNPACK ops",
    "custom_sdpa",
    "update_cache",
    "mean (RMSNorm)",
    "other portable ops",
    "table lookup",
    "delegate call cost",
    "operator call cost",
)
COUNTS = {  # per step: the row's label -> the counter
    "delegate calls": "DELEGATE_CALL",
    "ops inside XNNPACK": "XNNPACK ops",
    "of which transposes": "transposes",
    "portable/custom op calls": "OPERATOR_CALL",
}


class Program:
    """One program's decode step: ExecuTorch's `forward(tokens, input_pos)`, or a bundle's token_embedding +
    text_decoder(inputs_embeds, input_pos)."""

    def __init__(self, path: Path, etdump: bool, bundle: bool):
        import torch
        from executorch.extension.pybindings import portable_lib

        self.program = portable_lib._load_program(str(path), enable_etdump=etdump)
        self.bundle = bundle
        self.token = torch.tensor([[1]])
        if bundle:
            self.embed, self.decoder = (self.program.load_method(m) for m in ("token_embedding", "text_decoder"))
            self.capacity = self.decoder.method_meta().input_tensor_meta(0).sizes()[1]  # inputs_embeds' bound
        else:
            self.forward = self.program.load_method("forward")
            self.capacity = self.program.load_method("get_max_seq_len")([])[0]  # export_llm's metadata method

    def step(self, position: int) -> None:
        """One decode step at `position`: it writes that cache slot and attends over the positions up to it."""
        import torch

        pos = torch.tensor([position])
        if self.bundle:
            self.decoder([self.embed([self.token])[0], pos])
        else:
            self.forward([self.token, pos])

    def cpu_ms(self, position: int, steps: int) -> float:
        start = time.process_time()
        for _ in range(steps):
            self.step(position)
        return 1000 * (time.process_time() - start) / steps


def parts(etdump: Path, slices: dict[int, slice]) -> dict[int, dict]:
    """Per position, the step's parts in ms (sums of each instruction's median over that position's steps) and
    the counts of delegate and operator calls per step."""
    from executorch.devtools import Inspector

    events = [e for b in Inspector(etdump_path=str(etdump)).event_blocks if b.name == "Execute" for e in b.events]
    events = [e for e in events if e.perf_data and e.name != "Method::execute"]
    out = {}
    for position, steps in slices.items():
        ms, calls, inner = Counter(), Counter(), Counter()
        timed = [(e, statistics.median(e.perf_data.raw[steps])) for e in events]
        for e, t in timed:
            if e.name in ("DELEGATE_CALL", "OPERATOR_CALL"):
                calls[e.name] += 1
                ms[e.name] += t
                continue
            inner["DELEGATE_CALL" if e.is_delegated_op else "OPERATOR_CALL"] += t
            calls["XNNPACK ops"] += e.is_delegated_op
            calls["transposes"] += e.name.startswith("Transpose")
            ms[_part(e)] += t
        ms["head"] = max(t for e, t in timed if _part(e) == "linears")  # the output head: the largest linear
        ms["linears"] -= ms["head"]
        ms["delegate call cost"] = ms.pop("DELEGATE_CALL") - inner["DELEGATE_CALL"]
        ms["operator call cost"] = ms.pop("OPERATOR_CALL") - inner["OPERATOR_CALL"]
        out[position] = {"ms": ms, **{label: calls[key] for label, key in COUNTS.items()}}
    return out


def _part(event) -> str:
    """Which part of the step an ETDump event (an op inside XNNPACK, or a portable/custom op) belongs to."""
    name = event.name
    if event.is_delegated_op:
        if name.startswith("Fully Connected"):
            return "linears"
        return "other XNNPACK ops"
    keys = {
        "custom_sdpa": "custom_sdpa",
        "update_cache": "update_cache",
        "mean": "mean (RMSNorm)",
        "embedding": "table lookup",
    }
    return next((part for key, part in keys.items() if key in name), "other portable ops")


def profile(program: Program, positions: list[int], args: argparse.Namespace, path: Path) -> dict[int, dict]:
    """`args.warmup` then `args.steps` steps at each position in turn under ETDump, written to `path`, by part."""
    steps, warmup = args.steps, args.warmup
    slices, done = {}, 0
    for position in positions:
        for _ in range(warmup + steps):
            program.step(position)
        slices[position] = slice(done + warmup, done + warmup + steps)
        done += warmup + steps
    program.program.write_etdump_result_to_file(str(path))
    return parts(path, slices)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path, help="an edgemfm pte bundle of the same model")
    p.add_argument("--executorch", type=Path, required=True, help="ExecuTorch's own program (export_llm's .pte)")
    p.add_argument("--positions", type=int, nargs="+", default=[64, 500])
    p.add_argument("--steps", type=int, default=20, help="decode steps per measurement")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the plain loads; the median is shown")
    p.add_argument("--warmup", type=int, default=3, help="steps before each ETDump measurement")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--note", help="a text file: what the figures say, printed under the table")
    args = p.parse_args()
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (the llama:: kernels)
    import executorch.kernels.quantized  # noqa: F401  (embedding_byte)

    from edgemfm.runtimes.executorch import set_threads

    set_threads(args.threads)  # ExecuTorch's pool and torch's, which custom_sdpa's kernel runs on
    sources = {"executorch": (args.executorch, False), "edgemfm": (args.bundle / "model.pte", True)}
    plain = {name: Program(path, False, bundle) for name, (path, bundle) in sources.items()}
    # a position past a program's cache is left out of its columns (export_llm's SmolLM2 program holds 512)
    cells = [(name, q) for q in args.positions for name in sources if q < plain[name].capacity]
    for name, q in cells:  # warm-up
        plain[name].cpu_ms(q, 2)
    runs: dict[tuple, list[float]] = {cell: [] for cell in cells}
    for _ in range(args.rounds):
        for name, q in cells:
            runs[name, q].append(plain[name].cpu_ms(q, args.steps))
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        split = {
            name: profile(Program(path, True, bundle), [q for n, q in cells if n == name], args, Path(tmp) / name)
            for name, (path, bundle) in sources.items()
        }
    rows = _rows(cells, runs, split)
    for row in rows:
        print(row)
    print(f"load average {load}")
    caption = (
        f"CPU ms per step: median of {args.rounds} interleaved rounds of {args.steps} steps (plain loads); the parts: "
        f"ETDump, each instruction's median over {args.steps} steps after {args.warmup}, summed per part (wall ms, "
        f"with ETDump's own cost). {args.threads} thread(s) in ExecuTorch's pool and torch's; load average "
        f"{load[0]:.1f} (2 cores shared with other work). One token per step (decode); each step writes the slot of "
        "its position and attends over the positions up to it."
    )
    blocks = record.blocks(NAME, TITLE, caption, note=args.note)
    record.write(NAME, rows, title=TITLE, load_average=list(load), blocks=blocks)


def _rows(cells: list[tuple], runs: dict[tuple, list[float]], split: dict[str, dict]) -> list[dict]:
    """One row per figure, one column per program at a position."""
    column = {cell: f"{cell[0]} @ {cell[1]}" for cell in cells}
    rows = [
        {"": "CPU ms per step (median)", **{column[c]: round(statistics.median(runs[c]), 2) for c in cells}},
        {"": "spread, CPU ms", **{column[c]: f"{min(runs[c]):.2f} to {max(runs[c]):.2f}" for c in cells}},
    ]
    for part in (*PARTS, "sum of parts"):
        rows.append(
            {
                "": f"{part}, ms" if part == "sum of parts" else f"{part}, ms (ETDump)",
                **{
                    column[c]: round(
                        sum(split[c[0]][c[1]]["ms"].values())
                        if part == "sum of parts"
                        else split[c[0]][c[1]]["ms"][part],
                        3,
                    )
                    for c in cells
                },
            }
        )
    for count in COUNTS:
        rows.append({"": f"{count} per step", **{column[c]: split[c[0]][c[1]][count] for c in cells}})
    return rows


if __name__ == "__main__":
    main()
