"""Decoder-only text models: Llama, Mistral, Qwen2, Phi-3, Gemma, Gemma-2 and Gemma-3 text.

Components: `token_embedding` (the embedding table as the model's own embedding module applies
it) and `text_decoder` (the layers, the final norm and the LM head, KV cache in and out). What
each architecture does between embedding and logits stays inside transformers' own modules:

- Gemma and Gemma-2 multiply the embeddings by sqrt(hidden) inside the model, after the
  lookup; Gemma-3 does it inside its embedding module. Either way the split keeps it: the
  decoder takes the looked-up rows and the model scales them where it always does.
- Gemma-2/3 sliding-window layers and attention-logit soft-capping are in the layers; the
  final-logit soft-capping lives in `*ForCausalLM.forward`, outside the LM head, so the
  decoder's head applies it (`SoftCappedHead`): logits, not only greedy choices, match.
- Phi-3's fused qkv and gate_up projections are plain Linear modules: nothing to do.

Exported with the dynamo ONNX exporter; parity within 1e-4 on the tiny test models.

Example:
    >>> from edgemfm.exporters import find_family
    >>> find_family({"model_type": "gemma2"}).name
    'text'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from edgemfm.errors import InputError
from edgemfm.exporters.chat_template import chat_prompt
from edgemfm.exporters.decoder import decoder_unit, embedding_unit
from edgemfm.exporters.family import Family, Split
from edgemfm.manifest import Preprocess, Prompt, Tokenizer
from edgemfm.pruners.checkpoint import TRANSFORMERS

ARCHITECTURES = {  # config.json model_type -> architecture
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
}


class SoftCappedHead(torch.nn.Linear):
    """The LM head followed by Gemma-2/3's final-logit soft-capping: cap * tanh(logits / cap).

    A Linear on the head's own parameters (a tied table stays tied), not a module around it: the
    head is `text_decoder/lm_head` to a recipe, capped or not. Wrapped, it was `lm_head.lm_head`,
    and a rule for the head missed it (the pte int4 head's finer groups; a user's float head).
    """

    def __init__(self, lm_head: torch.nn.Linear, cap: float):
        # on the meta device: the head's parameters replace these, none is allocated twice
        super().__init__(lm_head.in_features, lm_head.out_features, bias=lm_head.bias is not None, device="meta")
        self.weight, self.bias, self.cap = lm_head.weight, lm_head.bias, cap

    def forward(self, hidden):
        return torch.tanh(super().forward(hidden) / self.cap) * self.cap


def lm_head(model: Any, text_config: Any) -> torch.nn.Module:
    """The model's LM head, with the final-logit soft-capping its forward applies, if any.

    Example:
        >>> type(lm_head(gemma2_model, gemma2_model.config)).__name__   # doctest: +SKIP
        'SoftCappedHead'
    """
    cap = getattr(text_config, "final_logit_softcapping", None)
    return SoftCappedHead(model.lm_head, cap) if cap else model.lm_head


def tokenizer_spec(model_dir: Path, text_config: Any) -> tuple[Tokenizer, Path]:
    """The fast tokenizer file and the BOS/EOS ids of a checkpoint (generation_config.json first).

    Example:
        >>> spec, path = tokenizer_spec(Path("models/qwen2"), config)  # doctest: +SKIP
        >>> spec.eos_token_ids                                         # doctest: +SKIP
        (151645,)
    """
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise InputError(f"{model_dir}: no tokenizer.json; edgemfm needs a fast (tokenizers) tokenizer file")
    gen_path = model_dir / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.is_file() else {}
    eos = gen.get("eos_token_id", text_config.eos_token_id)
    eos_ids = tuple(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    bos = gen.get("bos_token_id", text_config.bos_token_id)
    return Tokenizer(file="tokenizer.json", bos_token_id=bos, eos_token_ids=eos_ids), path


def load(model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def split(model: Any, model_dir: Path) -> Split:
    config = model.config
    tokenizer, tokenizer_file = tokenizer_spec(model_dir, config)
    return Split(
        units={
            "token_embedding": embedding_unit(model.get_input_embeddings()),
            "text_decoder": decoder_unit(model.model, lm_head(model, config), config),
        },
        # the checkpoint's chat template, else the bare question (the tokenizer file adds BOS where the model wants it)
        prompt=chat_prompt(model_dir, tokenizer.eos_token_ids) or Prompt(template="{media}{prompt}"),
        preprocess=Preprocess(),
        tokenizer=tokenizer,
        tokenizer_file=tokenizer_file,
    )


FAMILY = Family(
    name="text",
    model_types=tuple(ARCHITECTURES),
    architectures=tuple(ARCHITECTURES.values()),
    tolerance=1e-4,
    load=load,
    split=split,
    prunable=TRANSFORMERS,
)
