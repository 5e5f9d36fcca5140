"""LLaVA-style vision-language models: a CLIP or SigLIP tower, a projector, a Llama/Qwen2/Mistral decoder.

Components: `vision_encoder` (tower + feature selection + projector, one image in, its token
rows out), `token_embedding`, `text_decoder` (KV cache in and out). The runtime replaces each
image placeholder token with the vision encoder's rows, as LlavaProcessor + the model do.

Exported with the dynamo ONNX exporter (parity within 1e-4 on the tiny test models).

Example:
    >>> from edgemfm.exporters.llava import FAMILY
    >>> FAMILY.architectures
    ('LlavaForConditionalGeneration',)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from edgemfm.errors import InputError
from edgemfm.exporters.decoder import decoder_unit, embedding_unit
from edgemfm.exporters.family import ExportUnit, Family, Finetuning, Split, save_pretrained
from edgemfm.exporters.processor_config import fixed_size_preprocess, input_size
from edgemfm.manifest import ImagePreprocess, Media, Preprocess, Prompt, Tokenizer
from edgemfm.pruners.checkpoint import TRANSFORMERS


class VisionEncoder(torch.nn.Module):
    def __init__(self, llava_model: torch.nn.Module):
        super().__init__()
        self.llava = llava_model

    def forward(self, pixel_values):
        return torch.stack(list(self.llava.get_image_features(pixel_values=pixel_values).pooler_output))


def load(model_dir: Path) -> Any:
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()


def image_preprocess(model_dir: Path, vision_config: Any) -> ImagePreprocess:
    """The checkpoint's CLIP or SigLIP image processor settings (its tower's processor when it saved none).

    Example:
        >>> image_preprocess(Path("models/llava-tiny"), model.config.vision_config).crop  # doctest: +SKIP
        30
    """
    return fixed_size_preprocess(model_dir, vision_config.model_type, vision_config.image_size)


def tokenizer_spec(model_dir: Path, config: Any) -> tuple[Tokenizer, Path]:
    """The fast tokenizer file and the BOS/EOS ids of a checkpoint."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise InputError(f"{model_dir}: no tokenizer.json; edgemfm needs a fast (tokenizers) tokenizer file")
    gen_path = model_dir / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.is_file() else {}
    eos = gen.get("eos_token_id", config.text_config.eos_token_id)
    eos_ids = tuple(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return Tokenizer(file="tokenizer.json", bos_token_id=config.text_config.bos_token_id, eos_token_ids=eos_ids), path


def split(model: Any, model_dir: Path) -> Split:
    from tokenizers import Tokenizer as HFTokenizer

    config = model.config
    pre = image_preprocess(model_dir, config.vision_config)
    tokenizer, tokenizer_file = tokenizer_spec(model_dir, config)
    image_token = HFTokenizer.from_file(str(tokenizer_file)).id_to_token(config.image_token_id)
    if image_token is None:
        raise InputError(f"{model_dir}: image token id {config.image_token_id} is not in tokenizer.json")
    vision = ExportUnit(
        module=VisionEncoder(model.model).eval(),
        args=(torch.randn(1, 3, *input_size(pre)),),
        input_names=("pixel_values",),
        output_names=("image_features",),
        dynamic_axes={"pixel_values": {0: "images"}, "image_features": {0: "images"}},
    )
    return Split(
        units={
            "vision_encoder": vision,
            "token_embedding": embedding_unit(model.get_input_embeddings()),
            "text_decoder": decoder_unit(model.model.language_model, model.lm_head, config.text_config),
        },
        prompt=Prompt(
            template="USER: {media}{prompt} ASSISTANT:",
            media={
                "image": Media(
                    f"{image_token}\n", config.image_token_id, "vision_encoder", "pixel_values", "image_features"
                )
            },
        ),
        preprocess=Preprocess(image=pre),
        tokenizer=tokenizer,
        tokenizer_file=tokenizer_file,
    )


# finetune trains the projector on the frozen tower's features (cached), through the frozen decoder
FINETUNING = Finetuning(
    load=load,
    save=save_pretrained,
    trainable={"image": "model.multi_modal_projector"},
    towers={"image": "model.vision_tower"},
)

FAMILY = Family(
    name="llava",
    model_types=("llava",),
    architectures=("LlavaForConditionalGeneration",),
    tolerance=1e-4,
    load=load,
    split=split,
    finetune=FINETUNING,
    prunable=TRANSFORMERS,
)
