"""The edgemfm demo model: EfficientNet-Lite0 eyes, Whisper tiny.en ears, a SmolLM2-135M voice.

    image ─► EfficientNet-Lite0 (frozen) ─► 7x7x1280 map ─► avg-pool 2x2 ─► projector ─► 4 rows
    audio ─► 2 s log-mel ─► Whisper tiny.en encoder (frozen) ─► 100x384 ─► avg-pool 20 ─► projector ─► 5 rows
    "<|im_start|>user\n<image>What digit is this?<|im_end|>\n<|im_start|>assistant\n"
        ─► token embedding, each placeholder replaced by its item's rows ─► SmolLM2 ─► "7"

Components: `vision_encoder` (tower + pooling + projector), `audio_encoder` (likewise),
`token_embedding`, `text_decoder` (KV cache in and out, from exporters/decoder.py). The
projectors are what `edgemfm finetune` trains; everything else comes from the wheels
(exporters/demo_sources.py). Whisper's encoder is cut to a 2 s window: its positional
embeddings are truncated to the first 100 positions (3000 -> 200 mel frames), which the
encoder's convolutions and attention accept unchanged.

The pooling grid is config.json's `vision_grid`: an int n (n x n rows per image) or a pair
[rows, columns], so a budget of 2 rows can be pooled before the projector ([1, 2]) and the
projector trained at it, rather than pooled after a projector trained on 4 rows.

A checkpoint directory holds config.json (model_type "edgemfm-demo"), model.safetensors (all
weights, prefixed vision_tower. / vision_projector. / audio_tower. / audio_projector. /
language_model.) and tokenizer.json (SmolLM2's, plus the <image> and <audio> tokens).

Capabilities (see exporters/family.py): `media_knobs` (tune re-exports an encoder at another image
size and pooling grid, or a shorter Whisper window), `finetune` (the projectors are trained on
frozen tower features), `prunable` (the SmolLM2 decoder, through transformers' Llama layers).

Example:
    >>> from edgemfm.exporters import find_family
    >>> find_family({"model_type": "edgemfm-demo"}).name
    'edgemfm-demo'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from edgemfm.errors import ConfigError, InputError
from edgemfm.exporters.decoder import decoder_unit, embedding_unit
from edgemfm.exporters.family import ExportUnit, Family, Finetuning, MediaKnobs, Prunable, Split
from edgemfm.exporters.visual_tokens import ENCODER, grid_pool
from edgemfm.manifest import AudioPreprocess, Component, ImagePreprocess, Media, Preprocess, Prompt, Tokenizer

MODEL_TYPE = "edgemfm-demo"
TEMPLATE = "<|im_start|>user\n{media}{prompt}<|im_end|>\n<|im_start|>assistant\n"  # SmolLM2's chat format
# EfficientNet-Lite was trained on inputs scaled to [-1, 1] (TF-Lite: (x - 127.5) / 128)
IMAGE = ImagePreprocess(size=224, crop=224, resample="bilinear", rescale=1 / 255, mean=(0.498,) * 3, std=(0.502,) * 3)
AUDIO = AudioPreprocess(sampling_rate=16000, n_fft=400, hop_length=160, n_mels=80, n_samples=32000)  # 2 s clips
POSITIONS_PER_S = 50  # Whisper: 100 mel frames per second, halved by the encoder's stride-2 convolution
# the decoder's shape fields `prune` may rewrite (pruners/structure.py), copied back into config.json
MAP_SIDE = 7  # EfficientNet-Lite0's feature map at 224 px: 7x7 cells, the finest grid worth pooling to
TEXT_SHAPES = ("num_hidden_layers", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim")


def vision_grid(value: Any) -> tuple[int, int]:
    """A `vision_grid` (config.json, or a tune setting) as (rows, columns) of pooled cells.

    Example:
        >>> vision_grid(2), vision_grid([1, 2])
        ((2, 2), (1, 2))
    """
    whole = isinstance(value, int) and not isinstance(value, bool)
    pair = (value, value) if whole else tuple(value) if isinstance(value, (list, tuple)) else ()
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAP_SIDE for v in pair):
        raise ConfigError(
            f"vision_grid {value!r} is not available; allowed: an int n (n x n) or a pair [rows, columns], each 1 to {MAP_SIDE}"
        )
    return pair


def _projector(width: int, hidden: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, hidden))


class DemoModel(torch.nn.Module):
    """The whole demo model as one torch module; `config` is the checkpoint's config.json."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet
        from transformers import LlamaConfig, LlamaForCausalLM, WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        vision_grid(config["vision_grid"])  # a bad grid is refused when the checkpoint is read, not mid-export
        self.config = config
        text = LlamaConfig(**config["text_config"])
        hidden = text.hidden_size
        # Lite models use ReLU6 throughout (set_swish would replace it with swish: never call it)
        self.vision_tower = EfficientNet.from_name("efficientnet-lite0")
        self.vision_projector = _projector(config["vision_width"], hidden)
        self.audio_tower = WhisperEncoder(WhisperConfig(**config["audio_config"]))
        self.audio_projector = _projector(config["audio_config"]["d_model"], hidden)
        self.language_model = LlamaForCausalLM(text)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Frozen tower: [images, 3, 224, 224] -> [images, rows*columns, 1280] (row-major cells)."""
        grid = vision_grid(self.config["vision_grid"])
        fmap = torch.nn.functional.adaptive_avg_pool2d(self.vision_tower.extract_features(pixel_values), grid)
        return fmap.flatten(2).transpose(1, 2)

    def audio_features(self, input_features: torch.Tensor) -> torch.Tensor:
        """Frozen tower: [clips, 80, 200] log-mel -> [clips, 100 / pool, 384]."""
        pool = self.config["audio_pool"]
        states = self.audio_tower(input_features).last_hidden_state
        return states.reshape(states.shape[0], -1, pool, states.shape[-1]).mean(2)

    def embed_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision_projector(self.image_features(pixel_values))

    def embed_audio(self, input_features: torch.Tensor) -> torch.Tensor:
        return self.audio_projector(self.audio_features(input_features))


class _Encoder(torch.nn.Module):
    def __init__(self, model: DemoModel, kind: str):
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, x):
        return self.model.embed_image(x) if self.kind == "image" else self.model.embed_audio(x)


def load(model_dir: Path) -> DemoModel:
    """A demo checkpoint directory -> the torch model in eval mode, fp32."""
    from safetensors.torch import load_model

    model = DemoModel(json.loads((Path(model_dir) / "config.json").read_text()))
    load_model(model, str(Path(model_dir) / "model.safetensors"))
    return model.eval()


def save(model: DemoModel, model_dir: Path) -> None:
    """Write config.json and model.safetensors (tied embeddings stored once)."""
    from safetensors.torch import save_model

    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(model.config, indent=2) + "\n")
    save_model(model, str(model_dir / "model.safetensors"))


def _encoder_unit(model: DemoModel, kind: str) -> ExportUnit:
    name, example = (
        ("pixel_values", torch.randn(1, 3, IMAGE.crop, IMAGE.crop))
        if kind == "image"
        else ("input_features", torch.randn(1, AUDIO.n_mels, AUDIO.n_samples // AUDIO.hop_length))
    )
    out = f"{kind}_features"
    return ExportUnit(
        module=_Encoder(model, kind).eval(),
        args=(example,),
        input_names=(name,),
        output_names=(out,),
        dynamic_axes={name: {0: "items"}, out: {0: "items"}},
    )


def split(model: DemoModel, model_dir: Path) -> Split:
    cfg = model.config
    lm = model.language_model
    media = {
        "image": Media("<image>", cfg["image_token_id"], "vision_encoder", "pixel_values", "image_features"),
        "audio": Media("<audio>", cfg["audio_token_id"], "audio_encoder", "input_features", "audio_features"),
    }
    return Split(
        units={
            "vision_encoder": _encoder_unit(model, "image"),
            "audio_encoder": _encoder_unit(model, "audio"),
            "token_embedding": embedding_unit(lm.get_input_embeddings()),
            "text_decoder": decoder_unit(lm.model, lm.lm_head, lm.config),
        },
        prompt=Prompt(template=TEMPLATE, media=media),
        preprocess=Preprocess(image=IMAGE, audio=AUDIO),
        tokenizer=Tokenizer(
            file="tokenizer.json", bos_token_id=None, eos_token_ids=(cfg["text_config"]["eos_token_id"],)
        ),
        tokenizer_file=Path(model_dir) / "tokenizer.json",
    )


def check_window(window_s: float, config: dict[str, Any]) -> int:
    """Whisper positions of an audio window; refuses one whose rows would not pool evenly."""
    positions = round(window_s * POSITIONS_PER_S)
    pool, limit = config["audio_pool"], config["audio_config"]["max_source_positions"]
    if abs(positions - window_s * POSITIONS_PER_S) > 1e-6 or positions % pool or not 0 < positions <= limit:
        step = pool / POSITIONS_PER_S
        raise InputError(
            f"audio window {window_s:g} s is not available; allowed: multiples of {step:g} s up to {limit / POSITIONS_PER_S:g} s"
        )
    return positions


def export_encoder(model_dir: Path, kind: str, setting: tuple, path: Path) -> tuple[Component, int]:
    """Export the `kind` encoder at `setting` to `path`: (its record, its node count). The tower's
    grid pooling is adaptive; Whisper's positional embeddings are cut to the window."""
    from edgemfm.exporters.onnx import write_onnx

    model = load(model_dir)
    if kind == "image":
        size, grid = setting
        model.config = {**model.config, "vision_grid": grid}  # adaptive pooling: the grid's cells, one row each
        name, example = "pixel_values", torch.randn(1, 3, size, size)
    else:
        positions = check_window(setting[0], model.config)
        tower = model.audio_tower  # Whisper checks the mel length against its positions: cut both
        tower.config.max_source_positions = tower.max_source_positions = positions
        tower.embed_positions = torch.nn.Embedding.from_pretrained(tower.embed_positions.weight[:positions].clone())
        name, example = "input_features", torch.randn(1, AUDIO.n_mels, 2 * positions)
    out = f"{kind}_features"
    unit = ExportUnit(
        module=_Encoder(model, kind).eval(),
        args=(example,),
        input_names=(name,),
        output_names=(out,),
        dynamic_axes={name: {0: "items"}, out: {0: "items"}},
    )
    record, parity = write_onnx(unit, path, FAMILY.tolerance)
    return record, parity.nodes


