"""Tiny decoder-only text models, one config row per architecture, with odd sizes and 3 KV heads."""

from __future__ import annotations

from pathlib import Path

# architecture -> config arguments beyond the shared ones: each row exercises that family's quirk
TEXT_CONFIGS = {
    "LlamaForCausalLM": {},
    "MistralForCausalLM": {"sliding_window": 6},
    "Qwen2ForCausalLM": {},  # q/k/v projections with biases
    "Phi3ForCausalLM": {},  # fused qkv and gate_up projections, partial rotary
    "GemmaForCausalLM": {"head_dim": 16},  # embeddings scaled by sqrt(hidden) inside the model
    "Gemma2ForCausalLM": {  # alternating sliding/global layers, attention and final soft-capping
        "head_dim": 16,
        "sliding_window": 6,
        "attn_logit_softcapping": 20.0,
        "final_logit_softcapping": 15.0,
        "query_pre_attn_scalar": 16,
    },
    "Gemma3ForCausalLM": {
        "head_dim": 16,
        "sliding_window": 6,
        "query_pre_attn_scalar": 16,
        "final_logit_softcapping": 15.0,
    },
}
_CONFIG_CLASSES = {
    "LlamaForCausalLM": "LlamaConfig",
    "MistralForCausalLM": "MistralConfig",
    "Qwen2ForCausalLM": "Qwen2Config",
    "Phi3ForCausalLM": "Phi3Config",
    "GemmaForCausalLM": "GemmaConfig",
    "Gemma2ForCausalLM": "Gemma2Config",
    "Gemma3ForCausalLM": "Gemma3TextConfig",
}


def tiny_text_model(architecture: str, path: Path, seed: int = 0) -> Path:
    """A checkpoint of `architecture`: hidden 84, 6 query heads over 3 KV heads, 3 layers, byte tokenizer."""
    import torch
    import transformers

    from edgemfm.exporters.placeholder import SPECIALS, byte_tokenizer

    tok = byte_tokenizer()
    ids = {s: tok.token_to_id(s) for s in SPECIALS}
    config = getattr(transformers, _CONFIG_CLASSES[architecture])(
        hidden_size=84,
        intermediate_size=150,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=3,
        vocab_size=tok.get_vocab_size(),
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
        pad_token_id=ids["<pad>"],
        **TEXT_CONFIGS[architecture],
    )
    torch.manual_seed(seed)
    model = getattr(transformers, architecture)(config).eval()
    with torch.no_grad():  # wider weights than the init: decisive, varied greedy choices
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    model.save_pretrained(path)
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    ).save_pretrained(path)
    return path
