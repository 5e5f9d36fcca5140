"""How `prune` opens and writes a Hugging Face checkpoint: the `prunable` capability the transformers
families share (LLaVA, Idefics3, Qwen2-VL, Qwen2.5-VL, Qwen2-Audio, Whisper, text decoders).

The checkpoint's own architecture class loads it in its saved dtype; `structure.find_stack` finds a
component's layers by their shape (so any architecture whose stacks fit prunes, in a family or not);
`save_pretrained` writes the sliced model with its rewritten config.

Example:
    >>> from edgemfm.pruners.checkpoint import TRANSFORMERS
    >>> TRANSFORMERS.components
    ('text_decoder', 'vision_encoder', 'audio_encoder')
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgemfm.errors import UnsupportedModelError
from edgemfm.exporters.family import Prunable
from edgemfm.model_source import load_checkpoint
from edgemfm.pruners.structure import COMPONENTS, SUPPORTED, find_stack


def load_model(model_dir: Path) -> Any:
    """The checkpoint's own architecture class, loaded in its saved dtype.

    Example:
        >>> load_model(Path("models/tiny-llama")).config.model_type   # doctest: +SKIP
        'llama'
    """
    import transformers

    config = json.loads((Path(model_dir) / "config.json").read_text())
    arch = (config.get("architectures") or [config.get("model_type", "<none>")])[0]
    cls = getattr(transformers, arch, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise UnsupportedModelError(arch, SUPPORTED)
    return load_checkpoint(lambda d: cls.from_pretrained(d, dtype="auto"), model_dir).eval()


def _tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def _save(model: Any, out: Path) -> None:
    model.save_pretrained(out)


TRANSFORMERS = Prunable(
    components=COMPONENTS,  # which of them a checkpoint has is found structurally, with a typed error
    load=load_model,
    tokenizer=_tokenizer,
    stack=find_stack,
    save=_save,
)
