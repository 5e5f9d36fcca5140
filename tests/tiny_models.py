"""Tiny models of each family, built from configs in code with odd sizes, saved as checkpoints."""

from __future__ import annotations

from pathlib import Path


def tiny_llava(path: Path, seed: int = 0, text: dict | None = None) -> Path:
    """A LLaVA checkpoint: CLIP tower (30 px, 6 px patches), GQA Llama decoder with 3 KV heads (`text`: other
    decoder sizes)."""
    from edgemfm.exporters.placeholder import write_llava

    return write_llava(
        path,
        vision=dict(
            hidden_size=36,
            intermediate_size=60,
            num_hidden_layers=2,
            num_attention_heads=3,
            image_size=30,
            patch_size=6,
            projection_dim=36,
        ),
        text=dict(
            hidden_size=84,
            intermediate_size=150,
            num_hidden_layers=3,
            num_attention_heads=6,
            num_key_value_heads=3,
            max_position_embeddings=256,
        )
        | (text or {}),
        seed=seed,
        resize=34,
        crop=30,
    )


def _tokenizer_with(specials: list[str]):
    """The byte-level tokenizer of the default model plus a family's special tokens, and their ids."""
    from edgemfm.exporters.placeholder import SPECIALS, byte_tokenizer

    tok = byte_tokenizer()
    tok.add_special_tokens(specials)
    return tok, {s: tok.token_to_id(s) for s in (*SPECIALS, *specials)}


def _widen(model, seed: int) -> None:
    """Wider weights than the init: decisive, varied greedy choices from a random model."""
    import torch

    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)


IDEFICS3_SPECIALS = ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>", "<|im_start|>"] + [
    f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)
]


def tiny_idefics3(path: Path, seed: int = 0, kind: str = "idefics3", text: dict | None = None) -> Path:
    """An Idefics3 (or, with kind="smolvlm", a SmolVLM) checkpoint: SigLIP tower on 30 px tiles
    (5 px patches), pixel shuffle by 3 (4 rows per tile), GQA Llama decoder with 3 KV heads;
    images resized to 90 px, so a 4:3 picture gives 3 x 3 tiles (`text`: other decoder sizes)."""
    import torch
    import transformers
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    names = {"idefics3": "Idefics3", "smolvlm": "SmolVLM"}[kind]
    tok, ids = _tokenizer_with(IDEFICS3_SPECIALS)
    vision = getattr(transformers, f"{names}VisionConfig")(
        hidden_size=36,
        intermediate_size=60,
        num_hidden_layers=2,
        num_attention_heads=3,
        image_size=30,
        patch_size=5,
    )
    sizes = dict(
        hidden_size=84, intermediate_size=150, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=3
    )
    text = LlamaConfig(
        **(sizes | (text or {})),
        vocab_size=tok.get_vocab_size(),
        max_position_embeddings=512,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
        pad_token_id=ids["<pad>"],
    )
    config = getattr(transformers, f"{names}Config")(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_id=ids["<image>"],
        scale_factor=3,
        pad_token_id=ids["<pad>"],
    )
    torch.manual_seed(seed)
    model = getattr(transformers, f"{names}ForConditionalGeneration")(config).eval()
    _widen(model, seed)
    model.save_pretrained(path)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    images = getattr(transformers, f"{names}ImageProcessorPil")(
        size={"longest_edge": 90}, max_image_size={"longest_edge": 30}
    )
    if kind == "idefics3":
        transformers.Idefics3Processor(image_processor=images, tokenizer=fast, image_seq_len=4).save_pretrained(path)
    else:  # SmolVLMProcessor also wants a video processor, which needs torchvision
        fast.save_pretrained(path)
        images.save_pretrained(path)
    return path


QWEN2_VL_SPECIALS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


