"""Idefics3 and SmolVLM: a SigLIP tower, a pixel-shuffle connector, a Llama decoder, image splitting.

Components: `vision_encoder` (tower + pixel shuffle + projection; a batch of square tiles in,
each tile's rows out), `token_embedding`, `text_decoder` (KV cache in and out). An image is cut
into a grid of tiles plus a global view by the runtime (runtimes/tiling.py); each tile is one
encoder call whose rows fill one `<image>` placeholder, and the tile markers around them
(`<fake_token_around_image>`, `<row_R_col_C>`, `<global-img>`) are written into the manifest's
`ImageSplitting`, so the runtime holds no Idefics3 code. The processor writes `image_seq_len`
`<image>` tokens per tile; the bundle writes one and splices the tile's rows in its place.

Tiles always fill the whole tile (the processor resizes to multiples of the tile side), so the
patch mask is all ones and the tower's position ids are fixed: they are computed once with the
model's own bucketing and kept as a constant, which keeps `bucketize` out of the graph.
Exported with the dynamo ONNX exporter (parity within 1e-4 of the outputs' magnitude).

Example:
    >>> from edgemfm.exporters.idefics3 import FAMILY
    >>> FAMILY.model_types
    ('idefics3', 'smolvlm')
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from edgemfm.errors import ExportError, InputError
from edgemfm.exporters.decoder import decoder_unit, embedding_unit
from edgemfm.exporters.family import ExportUnit, Family, Finetuning, MediaKnobs, Split, save_pretrained
from edgemfm.exporters.llava import tokenizer_spec
from edgemfm.exporters.processor_config import (
    IMAGENET_STANDARD,
    image_processor_config,
    processor_class,
    resample,
    scaling,
)
from edgemfm.exporters.visual_tokens import grid_pool
from edgemfm.manifest import Component, ImagePreprocess, ImageSplitting, Media, Preprocess, Prompt
from edgemfm.pruners.checkpoint import TRANSFORMERS
from edgemfm.report import SplitReport

IMAGE, FAKE, GLOBAL, END_OF_UTTERANCE = "<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"


class TileEncoder(torch.nn.Module):
    """tiles [n, 3, S, S] -> rows [n, (S / patch / scale)^2, text hidden]."""

    def __init__(self, model: torch.nn.Module, tile: int):
        super().__init__()
        self.vision, self.connector = model.vision_model, model.connector
        emb = self.vision.embeddings
        side = tile // emb.patch_size
        seen: list[torch.Tensor] = []
        hook = emb.position_embedding.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0]))
        with torch.no_grad():
            emb(torch.zeros(1, 3, tile, tile), torch.ones(1, side, side, dtype=torch.bool))
        hook.remove()
        self.register_buffer("position_ids", seen[0][0].clone(), persistent=False)

    def forward(self, pixel_values):
        emb = self.vision.embeddings
        x = emb.patch_embedding(pixel_values).flatten(2).transpose(1, 2) + emb.position_embedding(self.position_ids)
        x = self.vision.post_layernorm(self.vision.encoder(inputs_embeds=x).last_hidden_state)
        return self.connector(x)


def load(model_dir: Path) -> Any:
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()


def splitting_preprocess(model_dir: Path) -> tuple[ImagePreprocess, ImageSplitting]:
    """The Idefics3 image processor settings of a checkpoint: normalization and the tiling."""
    cfg = image_processor_config(model_dir)
    name = processor_class(
        cfg, ("Idefics3ImageProcessor", "SmolVLMImageProcessor"), model_dir, "Idefics3ImageProcessor"
    )
    for flag in ("do_image_splitting", "do_resize"):  # the runtime's tiling is the processor's with both on
        if not cfg.get(flag, True):
            raise ExportError(f"{model_dir}: {name} with {flag} false is not supported; allowed: true")
    tile = int(cfg.get("max_image_size", {"longest_edge": 364})["longest_edge"])
    rescale, mean, std = scaling(cfg, IMAGENET_STANDARD, IMAGENET_STANDARD)
    image = ImagePreprocess(size=tile, crop=tile, resample=resample(cfg, 1), rescale=rescale, mean=mean, std=std)
    splitting = ImageSplitting(
        longest_edge=int(cfg.get("size", {"longest_edge": 4 * tile})["longest_edge"]),
        tile=tile,
        tile_text=FAKE + "<row_{row}_col_{col}>",
        row_end="\n",
        split_global=f"\n{FAKE}{GLOBAL}",
        single=f"{FAKE}{GLOBAL}",
        end=FAKE,
    )
    return image, splitting


def tile_unit(model: Any, tile: int) -> ExportUnit:
    """The vision encoder on `tile` x `tile` tiles (the tower's positions are bucketed: any tile whose
    patch grid the pixel shuffle divides)."""
    return ExportUnit(
        module=TileEncoder(model.model, tile).eval(),
        args=(torch.randn(2, 3, tile, tile),),
        input_names=("pixel_values",),
        output_names=("image_features",),
        dynamic_axes={"pixel_values": {0: "tiles"}, "image_features": {0: "tiles"}},
        items=2,  # FLOPs are counted per tile
    )


def split(model: Any, model_dir: Path) -> Split:
    from tokenizers import Tokenizer as HFTokenizer

    config = model.config
    image, splitting = splitting_preprocess(model_dir)
    tokenizer, tokenizer_file = tokenizer_spec(model_dir, config)
    vocab = HFTokenizer.from_file(str(tokenizer_file)).get_vocab(with_added_tokens=True)
    needed = [IMAGE, FAKE, GLOBAL, END_OF_UTTERANCE, "<row_1_col_1>"] + ["<|im_start|>"] * (
        config.model_type == "smolvlm"
    )
    if missing := [t for t in needed if t not in vocab]:
        raise InputError(
            f"{tokenizer_file}: token {missing[0]!r} is missing; Idefics3 prompts need: {', '.join(needed)}"
        )
    if vocab[IMAGE] != config.image_token_id:
        raise InputError(f"{tokenizer_file}: {IMAGE} is token {vocab[IMAGE]}, the config says {config.image_token_id}")
    vision = tile_unit(model, splitting.tile)
    # SmolVLM's chat template opens with <|im_start|>; Idefics3's (Llama 3) relies on the tokenizer's BOS.
    start = "<|im_start|>" if config.model_type == "smolvlm" else ""
    return Split(
        units={
            "vision_encoder": vision,
            "token_embedding": embedding_unit(model.get_input_embeddings()),
            "text_decoder": decoder_unit(model.model.text_model, model.lm_head, config.text_config),
        },
        prompt=Prompt(
            template=start + "User:{media}{prompt}" + END_OF_UTTERANCE + "\nAssistant:",
            media={"image": Media(IMAGE, config.image_token_id, "vision_encoder", "pixel_values", "image_features")},
        ),
        preprocess=Preprocess(image=image, image_splitting=splitting),
        tokenizer=tokenizer,
        tokenizer_file=tokenizer_file,
        report=SplitReport(
            notes={
                "vision_encoder": f"one {splitting.tile}x{splitting.tile} tile per batch row; the runtime cuts images into tiles"
            }
        ),
    )


def _tile_side(model_dir: Path, tile: int) -> int:
    """Patches per tile side, refused unless the pixel shuffle divides them."""
    import json

    config = json.loads((Path(model_dir) / "config.json").read_text())
    patch, scale = config["vision_config"]["patch_size"], config["scale_factor"]
    if tile % (patch * scale):
        raise InputError(f"tile size {tile} px is not available; allowed: multiples of {patch * scale} px")
    return tile // patch


def export_encoder(model_dir: Path, kind: str, setting: tuple, path: Path) -> tuple[Component, int]:
    """`tune`'s tile encoder at `setting` = (tile px, tiles per side)."""
    from edgemfm.exporters.onnx import write_onnx

    _tile_side(model_dir, setting[0])
    record, parity = write_onnx(tile_unit(load(model_dir), setting[0]), path, FAMILY.tolerance)
    return record, parity.nodes


