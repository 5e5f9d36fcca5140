"""Read a checkpoint's image processor (or audio feature extractor) settings wherever transformers saved them.

Checkpoints on the Hub keep them in `preprocessor_config.json`; transformers 5 writes them
nested under "image_processor" (or "feature_extractor") in `processor_config.json` when a whole
processor is saved.

Example:
    >>> image_processor_config(Path("models/smolvlm"))["max_image_size"]  # doctest: +SKIP
    {'longest_edge': 512}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgemfm.errors import InputError


def image_processor_config(model_dir: Path) -> dict[str, Any]:
    """The image processor's settings of `model_dir`; InputError when it has none."""
    legacy, nested = model_dir / "preprocessor_config.json", model_dir / "processor_config.json"
    if legacy.is_file():
        return json.loads(legacy.read_text())
    if nested.is_file() and isinstance(cfg := json.loads(nested.read_text()).get("image_processor"), dict):
        return cfg
    raise InputError(f"{model_dir}: no image processor settings (preprocessor_config.json or processor_config.json)")


def feature_extractor_config(model_dir: Path) -> dict[str, Any]:
    """The audio feature extractor's settings of `model_dir`; {} when it has none (the model's defaults apply).

    Example:
        >>> feature_extractor_config(Path("models/whisper-tiny"))["chunk_length"]   # doctest: +SKIP
        30
    """
    legacy, nested = model_dir / "preprocessor_config.json", model_dir / "processor_config.json"
    if legacy.is_file():
        return json.loads(legacy.read_text())
    if nested.is_file() and isinstance(cfg := json.loads(nested.read_text()).get("feature_extractor"), dict):
        return cfg
    return {}
