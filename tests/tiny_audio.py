"""Tiny audio models built from configs in code: Whisper and Qwen2-Audio, odd sizes, byte tokenizers."""

from __future__ import annotations

from pathlib import Path


def _widen(model) -> None:
    """Wider weights than the init: decisive, varied greedy choices from a random model."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3 if p.dim() == 2 else 0.1)


def tiny_whisper(path: Path, seed: int = 0) -> Path:
    """A Whisper checkpoint: d_model 84 over 6 heads, 2+2 layers, 80 mel bins, 260-token byte vocabulary.

    A small vocabulary needs its own pad/bos/eos/decoder-start ids (the defaults are 50257+) and
    suppress lists inside it (the defaults name ids past its end): here bytes 1, 9, 17 ... are
    suppressed (the random model's favourite, 209, among them), and even bytes at the first step.
    """
    import torch
    from transformers import (
        PreTrainedTokenizerFast,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    from edgemfm.exporters.placeholder import SPECIALS, byte_tokenizer

    tok = byte_tokenizer()
    ids = {s: tok.token_to_id(s) for s in SPECIALS}
    config = WhisperConfig(
        vocab_size=tok.get_vocab_size(),
        d_model=84,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=6,
        decoder_attention_heads=6,
        encoder_ffn_dim=150,
        decoder_ffn_dim=150,
        num_mel_bins=80,
        max_source_positions=1500,
        max_target_positions=64,
        decoder_start_token_id=ids["<s>"],
        bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
        pad_token_id=ids["<pad>"],
        suppress_tokens=list(range(1, 256, 8)),
        begin_suppress_tokens=list(range(0, 256, 2)),
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    _widen(model)
    model.save_pretrained(path)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>").save_pretrained(
        path
    )
    WhisperFeatureExtractor(feature_size=80).save_pretrained(path)
    return path


QWEN2_AUDIO_SPECIALS = ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>", "<|im_start|>", "<|im_end|>")


def tiny_qwen2_audio(path: Path, seed: int = 0, text: dict | None = None) -> Path:
    """A Qwen2-Audio checkpoint: 128-mel encoder (d_model 60, 2 layers), Qwen2 decoder with 3 KV heads (`text`:
    other decoder sizes)."""
    import torch
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2AudioConfig,
        Qwen2AudioEncoderConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2Config,
        WhisperFeatureExtractor,
    )

    from edgemfm.exporters.placeholder import SPECIALS, byte_tokenizer

    tok = byte_tokenizer()
    tok.add_special_tokens(list(QWEN2_AUDIO_SPECIALS))
    ids = {s: tok.token_to_id(s) for s in (*SPECIALS, *QWEN2_AUDIO_SPECIALS)}
    audio = Qwen2AudioEncoderConfig(
        num_mel_bins=128,
        d_model=60,
        encoder_layers=2,
        encoder_attention_heads=3,
        encoder_ffn_dim=100,
        max_source_positions=1500,
    )
    sizes = dict(
        hidden_size=84, intermediate_size=150, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=3
    )
    text = Qwen2Config(
        **(sizes | (text or {})),
        vocab_size=tok.get_vocab_size(),
        max_position_embeddings=1024,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<pad>"],
    )
    config = Qwen2AudioConfig(audio_config=audio, text_config=text, audio_token_index=ids["<|AUDIO|>"])
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(config).eval()
    _widen(model)
    model.save_pretrained(path)
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>", pad_token="<pad>"
    ).save_pretrained(path)
    WhisperFeatureExtractor(feature_size=128).save_pretrained(path)
    return path


WHISPER_SPECIALS = (
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|transcribe|>",
    "<|translate|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nospeech|>",
    "<|notimestamps|>",
)


def tiny_whisper_en(
    path: Path, seed: int = 0, max_source_positions: int = 1500, chunk_length: int = 30, nested: bool = False
) -> Path:
    """An English-only Whisper with Whisper's special tokens and the 1501 timestamps <|0.00|> .. <|30.00|>
    after the byte vocabulary: prompts go after <|startofprev|>, long-form windows follow the timestamps.

    `max_source_positions` and `chunk_length` set the window (150 and 3: a 3 s window); `nested` writes the
    feature extractor inside processor_config.json instead of preprocessor_config.json.
    """
    import json

    import torch
    from transformers import PreTrainedTokenizerFast, WhisperConfig, WhisperFeatureExtractor
    from transformers import WhisperForConditionalGeneration as Whisper

    from edgemfm.exporters.placeholder import byte_tokenizer

    tok = byte_tokenizer()
    tok.add_special_tokens([*WHISPER_SPECIALS, *(f"<|{i * 0.02:.2f}|>" for i in range(1501))])
    ids = {s: tok.token_to_id(s) for s in WHISPER_SPECIALS}
    eot, space = ids["<|endoftext|>"], tok.token_to_id("Ġ")
    config = WhisperConfig(
        vocab_size=tok.get_vocab_size(),
        d_model=84,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=6,
        decoder_attention_heads=6,
        encoder_ffn_dim=150,
        decoder_ffn_dim=150,
        num_mel_bins=80,
        max_source_positions=max_source_positions,
        max_target_positions=96,
        decoder_start_token_id=ids["<|startoftranscript|>"],
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        suppress_tokens=list(range(1, 256, 8)),
        begin_suppress_tokens=[space, eot],
    )
    torch.manual_seed(seed)
    model = Whisper(config).eval()
    _widen(model)
    model.save_pretrained(path)
    # Whisper's own generation settings, as tiny.en's generation_config.json has them (a config derived
    # from the model's, `_from_model_config`, would be read back without them)
    gen = json.loads((path / "generation_config.json").read_text())
    gen.pop("_from_model_config", None)
    gen |= {
        "no_timestamps_token_id": ids["<|notimestamps|>"],
        "prev_sot_token_id": ids["<|startofprev|>"],
        "forced_decoder_ids": [[1, ids["<|notimestamps|>"]]],
        "max_initial_timestamp_index": 50,
        "is_multilingual": False,
        "max_length": config.max_target_positions,
    }
    (path / "generation_config.json").write_text(json.dumps(gen, indent=2))
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=None, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    ).save_pretrained(path)
    extractor = WhisperFeatureExtractor(feature_size=80, chunk_length=chunk_length)
    if nested:
        (path / "processor_config.json").write_text(json.dumps({"feature_extractor": extractor.to_dict()}))
    else:
        extractor.save_pretrained(path)
    return path
