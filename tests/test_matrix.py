"""Every family x every precision its device presets offer x every format the profile lists: export, run 2 tokens.

One profile per kind of quantization preset (`presets.TARGETS`: x86 CPU, Arm CPU, GPU, Android NPU),
taken from the shipped profiles; each offers fp32, auto and the fixed precisions it has kernels for.
pte bundles take fp32 and the int8/int4/auto the profile has weight kernels for (`pte_quantize.runnable`:
quantized in PyTorch before capture, auto planned by the ONNX planner; fp16 is not built for pte).

The default suite runs the text family's rows that cover every precision (`DEFAULT`); the rest are
`-m slow` (a tiny export takes 10-40 s on 2 idle cores, minutes on busy ones; the matrix has 248 rows).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from tiny_audio import tiny_qwen2_audio, tiny_whisper
from tiny_models import tiny_idefics3, tiny_llama, tiny_llava, tiny_llava_siglip, tiny_qwen2_vl

import edgemfm
from edgemfm.configs import ExportConfig
from edgemfm.exporters.pte_quantize import runnable
from edgemfm.profiles import list_profiles
from edgemfm.quantizers import presets

PROMPT = "Say something."
# family -> (checkpoint builder, media kind it needs in a prompt, the text prompt it takes)
FAMILIES = {
    "llava": (tiny_llava, "image", PROMPT),
    "llava-siglip": (tiny_llava_siglip, "image", PROMPT),
    "idefics3": (tiny_idefics3, "image", PROMPT),
    "qwen2_vl": (tiny_qwen2_vl, "image", PROMPT),
    "qwen2_5_vl": (lambda path: tiny_qwen2_vl(path, version="2.5"), "image", PROMPT),
    "text": (tiny_llama, None, PROMPT),
    # the tiny Whisper has no <|startofprev|>, so no earlier text: its bundle refuses a prompt (test_whisper.py)
    "whisper": (tiny_whisper, "audio", ""),
    "qwen2_audio": (tiny_qwen2_audio, "audio", PROMPT),
}
# The default suite: the text family (the cheapest) at the x86 host's int8 and int4, and fp16 (which the host lacks)
# on the Arm CPU; its fp32 and auto rows under -m slow (test_text.py exports every text family at fp32,
# test_quantizers.py plans auto). The other families' fp32 ONNX exports are in their own test files.
DEFAULT = {("text", "x86-cpu", p, "onnx") for p in ("int8", "int4")} | {("text", "arm-cpu", "fp16", "onnx")}


def one_profile_per_kind() -> dict[str, str]:
    """kind of preset -> the first shipped profile (by name) of that kind."""
    kinds: dict[str, str] = {}
    for p in sorted(list_profiles(), key=lambda p: p.name):
        kinds.setdefault(presets.target_of(p).kind, p.name)
    return kinds


def precisions(profile) -> list[str]:
    """The precisions the profile's presets offer: fp32, auto and each fixed one it has kernels for."""
    bits = presets.specs(profile)
    return [p for p, b in (("fp32", 32), ("fp16", 16), ("int8", 8), ("int4", 4)) if b in bits] + ["auto"]


def rows() -> list:
    out = []
    profiles = {p.name: p for p in list_profiles()}
    for kind, name in one_profile_per_kind().items():
        profile = profiles[name]
        for family in FAMILIES:
            for fmt in profile.formats:
                for precision in precisions(profile) if fmt == "onnx" else runnable(profile):
                    marks = [] if (family, kind, precision, fmt) in DEFAULT else [pytest.mark.slow]
                    out.append(
                        pytest.param(family, name, precision, fmt, marks=marks, id=f"{family}-{kind}-{precision}-{fmt}")
                    )
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    built: dict = {}

    def get(family: str):
        if family not in built:
            built[family] = FAMILIES[family][0](tmp_path_factory.mktemp("models") / family)
        return built[family]

    return get


def _media(kind: str | None) -> dict:
    rng = np.random.default_rng(0)
    if kind == "image":
        return {"images": [Image.fromarray(rng.integers(0, 256, (61, 37, 3), dtype=np.uint8), "RGB")]}
    if kind == "audio":
        return {"audio": [(0.1 * rng.standard_normal(16000)).astype(np.float32)]}
    return {}


def test_the_matrix_has_every_kind_of_preset():
    assert set(one_profile_per_kind()) == {t.kind for t in presets.TARGETS}


@pytest.mark.parametrize(("family", "device", "precision", "format"), rows())
def test_every_family_exports_and_runs_at_every_precision(family, device, precision, format, checkpoints, tmp_path):
    config = ExportConfig(
        model=checkpoints(family), device=device, out=tmp_path / "bundle", format=format, precision=precision
    )
    out = edgemfm.export(config)
    pipe = edgemfm.load(out, device="host")  # the bundle as built for `device`, run on this CPU
    assert pipe.manifest.report.precision == precision
    _, media, prompt = FAMILIES[family]
    tokens = list(pipe.generate_tokens(prompt, max_new_tokens=2, **_media(media)))
    assert len(tokens) <= 2 and all(isinstance(t, int) for t in tokens)  # an immediate end of text is an answer too
