"""Model families and the writers that turn their components into bundle files.

A family is one module in this package, listed in `FAMILIES`, exposing `FAMILY` (a
`edgemfm.exporters.family.Family`). It is found by `model_type` or `architectures` in a
checkpoint's config.json.

Example:
    >>> from edgemfm.exporters import find_family
    >>> find_family({"model_type": "llava"}).name
    'llava'
"""

from __future__ import annotations

import importlib
from typing import Any

from edgemfm.errors import UnsupportedModelError

# One row per family module: adding a family is one file plus one row here.
FAMILIES = ("llava", "idefics3", "qwen2_vl", "qwen2_5_vl", "text", "whisper", "qwen2_audio")


def families() -> list[Any]:
    """Every registered `Family`, in table order."""
    return [importlib.import_module(f"edgemfm.exporters.{name}").FAMILY for name in FAMILIES]


def find_family(config: dict[str, Any]) -> Any:
    """The family that handles a checkpoint, by its config.json `model_type` or `architectures`."""
    model_type = config.get("model_type", "")
    architectures = tuple(config.get("architectures") or ())
    for family in families():
        if model_type in family.model_types or set(architectures) & set(family.architectures):
            return family
    known = [a for f in families() for a in (*f.model_types, *f.architectures)]
    raise UnsupportedModelError(architectures[0] if architectures else model_type or "<none>", known)