def media_rows(model_dir: Path, kind: str, setting: tuple) -> int:
    """Decoder rows one image (its grid's cells) or one audio window (positions / pool) becomes."""
    if kind == "image":
        rows, columns = vision_grid(setting[1])
        return rows * columns
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return check_window(setting[0], config) // config["audio_pool"]


def _tokenizer(model_dir: Path) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(Path(model_dir) / "tokenizer.json"))


def _decoder_stack(model: DemoModel, component: str) -> Any:
    from edgemfm.pruners.structure import find_stack

    return find_stack(model.language_model, component)  # a transformers Llama: found like any other


def _save_pruned(model: DemoModel, model_dir: Path) -> None:
    """config.json's text_config follows the sliced decoder's config, so `load` builds the new shapes."""
    lm = model.language_model.config
    shapes = {k: getattr(lm, k) for k in TEXT_SHAPES if getattr(lm, k, None) is not None}
    model.config = {**model.config, "text_config": {**model.config["text_config"], **shapes}}
    save(model, model_dir)


def visual_tokens(split: Split, n: int, family: str) -> tuple[Split, str]:
    """`export --visual-tokens N`: the cells of the checkpoint's own grid (2x2, or 1x2 ...) average-pooled to N.

    Example:
        >>> split, note = visual_tokens(split, 1, "edgemfm-demo")  # doctest: +SKIP
    """
    grid = vision_grid(split.units[ENCODER].module.model.config["vision_grid"])
    return grid_pool(split, n, family, grid)


MEDIA_KNOBS = MediaKnobs(
    image=((160, 1), (160, 2), (224, 1), (224, 2)), audio=(1.2, 2.0), export=export_encoder, rows=media_rows
)
FINETUNING = Finetuning(
    load=load,
    save=save,
    trainable={"image": "vision_projector", "audio": "audio_projector"},
    towers={"image": "vision_tower", "audio": "audio_tower"},
)
PRUNABLE = Prunable(
    components=("text_decoder",),  # the towers are EfficientNet (no transformer stack) and a 4-layer Whisper
    load=load,
    tokenizer=_tokenizer,
    stack=_decoder_stack,
    save=_save_pruned,
)

FAMILY = Family(
    name=MODEL_TYPE,
    model_types=(MODEL_TYPE,),
    architectures=("EdgemfmDemoModel",),
    tolerance=1e-4,
    load=load,
    split=split,
    media_knobs=MEDIA_KNOBS,
    finetune=FINETUNING,
    prunable=PRUNABLE,
    visual_tokens=visual_tokens,
)
