"""Tiny models of each family, built from configs in code with odd sizes, saved as checkpoints."""

from __future__ import annotations

from pathlib import Path


def tiny_llava(path: Path, seed: int = 0) -> Path:
    """A LLaVA checkpoint: CLIP tower (30 px, 6 px patches), GQA Llama decoder with 3 KV heads."""
    import torch
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        PreTrainedTokenizerFast,
    )

    from edgemfm.exporters.default_model import SPECIALS, byte_tokenizer

    tok = byte_tokenizer()
    ids = {s: tok.token_to_id(s) for s in SPECIALS}
    vision = CLIPVisionConfig(
        hidden_size=36, intermediate_size=60, num_hidden_layers=2, num_attention_heads=3,
        image_size=30, patch_size=6, projection_dim=36,
    )
    text = LlamaConfig(
        hidden_size=84, intermediate_size=150, num_hidden_layers=3, num_attention_heads=6,
        num_key_value_heads=3, vocab_size=tok.get_vocab_size(), max_position_embeddings=256,
        bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"],
    )
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=ids["<image>"])
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():  # wider weights than the init: decisive, varied greedy choices
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    model.save_pretrained(path)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>").save_pretrained(path)
    CLIPImageProcessorPil(size={"shortest_edge": 34}, crop_size={"height": 30, "width": 30}).save_pretrained(path)
    return path


def tiny_llama(path: Path, seed: int = 0) -> Path:
    """A LlamaForCausalLM checkpoint: 4 layers, 6 query heads over 3 KV heads of width 10, MLP width 90."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from edgemfm.exporters.default_model import SPECIALS, byte_tokenizer

    tok = byte_tokenizer()
    ids = {s: tok.token_to_id(s) for s in SPECIALS}
    config = LlamaConfig(
        hidden_size=60, intermediate_size=90, num_hidden_layers=4, num_attention_heads=6,
        num_key_value_heads=3, vocab_size=tok.get_vocab_size(), max_position_embeddings=256,
        bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"],
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # wider weights than the init: blocks, heads and channels differ in importance
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    model.save_pretrained(path)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>").save_pretrained(path)
    return path