def media_rows(model_dir: Path, kind: str, setting: tuple) -> int:
    """Decoder rows of the largest image at (tile px, tiles per side): every tile and the global view."""
    import json

    scale = json.loads((Path(model_dir) / "config.json").read_text())["scale_factor"]
    tiles = setting[1] ** 2 + (setting[1] > 1)
    return tiles * (_tile_side(model_dir, setting[0]) // scale) ** 2


def tiling(pre: Preprocess, kind: str, setting: tuple) -> Preprocess:
    """The pre-processing at (tile px, tiles per side): tiles of that side, the longest edge `tiles` of them."""
    from dataclasses import replace

    tile, grid = setting
    split_ = replace(pre.image_splitting, tile=tile, longest_edge=tile * grid)
    return replace(pre, image=replace(pre.image, size=tile, crop=tile), image_splitting=split_)


# tune's image knob: the tile size (Idefics3's max_image_size) and the tiles per side (its size /
# longest_edge): fewer, smaller tiles are fewer visual tokens
MEDIA_KNOBS = MediaKnobs(
    image=((384, 4), (384, 2), (512, 2), (512, 4)), audio=(), export=export_encoder, rows=media_rows, preprocess=tiling
)
# finetune trains the projector on the frozen tower's features (cached), through the frozen decoder
FINETUNING = Finetuning(
    load=load, save=save_pretrained, trainable={"image": "model.connector"}, towers={"image": "model.vision_model"}
)

FAMILY = Family(
    name="idefics3",
    model_types=("idefics3", "smolvlm"),
    architectures=("Idefics3ForConditionalGeneration", "SmolVLMForConditionalGeneration"),
    tolerance=1e-4,
    load=load,
    split=split,
    media_knobs=MEDIA_KNOBS,
    finetune=FINETUNING,
    prunable=TRANSFORMERS,
    visual_tokens=grid_pool,
)
