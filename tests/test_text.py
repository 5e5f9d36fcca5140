"""Decoder-only text families: export each tiny architecture, check component parity and that
greedy tokens equal transformers `generate`."""

from __future__ import annotations

import pytest
import torch
from tiny_text import TEXT_CONFIGS, tiny_text_model

import edgemfm
from edgemfm.cli import main

PROMPT = "Once upon a time, in a land far away"
# The default suite runs the one with the most quirks (sliding window, soft-capping, scaled
# embeddings); every row runs with -m slow.
DEFAULT = ("Gemma2ForCausalLM",)
# What fusion makes of each tiny decoder (3 layers): fused kernels, and the telltale ops left.
# Heads 14 wide (Llama, Mistral, Qwen2, Phi-3) stay MultiHeadAttention: ONNX Runtime's
# GroupQueryAttention takes multiples of 8; the Gemmas' 16-wide heads become one per layer. One
# layer of three keeps its Softmax in these tiny exports (the exporter writes its Kᵀ as a 3-D
# reshape the SDPA rule does not match); Gemma-2's soft-capping (Tanh) keeps its attention unfused.
FUSION = {
    "LlamaForCausalLM": (
        {
            "MultiHeadAttention": 2,
            "QuickGelu": 3,
            "SimplifiedLayerNormalization": 1,
            "SkipSimplifiedLayerNormalization": 6,
        },
        {"Sin": 1, "Softmax": 1},
    ),
    "MistralForCausalLM": (
        {
            "MultiHeadAttention": 2,
            "QuickGelu": 3,
            "SimplifiedLayerNormalization": 1,
            "SkipSimplifiedLayerNormalization": 6,
        },
        {"Sin": 1, "Softmax": 1},
    ),
    "Qwen2ForCausalLM": (
        {
            "MultiHeadAttention": 2,
            "QuickGelu": 3,
            "SimplifiedLayerNormalization": 1,
            "SkipSimplifiedLayerNormalization": 6,
        },
        {"Sin": 1, "Softmax": 1},
    ),
    "Phi3ForCausalLM": (
        {
            "MultiHeadAttention": 2,
            "QuickGelu": 3,
            "SimplifiedLayerNormalization": 1,
            "SkipSimplifiedLayerNormalization": 6,
        },
        {"Sin": 1, "Softmax": 1},
    ),
    "GemmaForCausalLM": (
        {
            "FastGelu": 3,
            "GroupQueryAttention": 2,
            "SimplifiedLayerNormalization": 1,
            "SkipSimplifiedLayerNormalization": 6,
        },
        {"Sin": 1, "Softmax": 1},
    ),
    "Gemma2ForCausalLM": (
        {"FastGelu": 3, "FusedMatMul": 4, "SimplifiedLayerNormalization": 7, "SkipSimplifiedLayerNormalization": 6},
        {"Sin": 1, "Softmax": 3, "Tanh": 4},
    ),
    "Gemma3ForCausalLM": (
        {
            "FastGelu": 3,
            "FusedMatMul": 1,
            "GroupQueryAttention": 2,
            "SimplifiedLayerNormalization": 13,
            "SkipSimplifiedLayerNormalization": 6,
        },
        {"Sin": 1, "Softmax": 1, "Tanh": 1},
    ),
}


@pytest.mark.parametrize(
    "architecture", [a if a in DEFAULT else pytest.param(a, marks=pytest.mark.slow) for a in TEXT_CONFIGS]
)
def test_export_and_greedy_generation_match_transformers(architecture, tmp_path):
    from transformers import AutoModelForCausalLM

    checkpoint = tiny_text_model(architecture, tmp_path / "model")
    out = tmp_path / "bundle"
    assert main(["export", "--model", str(checkpoint), "--device", "host", "--out", str(out)]) == 0
    pipe = edgemfm.load(out)
    assert set(pipe.manifest.components) == {"token_embedding", "text_decoder"}
    parity = pipe.manifest.report.parity
    assert all(p.max_abs_diff <= 1e-4 * p.scale for p in parity.values()), parity
    fusion = parity["text_decoder"].fusion
    assert (fusion.fused_ops, fusion.unfused_ops) == FUSION[architecture]

    ours = list(pipe.generate_tokens(PROMPT, max_new_tokens=20))
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    ids = pipe.prompt_ids(PROMPT)
    assert len(ids) > 6 + 1  # longer than the sliding window: the window matters
    with torch.no_grad():
        generated = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=20, do_sample=False)
    theirs = [t for t in generated[0, len(ids) :].tolist() if t not in pipe.manifest.tokenizer.eos_token_ids]
    assert len(ours) >= 12 and len(set(ours)) > 4  # a real sequence, not an immediate stop or one repeated token
    assert ours == theirs
