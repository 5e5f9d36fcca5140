"""The demo model's finetune reproduced from its public pieces, beside the shipped adapter, and a LoRA run.

Rows, each the held-out exact match of finetune's own evaluation (greedy answers, float PyTorch) on
WORK/data/eval.jsonl (samples/demo_model/build_dataset.py: 172 image and 136 audio questions):

- shipped: the base checkpoint with the committed projectors (exporters/demo_adapter.safetensors,
  what `build_default` loads), evaluated here;
- finetune: `edgemfm finetune --model WORK/base --data WORK/data --cache WORK/features` with the
  defaults, as samples/demo_model/train.sh runs it (the recipe that made the shipped adapter);
- finetune + LoRA: the same with `--lora-rank R` (adapters on every decoder Linear, merged on save).

The issue's bar: the reproduction within 1 point of the shipped adapter. Each finetune's output is
kept under WORK (a rerun measures only what is missing); the frozen towers' features are cached in
WORK/features, shared by every row. Before it, train.sh's first two steps:

    python samples/demo_model/build_dataset.py --out WORK/data
    python -c "from pathlib import Path; from edgemfm.exporters.demo_sources import build_base; build_base(Path('WORK/base'))"
    OMP_NUM_THREADS=2 python -m benchmarks.finetune.demo_reproduction --work WORK [--lora-rank 8]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from benchmarks import record

KINDS = ("image", "audio")


def shipped(work: Path, data: Path) -> dict:
    """The committed adapter on the base checkpoint, scored by finetune's evaluation on the held-out questions."""
    from safetensors.torch import load_file

    from edgemfm.exporters.demo_sources import ADAPTER
    from edgemfm.exporters.trainee import encode_media, load_trainee
    from edgemfm.finetune import evaluate, read_data

    _, held_out = read_data(data)
    t = load_trainee(work / "base")
    t.model.load_state_dict({k: v.float() for k, v in load_file(str(ADAPTER)).items()}, strict=False)
    t.model.requires_grad_(False)
    feats = encode_media(t, sorted({(e.kind, e.media) for e in held_out}), None, work / "features")
    return evaluate(t, held_out, feats, None)


def trained(work: Path, data: Path, out: str, args: argparse.Namespace, lora_rank: int) -> dict:
    """`edgemfm finetune`'s report for one run, trained now unless WORK/out holds it already."""
    from edgemfm.configs import FinetuneConfig
    from edgemfm.finetune import finetune

    report = work / out / "finetune.json"
    if not report.is_file():
        steps = {} if args.steps is None else {"steps": args.steps, "align_steps": args.steps}
        config = FinetuneConfig(
            str(work / "base"), str(data), str(work / out), cache=str(work / "features"), lora_rank=lora_rank, **steps
        )
        finetune(config)
    return json.loads(report.read_text())


def row(name: str, result: dict, reference: float | None, seconds: float | None) -> dict:
    """One table row: right / questions per media kind, all of them, and the points from the shipped adapter."""
    right = {k: round(result["accuracy"][k] * result["questions"][k]) for k in KINDS if k in result["questions"]}
    total = sum(result["questions"].values())
    overall = 100 * sum(right.values()) / total
    out = {"run": name}
    for k in right:
        n = result["questions"][k]
        out[f"{k} questions"] = f"{right[k]} / {n} = {100 * right[k] / n:.1f}%"
    out["all"] = f"{sum(right.values())} / {total} = {overall:.1f}%"
    out["points vs shipped"] = "-" if reference is None else f"{overall - reference:+.1f}"
    out["finetune s (wall)"] = "-" if seconds is None else f"{seconds:.0f}"
    out["load average (when recorded)"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="holds data/ and base/ (train.sh's first steps)")
    p.add_argument("--lora-rank", type=int, default=8, help="rank of the LoRA run (0: no LoRA row)")
    p.add_argument("--steps", type=int, help="alignment and tuning steps, for a quick check only (default: finetune's)")
    args = p.parse_args()
    data = args.work / "data"
    base = shipped(args.work, data)
    reference = 100 * sum(round(base["accuracy"][k] * base["questions"][k]) for k in base["questions"])
    reference /= sum(base["questions"].values())
    rows = [row("shipped adapter (exporters/demo_adapter.safetensors)", base, None, None)]
    recipe = "defaults, as train.sh" if args.steps is None else f"{args.steps} + {args.steps} steps, a check only"
    runs = [(f"finetune ({recipe})", "trained", 0)]
    if args.lora_rank:
        runs.append((f"finetune --lora-rank {args.lora_rank} ({recipe})", f"lora-r{args.lora_rank}", args.lora_rank))
    for name, out, rank in runs:
        report = trained(args.work, data, out, args, rank)
        rows.append(row(name, report, reference, report["seconds"]))
        print(json.dumps(rows[-1]), flush=True)
    record.write(
        "finetune-demo-reproduction",
        rows,
        title="The demo model: `edgemfm finetune` from its public pieces beside the shipped adapter, and with LoRA",
    )


if __name__ == "__main__":
    main()
