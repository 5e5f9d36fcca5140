"""Qwen2-Audio: a Whisper-style audio encoder, a linear projector and a Qwen2 decoder.

Components: `audio_encoder` (encoder + average pooling + projector: one clip's padded mel
features and its count of real frames in, one row per audio token out), `token_embedding`,
`text_decoder` (KV cache in and out). The runtime replaces the prompt's one `<|AUDIO|>` token
with the encoder's rows, through the manifest's media entry, as Qwen2AudioProcessor + the model
do. The number of rows follows the clip's length, as in the processor:

    frames = ceil(samples / hop)          (real frames among the 3000 padded ones)
    encoder positions = (frames - 1) // 2 + 1     (attention is masked beyond them)
    rows = (positions - 2) // 2 + 1               (after the stride-2 average pooling)

Exported with the dynamo ONNX exporter; parity within 1e-4 on the tiny test models.

Example:
    >>> from edgemfm.exporters.qwen2_audio import FAMILY
    >>> FAMILY.architectures
    ('Qwen2AudioForConditionalGeneration',)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from edgemfm.errors import InputError
from edgemfm.exporters.decoder import decoder_unit, embedding_unit
from edgemfm.exporters.family import ExportUnit, Family, Finetuning, MediaKnobs, Split, save_pretrained
from edgemfm.exporters.text import tokenizer_spec
from edgemfm.exporters.whisper import audio_preprocess
from edgemfm.manifest import Component, Media, Preprocess, Prompt
from edgemfm.pruners.checkpoint import TRANSFORMERS

# Qwen2AudioProcessor's chat template for one clip and one question
TEMPLATE = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n{media}{prompt}<|im_end|>\n<|im_start|>assistant\n"
)
PLACEHOLDER = "Audio 1: <|audio_bos|>{token}<|audio_eos|>\n"


class AudioEncoder(torch.nn.Module):
    """Mel features [b, mels, 3000] and real frame counts [b] -> the real rows, projected [rows, hidden]."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.tower, self.projector = model.audio_tower, model.multi_modal_projector

    def forward(self, input_features, frames):
        from transformers.masking_utils import create_bidirectional_mask

        positions, rows = self.tower._get_feat_extract_output_lengths(frames)
        span = torch.arange(self.tower.config.max_source_positions, device=frames.device)
        mask = create_bidirectional_mask(
            config=self.tower.config,
            inputs_embeds=input_features.new_zeros(input_features.shape[0], span.shape[0], 1),
            attention_mask=(span[None, :] < positions[:, None]).long(),
        )
        features = self.projector(self.tower(input_features, attention_mask=mask).last_hidden_state)
        return features[torch.arange(features.shape[1], device=frames.device)[None, :] < rows[:, None]]


def load(model_dir: Path) -> Any:
    from transformers import Qwen2AudioForConditionalGeneration

    return Qwen2AudioForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()


def encoder_unit(model: Any, n_mels: int) -> ExportUnit:
    """The audio encoder at the tower's window: exactly 2 x max_source_positions mel frames in."""
    frames = 2 * model.model.audio_tower.config.max_source_positions  # tune may have cut the tower's window
    return ExportUnit(
        module=AudioEncoder(model.model).eval(),
        args=(torch.randn(1, n_mels, frames), torch.tensor([min(1234, frames)], dtype=torch.int64)),
        input_names=("input_features", "frames"),
        output_names=("audio_features",),
        dynamic_axes={"audio_features": {0: "audio_tokens"}},
    )


def split(model: Any, model_dir: Path) -> Split:
    from tokenizers import Tokenizer as HFTokenizer

    config = model.config
    pre = audio_preprocess(model_dir, config.audio_config)
    tokenizer, tokenizer_file = tokenizer_spec(model_dir, config.text_config)
    audio_token = HFTokenizer.from_file(str(tokenizer_file)).id_to_token(config.audio_token_id)
    if audio_token is None:
        raise InputError(f"{model_dir}: audio token id {config.audio_token_id} is not in tokenizer.json")
    return Split(
        units={
            "audio_encoder": encoder_unit(model, pre.n_mels),
            "token_embedding": embedding_unit(model.get_input_embeddings()),
            "text_decoder": decoder_unit(model.model.language_model, model.lm_head, config.text_config),
        },
        prompt=Prompt(
            template=TEMPLATE,
            media={
                "audio": Media(
                    PLACEHOLDER.format(token=audio_token),
                    config.audio_token_id,
                    "audio_encoder",
                    "input_features",
                    "audio_features",
                    length="frames",
                )
            },
        ),
        preprocess=Preprocess(audio=pre),
        tokenizer=tokenizer,
        tokenizer_file=tokenizer_file,
    )


def _positions(model_dir: Path, window_s: float) -> int:
    """Encoder positions of an audio window (two mel frames each); refused unless whole and within the tower's."""
    import json

    from transformers import Qwen2AudioEncoderConfig

    config = Qwen2AudioEncoderConfig(**json.loads((Path(model_dir) / "config.json").read_text())["audio_config"])
    pre = audio_preprocess(model_dir, config)
    per_s = pre.sampling_rate / pre.hop_length / 2
    positions = round(window_s * per_s)
    if abs(positions - window_s * per_s) > 1e-6 or not 2 <= positions <= config.max_source_positions:
        raise InputError(
            f"audio window {window_s:g} s is not available; allowed: multiples of {1 / per_s:g} s "
            f"from {2 / per_s:g} s up to {config.max_source_positions / per_s:g} s"
        )
    return positions


def export_encoder(model_dir: Path, kind: str, setting: tuple, path: Path) -> tuple[Component, int]:
    """`tune`'s audio encoder at `setting` = (window s,): the tower's positions cut to the window, as
    Whisper's mel length check and position table are (the clip is cut or padded to it at run time)."""
    from edgemfm.exporters.onnx import write_onnx

    positions = _positions(model_dir, setting[0])
    model = load(model_dir)
    tower = model.model.audio_tower
    tower.config.max_source_positions = tower.max_source_positions = positions
    tower.embed_positions = torch.nn.Embedding.from_pretrained(tower.embed_positions.weight[:positions].clone())
    n_mels = tower.config.num_mel_bins
    record, parity = write_onnx(encoder_unit(model, n_mels), path, FAMILY.tolerance)
    return record, parity.nodes


def media_rows(model_dir: Path, kind: str, setting: tuple) -> int:
    """Decoder rows of a full window: its positions after the stride-2 pooling."""
    return (_positions(model_dir, setting[0]) - 2) // 2 + 1


# tune's audio knob: the window clips are cut or padded to (Qwen2-Audio's 30 s; shorter: fewer positions and rows)
MEDIA_KNOBS = MediaKnobs(image=(), audio=(10.0, 30.0), export=export_encoder, rows=media_rows)
# finetune trains the projector on the frozen tower's features (cached), through the frozen decoder
FINETUNING = Finetuning(
    load=load,
    save=save_pretrained,
    trainable={"audio": "model.multi_modal_projector"},
    towers={"audio": "model.audio_tower"},
)

FAMILY = Family(
    name="qwen2_audio",
    model_types=("qwen2_audio",),
    architectures=("Qwen2AudioForConditionalGeneration",),
    tolerance=1e-4,
    load=load,
    split=split,
    media_knobs=MEDIA_KNOBS,
    finetune=FINETUNING,
    prunable=TRANSFORMERS,
)
