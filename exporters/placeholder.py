"""A small, UNTRAINED LLaVA-style model made deterministically: the fast stand-in of the tests.

The default of `edgemfm export` is the trained demo model (exporters/demo_sources.py); its
export takes minutes, so the default test suite exports this one instead (tests/conftest.py):
a CLIP vision tower (224 px, 32 px patches), a two-layer projector and a Llama decoder with
grouped-query attention, all with weights drawn from a fixed seed, and a byte-level tokenizer
(256 bytes + 4 special tokens). Its answers are meaningless text; it exercises the whole path.

Example:
    >>> path = build(Path("/tmp/edgemfm-default"))   # doctest: +SKIP
    >>> sorted(p.name for p in path.iterdir())[:2]   # doctest: +SKIP
    ['config.json', 'generation_config.json']
"""

from __future__ import annotations

from pathlib import Path

MODEL_ID = "edgemfm-default-untrained"
SPECIALS = ("<s>", "</s>", "<pad>", "<image>")  # ids 256..259, after the 256 byte tokens
SEED = 0


def byte_tokenizer():
    """A byte-level tokenizer: every byte is a token, so any text round-trips."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {token: i for i, token in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIALS))
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return tok


def _printable(byte_token: str) -> bool:
    from tokenizers import decoders

    text = decoders.ByteLevel().decode([byte_token])
    return len(text) == 1 and (text.isalnum() or text in " .,?!'") and text.isascii()


def write_llava(
    path: Path, vision: dict, text: dict, seed: int, resize: int, crop: int, printable_only: bool = False
) -> Path:
    """A LLaVA checkpoint with the byte tokenizer: CLIP tower and Llama decoder of the given sizes.

    Weights are drawn from `seed` at std 0.3 rather than the init's 0.02, whose near-uniform
    logits make greedy choices arbitrary; `printable_only` zeroes the head's rows for all but
    printable ASCII bytes so untrained output stays readable. Tests build their tiny models here.

    Example:
        >>> write_llava(Path("/tmp/m"), dict(hidden_size=36, ...), dict(hidden_size=84, ...), 0, 34, 30)  # doctest: +SKIP
    """
    import torch
    from tokenizers import pre_tokenizers
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        PreTrainedTokenizerFast,
    )

    tok = byte_tokenizer()
    ids = {s: tok.token_to_id(s) for s in SPECIALS}
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**vision),
        text_config=LlamaConfig(
            **text,
            vocab_size=tok.get_vocab_size(),
            bos_token_id=ids["<s>"],
            eos_token_id=ids["</s>"],
            pad_token_id=ids["<pad>"],
        ),
        image_token_id=ids["<image>"],
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
        if printable_only:
            printable = [tok.token_to_id(t) for t in pre_tokenizers.ByteLevel.alphabet() if _printable(t)]
            keep = torch.zeros(model.lm_head.weight.shape[0], dtype=torch.bool)
            keep[printable] = True
            model.lm_head.weight[~keep] = 0.0
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    ).save_pretrained(path)
    CLIPImageProcessorPil(size={"shortest_edge": resize}, crop_size={"height": crop, "width": crop}).save_pretrained(
        path
    )
    return path


def build(path: Path) -> Path:
    """Write the placeholder model as a Hugging Face checkpoint directory at `path`."""
    return write_llava(
        path,
        vision=dict(
            hidden_size=128,
            intermediate_size=512,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=224,
            patch_size=32,
            projection_dim=128,
        ),
        text=dict(
            hidden_size=192,
            intermediate_size=512,
            num_hidden_layers=4,
            num_attention_heads=6,
            num_key_value_heads=2,
            max_position_embeddings=2048,
        ),
        seed=SEED,
        resize=224,
        crop=224,
        printable_only=True,
    )
