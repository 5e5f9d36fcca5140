"""Per-layer output SQNR of int4 g64 RTN, clip_search and edgemfm's GPTQ on SmolLM2-135M's real layers.

Captures the inputs of 12 linear layers (q_proj, o_proj, gate_proj, down_proj of blocks 1, 14, 28)
on WordNet glosses (the `--wordnet` calibration of smollm2_perplexity.py: 12 lines calibrate, the
other 4 are held out), quantizes each layer alone and prints its output SQNR on the held-out
rows: without and with the int8 per-block activations of MatMulNBits' `accuracy_level=4`
(simulated: symmetric, blocks of 64). It tells a method's per-layer gain from its end-to-end one.

    python -m benchmarks.quantization.gptq_layers --work /tmp/smol     # --work: where smollm2_perplexity.py --wordnet wrote wordnet/

Needs what smollm2_perplexity.py needs, and `apt-get install wordnet-base`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from edgemfm.quantizers import clip_search, gptq

from .. import record, smollm2

LAYERS = [
    f"model.layers.{i}.{p}"
    for i in (1, 14, 28)
    for p in ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj")
]


def _dequant(q: np.ndarray, s: np.ndarray, k: int) -> np.ndarray:
    return (q * s[:, :, None]).reshape(q.shape[0], -1)[:, :k].T


def _int8_blocks(x: np.ndarray, block: int = 64) -> np.ndarray:
    xb = x.reshape(x.shape[0], -1, block)
    s = np.abs(xb).max(axis=2, keepdims=True) / 127 + 1e-30
    return (np.round(xb / s) * s).reshape(x.shape)


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .smollm2_perplexity import wordnet_folder

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True)
    args = p.parse_args()
    lines = (wordnet_folder(args.work / "wordnet") / "glosses.txt").read_text().splitlines()
    path = smollm2.gguf()
    folder, name = path.parent, path.name
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    mods = dict(model.named_modules())
    caps: dict[str, list[np.ndarray]] = {k: [] for k in LAYERS}
    hooks = [
        mods[k].register_forward_pre_hook(
            lambda m, a, k=k: caps[k].append(a[0].reshape(-1, a[0].shape[-1]).double().numpy())
        )
        for k in LAYERS
    ]
    with torch.no_grad():
        for line in lines:
            model(input_ids=torch.tensor([tok(line)["input_ids"]]))
    for h in hooks:
        h.remove()
    table = record.Table(
        "gptq_layers",
        "| layer | calibration rows | RTN | clip_search | GPTQ | RTN a8 | clip_search a8 | GPTQ a8 | float weights a8 |",
    )
    for k in LAYERS:
        cal, held = np.concatenate(caps[k][:12]), np.concatenate(caps[k][12:])
        w = mods[k].weight.detach().numpy().T.astype(np.float32)
        n = w.shape[1]
        absmax = np.abs(w.T.reshape(n, -1, 64)).max(axis=2) / 7
        deq = {
            "rtn": _dequant(np.clip(np.round(w.T.reshape(n, -1, 64) / absmax[:, :, None]), -8, 7), absmax, w.shape[0]),
            "clip": _dequant(*clip_search.quantize_blocks(w, 4, 64, (cal**2).mean(0)), w.shape[0]),
            "gptq": _dequant(*gptq.quantize_blocks(w, 4, 64, cal.T @ cal), w.shape[0]),
        }
        y = held @ w
        sq = lambda x, d: 10 * np.log10((y**2).sum() / ((y - x @ d) ** 2).sum())  # noqa: B023, E731
        cells = [sq(held, d) for d in deq.values()] + [sq(_int8_blocks(held), d) for d in (*deq.values(), w)]
        table.line(f"| {k} | {cal.shape[0]} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    table.write()


if __name__ == "__main__":
    main()
