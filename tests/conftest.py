"""Shared fixtures: bundles exported once per test session, tiny models built from configs."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageDraw


@pytest.fixture(scope="session")
def default_bundle(tmp_path_factory) -> Path:
    """The built-in default model exported for the host profile (about 20 s on 2 cores)."""
    import edgemfm

    return edgemfm.export(device="host", out=tmp_path_factory.mktemp("bundles") / "default-host", progress=False)


@pytest.fixture(scope="session")
def picture(tmp_path_factory) -> Path:
    """A non-square drawing with shapes and colours, saved as PNG."""
    img = Image.new("RGB", (320, 240), (250, 250, 245))
    draw = ImageDraw.Draw(img)
    draw.ellipse((30, 40, 150, 160), fill=(220, 30, 30))
    draw.rectangle((180, 60, 290, 200), fill=(30, 60, 200))
    draw.line((0, 230, 320, 10), fill=(20, 160, 40), width=6)
    path = tmp_path_factory.mktemp("images") / "shapes.png"
    img.save(path)
    return path
