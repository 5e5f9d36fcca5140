"""Model families and the writers that turn their components into bundle files.

A family is one module in this package, listed in `FAMILIES`, exposing `FAMILY` (a
`edgemfm.exporters.family.Family`). It is found by `model_type` or `architectures` in a
checkpoint's config.json, or by its name in a bundle's manifest. What the other verbs need from
it (tune's media knobs, finetune, prune) are the capabilities on that record: `capability`.

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
FAMILIES = ("llava", "idefics3", "qwen2_vl", "qwen2_5_vl", "text", "whisper", "qwen2_audio", "demo")
CAPABILITIES = {
    "media_knobs": "tune's image and audio settings",
    "finetune": "finetune",
    "prunable": "prune",
    "visual_tokens": "export --visual-tokens",
}


def families() -> list[Any]:
    """Every registered `Family`, in table order."""
    return [importlib.import_module(f"edgemfm.exporters.{name}").FAMILY for name in FAMILIES]


def family_named(name: str) -> Any:
    """The registered family called `name` (a manifest's `family`).

    Example:
        >>> family_named("llava").model_types
        ('llava',)
    """
    for family in families():
        if family.name == name:
            return family
    raise UnsupportedModelError(name, [f.name for f in families()])


def capability(family: Any, name: str) -> Any:
    """`family`'s capability `name` (see `CAPABILITIES`), or a one-line error naming the families that have it.

    Example:
        >>> capability(find_family({"model_type": "edgemfm-demo"}), "finetune").trainable["image"]
        'vision_projector'
    """
    assert name in CAPABILITIES, name
    value = getattr(family, name)
    if value is None:
        having = [f.name for f in families() if getattr(f, name) is not None]
        raise UnsupportedModelError(family.name, having, verb=CAPABILITIES[name])
    return value


def find_family(config: dict[str, Any]) -> Any:
    """The family that handles a checkpoint, by its config.json `model_type` or `architectures`."""
    model_type = config.get("model_type", "")
    architectures = tuple(config.get("architectures") or ())
    for family in families():
        if model_type in family.model_types or set(architectures) & set(family.architectures):
            return family
    known = [a for f in families() for a in (*f.model_types, *f.architectures)]
    raise UnsupportedModelError(architectures[0] if architectures else model_type or "<none>", known)
