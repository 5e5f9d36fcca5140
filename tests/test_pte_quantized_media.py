"""Quantized ExecuTorch bundles of the media families: given its own media rows and its own answer (teacher-forced),
the program's decoder is its fake-quantized PyTorch decoder within the float-rounding noise of per-token int8
activations, on every row (prompt, media and answer). tests/fake_quantized.py says why not token for token: a 100-row
media prompt meets a near-tie the rounding decides either way, in the reference re-run alone too.

int4 rows take decoders 128 wide (4 heads of 32 over 2 KV heads: the preset's groups of 64 divide every linear,
so none stays float); int8 rows the tiny models as tests/tiny_models.py and tiny_audio.py build them. A row exports for
minutes: -m slow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from fake_quantized import teacher_forced
from tiny_audio import tiny_qwen2_audio
from tiny_models import tiny_idefics3, tiny_llava, tiny_qwen2_vl

from edgemfm.bundle import read_manifest
from edgemfm.cli import main

PROMPT = "Describe the picture."
TOKENS = 16
INT4_TEXT = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2)
MROPE = dict(mrope_section=[4, 6, 6])  # over head_dim / 2 = 16, Qwen2-VL's proportions
# The program's distance to the reference, in noise floors (fake_quantized.TeacherForced.floor). Measured: these
# programs 0.19-1.02 (int4 and int8, every family); their decoders unquantized 1.91-2.37 (int8, every family: the
# float decoder replayed), a program whose linears the export left unquantized 2.34 (Qwen2-VL int8), 15.0 (LLaVA int4).
FLOOR_RATIO = 1.5


@dataclass(frozen=True)
class Media:
    build: Callable[[Path, dict | None], Path]  # (path, decoder sizes or None for the tiny model's) -> checkpoint
    max_seq_len: int  # room for the prompt, its media rows and the answer (test_pte.py's)
    kind: str  # the generate_tokens keyword of the one media item: "images" or "audio"


FAMILIES = {
    "llava": Media(lambda p, text: tiny_llava(p, text=text), 96, "images"),
    "qwen2_audio": Media(lambda p, text: tiny_qwen2_audio(p, text=text), 192, "audio"),
    "idefics3": Media(lambda p, text: tiny_idefics3(p, text=text), 192, "images"),
    # seed 1: seed 0 ends its answer after 6 tokens (test_pte.py)
    "qwen2_vl": Media(lambda p, text: tiny_qwen2_vl(p, seed=1, text=text and text | MROPE), 160, "images"),
    "qwen2_5_vl": Media(
        lambda p, text: tiny_qwen2_vl(p, seed=1, version="2.5", text=text and text | MROPE), 160, "images"
    ),
}


def _item(kind: str, picture: Path, tmp_path: Path) -> Path:
    if kind == "images":
        return picture
    from test_audio import speech_wav

    return speech_wav(tmp_path / "speech.wav", "It will rain in the afternoon.")


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["int4", "int8"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_media_familys_quantized_pte_decodes_as_its_fake_quantized_decoder_teacher_forced(
    family, precision, picture, tmp_path
):
    media = FAMILIES[family]
    checkpoint = media.build(tmp_path / "model", INT4_TEXT if precision == "int4" else None)
    out = tmp_path / f"pte-{precision}"
    argv = ["export", "--model", str(checkpoint), "--device", "pi5", "--format", "pte", "--precision", precision]
    assert main([*argv, "--max-seq-len", str(media.max_seq_len), "--out", str(out)]) == 0
    decoder = read_manifest(out).report.quantization["text_decoder"]
    assert set(decoder.quantized_nodes) == {f"linear_8da{precision[-1]}w"} and not decoder.float_units
    item = _item(media.kind, picture, tmp_path)
    forced = teacher_forced(checkpoint, out, PROMPT, {media.kind: [item]}, TOKENS)
    assert len(forced.tokens) >= 8 and len(set(forced.tokens)) > 4  # a real answer, not a stop or one repeated token
    # as near the reference as float rounding leaves the reference from itself (a float program is about twice as far)
    assert forced.distance(forced.program) <= FLOOR_RATIO * forced.floor
    # each row's choice, the answer's among them: the reference's own, or one it scores within the rounding bound
    assert forced.regret(forced.program).max() <= forced.bound
