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
from edgemfm.exporters.family import ExportUnit, Family, Finetuning, Split, save_pretrained
from edgemfm.exporters.text import tokenizer_spec
from edgemfm.exporters.whisper import audio_preprocess
from edgemfm.manifest import Media, Preprocess, Prompt
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


def split(model: Any, model_dir: Path) -> Split:
    from tokenizers import Tokenizer as HFTokenizer

    config = model.config
    pre = audio_preprocess(model_dir, config.audio_config)
    tokenizer, tokenizer_file = tokenizer_spec(model_dir, config.text_config)
    audio_token = HFTokenizer.from_file(str(tokenizer_file)).id_to_token(config.audio_token_id)
    if audio_token is None:
        raise InputError(f"{model_dir}: audio token id {config.audio_token_id} is not in tokenizer.json")
    frames = 2 * config.audio_config.max_source_positions  # the encoder takes exactly this many mel frames
    encoder = ExportUnit(
        module=AudioEncoder(model.model).eval(),
        args=(torch.randn(1, pre.n_mels, frames), torch.tensor([1234], dtype=torch.int64)),
        input_names=("input_features", "frames"),
        output_names=("audio_features",),
        dynamic_axes={"audio_features": {0: "audio_tokens"}},
    )
    return Split(
        units={
            "audio_encoder": encoder,
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
    finetune=FINETUNING,
    prunable=TRANSFORMERS,
)