def tiny_qwen2_vl(path: Path, seed: int = 0, version: str = "2", text: dict | None = None) -> Path:
    """A Qwen2-VL (version "2") or Qwen2.5-VL ("2.5") checkpoint: ViT with 4 px patches, 2x2 merge,
    3 heads of 12 dims (2.5: three blocks, windows of 16 px, the last block full); Qwen2 decoder with
    3 KV heads of 14 dims and M-RoPE sections (1, 3, 3); images resized within 64 x 64 pixels. `text`: other
    decoder sizes and `mrope_section` (over head_dim / 2); the vision merger's output follows."""
    import torch
    import transformers
    from transformers import PreTrainedTokenizerFast, Qwen2VLImageProcessorPil

    tok, ids = _tokenizer_with(QWEN2_VL_SPECIALS)
    sizes = dict(hidden_size=84, intermediate_size=150, num_attention_heads=6, num_key_value_heads=3)
    sizes |= dict(mrope_section=[1, 3, 3]) | (text or {})
    sections = sizes.pop("mrope_section")
    common = dict(num_heads=3, patch_size=4, spatial_merge_size=2, temporal_patch_size=2)
    if version == "2":
        config_class, model_class = transformers.Qwen2VLConfig, transformers.Qwen2VLForConditionalGeneration
        vision = dict(depth=2, embed_dim=36, hidden_size=sizes["hidden_size"], mlp_ratio=2, **common)
    else:
        config_class, model_class = transformers.Qwen2_5_VLConfig, transformers.Qwen2_5_VLForConditionalGeneration
        vision = dict(
            depth=3,
            hidden_size=36,
            intermediate_size=50,
            out_hidden_size=sizes["hidden_size"],
            window_size=16,
            fullatt_block_indexes=[2],
            **common,
        )
    text = dict(
        **sizes,
        num_hidden_layers=3,
        vocab_size=tok.get_vocab_size(),
        max_position_embeddings=512,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<pad>"],
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": sections},
    )
    config = config_class(
        vision_config=vision,
        text_config=text,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = model_class(config).eval()
    _widen(model, seed)
    model.save_pretrained(path)
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>", pad_token="<pad>"
    ).save_pretrained(path)
    # The image processor alone: Qwen2VLProcessor also wants a video processor, which needs torchvision.
    Qwen2VLImageProcessorPil(
        size={"shortest_edge": 256, "longest_edge": 64 * 64},
        patch_size=4,
        merge_size=2,
        temporal_patch_size=2,
    ).save_pretrained(path)
    return path


def tiny_llama(path: Path, seed: int = 0) -> Path:
    """A LlamaForCausalLM checkpoint: 4 layers, 6 query heads over 3 KV heads of width 10, MLP width 90."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok, ids = _tokenizer_with([])
    config = LlamaConfig(
        hidden_size=60,
        intermediate_size=90,
        num_hidden_layers=4,
        num_attention_heads=6,
        num_key_value_heads=3,
        vocab_size=tok.get_vocab_size(),
        max_position_embeddings=256,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
        pad_token_id=ids["<pad>"],
    )
    model = LlamaForCausalLM(config).eval()
    _widen(model, seed)  # blocks, heads and channels then differ in importance
    model.save_pretrained(path)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>").save_pretrained(
        path
    )
    return path


def tiny_llava_siglip(path: Path, seed: int = 0) -> Path:
    """A LLaVA checkpoint with a SigLIP tower (32 px, 8 px patches, all 16 patch rows kept: no CLS), its
    processor saved whole as transformers 5 does (settings nested in processor_config.json), bilinear."""
    import torch
    from transformers import (
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
        SiglipImageProcessorPil,
        SiglipVisionConfig,
    )

    tok, ids = _tokenizer_with([])
    vision = SiglipVisionConfig(
        hidden_size=36, intermediate_size=60, num_hidden_layers=2, num_attention_heads=3, image_size=32, patch_size=8
    )
    text = LlamaConfig(
        hidden_size=84,
        intermediate_size=150,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=3,
        vocab_size=tok.get_vocab_size(),
        max_position_embeddings=256,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
        pad_token_id=ids["<pad>"],
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=ids["<image>"],
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        image_seq_length=16,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    _widen(model, seed)
    model.save_pretrained(path)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    images = SiglipImageProcessorPil(size={"height": 32, "width": 32}, resample=2)
    LlavaProcessor(
        image_processor=images, tokenizer=fast, patch_size=8, vision_feature_select_strategy="full"
    ).save_pretrained(path)
    return path
