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
from edgemfm.exporters.family import ExportUnit, Family, Finetuning, MediaKnobs, Split, save_pretrained
from edgemfm.exporters.processor_config import fixed_size_preprocess, input_size
from edgemfm.exporters.visual_tokens import grid_pool
from edgemfm.manifest import Component, ImagePreprocess, Media, Preprocess, Prompt, Tokenizer
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


def vision_unit(model: Any, size: tuple[int, int]) -> ExportUnit:
    """The vision encoder (tower, feature selection, projector) taking images of `size` (h, w) px."""
    return ExportUnit(
        module=VisionEncoder(model.model).eval(),
        args=(torch.randn(1, 3, *size),),
        input_names=("pixel_values",),
        output_names=("image_features",),
        dynamic_axes={"pixel_values": {0: "images"}, "image_features": {0: "images"}},
    )


def split(model: Any, model_dir: Path) -> Split:
    from tokenizers import Tokenizer as HFTokenizer

    config = model.config
    pre = image_preprocess(model_dir, config.vision_config)
    tokenizer, tokenizer_file = tokenizer_spec(model_dir, config)
    image_token = HFTokenizer.from_file(str(tokenizer_file)).id_to_token(config.image_token_id)
    if image_token is None:
        raise InputError(f"{model_dir}: image token id {config.image_token_id} is not in tokenizer.json")
    vision = vision_unit(model, input_size(pre))
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


def _grid_side(model_dir: Path, size: int) -> tuple[int, int]:
    """(patches per side at `size` px, class positions of the tower: CLIP 1, SigLIP 0), refused unless
    the patches tile the image."""
    vision = json.loads((Path(model_dir) / "config.json").read_text())["vision_config"]
    patch = vision.get("patch_size", 14)
    if size % patch or size <= 0:
        raise InputError(f"image size {size} px is not available; allowed: multiples of {patch} px")
    return size // patch, int(vision.get("model_type", "clip_vision_model").startswith("clip"))


def resize_tower(model: Any, size: int) -> None:
    """Re-grid the tower's position table for `size`-px images, in place: the patch positions
    interpolated bicubically as transformers' `interpolate_pos_encoding` does at run time (class
    position kept), written into the weights so the exported graph stays one fixed-size tower.

    Example:
        >>> resize_tower(load(Path("models/llava-tiny")), 18)  # doctest: +SKIP
    """
    tower = model.model.vision_tower  # CLIPVisionModel wraps its vision_model; transformers 5 loads it bare
    emb = getattr(tower, "vision_model", tower).embeddings
    side, cls = size // emb.patch_size, emb.num_positions - emb.num_patches
    table = emb.position_embedding.weight.detach()
    old, dim = round(emb.num_patches**0.5), table.shape[1]
    grid = table[cls:].reshape(1, old, old, dim).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)
    table = torch.cat([table[:cls], grid.permute(0, 2, 3, 1).reshape(side * side, dim)])
    emb.position_embedding = torch.nn.Embedding.from_pretrained(table.contiguous(), freeze=True)
    emb.num_patches, emb.num_positions, emb.image_size = side * side, table.shape[0], size
    emb.position_ids = torch.arange(table.shape[0]).expand((1, -1))
    model.config.vision_config.image_size = size


def export_encoder(model_dir: Path, kind: str, setting: tuple, path: Path) -> tuple[Component, int]:
    """`tune`'s vision encoder at `setting` = (image size px,): the tower's positions re-gridded."""
    from edgemfm.exporters.onnx import write_onnx

    _grid_side(model_dir, setting[0])
    model = load(model_dir)
    resize_tower(model, setting[0])
    record, parity = write_onnx(vision_unit(model, (setting[0], setting[0])), path, FAMILY.tolerance)
    return record, parity.nodes


def media_rows(model_dir: Path, kind: str, setting: tuple) -> int:
    """Decoder rows of one image at (size px,): its patches, plus the class row unless the
    "default" feature selection drops the first row."""
    side, cls = _grid_side(model_dir, setting[0])
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return side * side + cls - (config.get("vision_feature_select_strategy", "default") == "default")


# tune's image knob: the image size (resize and crop to it; the tower's positions interpolated to its grid)
MEDIA_KNOBS = MediaKnobs(image=((224,), (336,)), audio=(), export=export_encoder, rows=media_rows)
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
    media_knobs=MEDIA_KNOBS,
    finetune=FINETUNING,
    prunable=TRANSFORMERS,
    visual_tokens=grid_pool,
)
