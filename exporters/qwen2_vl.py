"""Qwen2-VL: a dynamic-resolution ViT with 2-D rotary positions and a patch merger, a Qwen2 decoder with M-RoPE.

Components: `vision_encoder` (patches of one image [n, C*T*P*P] and each patch's (row, col) in,
its merged rows [n / merge^2, hidden] out), `token_embedding`, `text_decoder` (position_ids
[3, batch, seq]: temporal, height, width; KV cache in and out).

Dynamic resolution is kept: the tower's only size-dependent inputs are the 2-D rotary positions
and the attention span. transformers computes both from `grid_thw` with Python loops and
`.tolist()` (untraceable), so the runtime computes the patch positions from the manifest
(runtimes/positions.py) and feeds them as an input, and the graph attends over all of its
patches: one image per call, which is exactly the block `cu_seqlens` would give it. The decoder's
3-D positions come from the manifest too (`generation.positions = "mrope"`, the merge size in
`preprocess.image_patches`). Exported with the dynamo ONNX exporter (parity within 1e-4 of the
outputs' magnitude).

Example:
    >>> from edgemfm.exporters.qwen2_vl import FAMILY
    >>> FAMILY.architectures
    ('Qwen2VLForConditionalGeneration',)
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
    CLIP_MEAN,
    CLIP_STD,
    image_processor_config,
    processor_class,
    resample,
    scaling,
)
from edgemfm.exporters.visual_tokens import pixel_budget
from edgemfm.manifest import Component, Generation, ImagePatches, ImagePreprocess, Media, Preprocess, Prompt
from edgemfm.pruners.checkpoint import TRANSFORMERS
from edgemfm.report import SplitReport

IMAGE_PAD, VISION_START, VISION_END, IM_END = "<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_end|>"
# Qwen2-VL's chat template with its default system prompt, one user turn, and the assistant's turn opened.
TEMPLATE = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{media}{prompt}<|im_end|>\n<|im_start|>assistant\n"


class PatchEncoder(torch.nn.Module):
    """patches [n, C*T*P*P], patch_positions [n, 2] -> rows [n / merge^2, text hidden], one image.

    `window` (patches per side, 0: none) limits the blocks not in `full_blocks` to square windows,
    as Qwen2.5-VL does. transformers reorders the patches window by window and back; attention does
    not depend on order (each patch carries its own rotary position), so a mask from the patch
    positions gives the same result without the data-dependent reordering.
    """

    def __init__(self, visual: torch.nn.Module, window: int = 0, full_blocks: tuple[int, ...] = ()):
        super().__init__()
        self.visual, self.window, self.full_blocks = visual, window, set(full_blocks)

    def forward(self, pixel_values, patch_positions):
        from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb_vision

        v = self.visual
        # The patch embedding is a Conv3d whose kernel is the whole patch: one matrix product over
        # the flat patch, the same numbers, and a MatMul every backend runs (ExecuTorch has no 5-D
        # convolution outside XNNPACK's 2-D ones).
        proj = v.patch_embed.proj
        x = torch.nn.functional.linear(pixel_values.to(proj.weight.dtype), proj.weight.flatten(1), proj.bias)
        cos, sin = v.rotary_pos_emb(x, patch_positions)
        n = x.shape[0]
        windowed = None
        if self.window:
            cell = patch_positions // self.window  # [n, 2]: each patch's window (row, col)
            windowed = (cell[:, None, :] == cell[None, :, :]).all(-1)[None, None]
        for i, block in enumerate(v.blocks):
            attn = block.attn
            q, k, val = attn.qkv(block.norm1(x)).reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
            q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
            heads = [t.transpose(0, 1)[None] for t in (q, k, val)]  # [1, heads, n, head_dim]
            mask = None if i in self.full_blocks else windowed
            out = torch.nn.functional.scaled_dot_product_attention(*heads, attn_mask=mask, scale=attn.scaling)
            x = x + attn.proj(out[0].transpose(0, 1).reshape(n, -1))
            x = x + block.mlp(block.norm2(x))
        return v.merger(x)


def load(model_dir: Path) -> Any:
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()


def patches_preprocess(model_dir: Path, vision_config: Any) -> tuple[ImagePreprocess, ImagePatches]:
    """The Qwen2-VL image processor settings of a checkpoint: normalization and the patch layout."""
    cfg = image_processor_config(model_dir)
    processor_class(cfg, ("Qwen2VLImageProcessor",), model_dir, default="Qwen2VLImageProcessor")
    if not cfg.get("do_resize", True):  # the patch grid needs sides in multiples of patch * merge
        raise ExportError(f"{model_dir}: Qwen2VLImageProcessor with do_resize false is not supported; allowed: true")
    size = cfg.get("size") or {}
    patch = int(cfg.get("patch_size", vision_config.patch_size))
    merge = int(cfg.get("merge_size", vision_config.spatial_merge_size))
    temporal = int(cfg.get("temporal_patch_size", vision_config.temporal_patch_size))
    if (patch, merge, temporal) != (
        vision_config.patch_size,
        vision_config.spatial_merge_size,
        vision_config.temporal_patch_size,
    ):
        raise InputError(
            f"{model_dir}: image processor patch/merge/temporal sizes {(patch, merge, temporal)} differ from the vision config's"
        )
    rescale, mean, std = scaling(cfg, CLIP_MEAN, CLIP_STD)
    image = ImagePreprocess(
        size=patch * merge, crop=patch * merge, resample=resample(cfg, 3), rescale=rescale, mean=mean, std=std
    )
    patches = ImagePatches(
        patch=patch,
        temporal_patch=temporal,
        merge=merge,
        min_pixels=int(size.get("shortest_edge", cfg.get("min_pixels", 56 * 56))),
        max_pixels=int(size.get("longest_edge", cfg.get("max_pixels", 28 * 28 * 1280))),
        vision_start=VISION_START,
        vision_end=VISION_END,
    )
    return image, patches


def _example_patches(patches: ImagePatches, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    from edgemfm.runtimes.positions import patch_positions

    dim = 3 * patches.temporal_patch * patches.patch**2
    return torch.randn(grid[0] * grid[1], dim), torch.from_numpy(patch_positions(*grid, patches.merge))


def split(model: Any, model_dir: Path) -> Split:
    from tokenizers import Tokenizer as HFTokenizer

    config = model.config
    image, patches = patches_preprocess(model_dir, config.vision_config)
    tokenizer, tokenizer_file = tokenizer_spec(model_dir, config)
    vocab = HFTokenizer.from_file(str(tokenizer_file)).get_vocab(with_added_tokens=True)
    needed = [IMAGE_PAD, VISION_START, VISION_END, IM_END, "<|im_start|>"]
    if missing := [t for t in needed if t not in vocab]:
        raise InputError(
            f"{tokenizer_file}: token {missing[0]!r} is missing; Qwen2-VL prompts need: {', '.join(needed)}"
        )
    if vocab[IMAGE_PAD] != config.image_token_id:
        raise InputError(
            f"{tokenizer_file}: {IMAGE_PAD} is token {vocab[IMAGE_PAD]}, the config says {config.image_token_id}"
        )
    m, vc = patches.merge, config.vision_config
    # Qwen2.5-VL: window attention except in the full-attention blocks; window_size is in pixels
    window = getattr(vc, "window_size", 0) // vc.patch_size // m * m
    vision = ExportUnit(
        module=PatchEncoder(model.model.visual, window, tuple(getattr(vc, "fullatt_block_indexes", ()))).eval(),
        args=_example_patches(patches, (3 * max(m, window), 2 * max(m, window))),  # non-square, several windows
        input_names=("pixel_values", "patch_positions"),
        output_names=("image_features",),
        dynamic_axes={"pixel_values": {0: "patches"}, "patch_positions": {0: "patches"}, "image_features": {0: "rows"}},
        axis_multiples={"patches": m * m},  # whole merged patches: merge x merge per decoder row
    )
    return Split(
        units={
            "vision_encoder": vision,
            "token_embedding": embedding_unit(model.get_input_embeddings()),
            "text_decoder": decoder_unit(model.model.language_model, model.lm_head, config.text_config, mrope=True),
        },
        prompt=Prompt(
            template=TEMPLATE,
            media={
                "image": Media(
                    IMAGE_PAD,
                    config.image_token_id,
                    "vision_encoder",
                    "pixel_values",
                    "image_features",
                    "patch_positions",
                )
            },
        ),
        preprocess=Preprocess(image=image, image_patches=patches),
        tokenizer=tokenizer,
        tokenizer_file=tokenizer_file,
        generation=Generation(positions="mrope"),
        report=SplitReport(
            notes={"vision_encoder": "dynamic resolution: one image per call, patch positions computed by the runtime"}
        ),
    )


def export_encoder(model_dir: Path, kind: str, setting: tuple, path: Path) -> tuple[Component, int]:
    """`tune`'s encoder at a pixel budget: the same graph (resolution is dynamic: the budget only
    changes how many patches the runtime feeds it), exported again from the checkpoint."""
    from edgemfm.exporters.onnx import write_onnx

    model = load(model_dir)
    record, parity = write_onnx(split(model, model_dir).units["vision_encoder"], path, FAMILY.tolerance)
    return record, parity.nodes


def media_rows(model_dir: Path, kind: str, setting: tuple) -> int:
    """Decoder rows of the largest image within `setting` = (side,): side² pixels, one row per merged patch."""
    import json

    vision = json.loads((Path(model_dir) / "config.json").read_text())["vision_config"]
    unit = vision["patch_size"] * vision["spatial_merge_size"]
    return max(1, (setting[0] * setting[0]) // (unit * unit))


def resize_within(pre: Preprocess, kind: str, setting: tuple) -> Preprocess:
    """The pre-processing at `setting` = (side,): images resized within side² pixels (`max_pixels`)."""
    from dataclasses import replace

    p, budget = pre.image_patches, setting[0] * setting[0]
    return replace(pre, image_patches=replace(p, max_pixels=budget, min_pixels=min(p.min_pixels, budget)))


# tune's image knob: the pixel budget (Qwen2-VL's max_pixels) as a square side; the encoder graph is
# dynamic, so a setting changes the runtime's resize and the visual tokens, not the graph
MEDIA_KNOBS = MediaKnobs(
    image=((224,), (336,), (448,)), audio=(), export=export_encoder, rows=media_rows, preprocess=resize_within
)
# finetune trains the projector on the frozen tower's features (cached), through the frozen decoder
FINETUNING = Finetuning(
    load=load, save=save_pretrained, trainable={"image": "model.visual.merger"}, towers={"image": "model.visual"}
)

FAMILY = Family(
    name="qwen2_vl",
    model_types=("qwen2_vl",),
    architectures=("Qwen2VLForConditionalGeneration",),
    tolerance=1e-4,
    load=load,
    split=split,
    media_knobs=MEDIA_KNOBS,
    finetune=FINETUNING,
    prunable=TRANSFORMERS,
    visual_tokens=pixel_budget,
)
