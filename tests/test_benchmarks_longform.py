"""The long-form benchmark's placements: the same speech after silence, and a row's WER as the median over them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).parents[1]


@pytest.fixture
def longform(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # `benchmarks` is a folder of the repository, not an installed package
    from benchmarks.speech import tiny_en_longform

    return tiny_en_longform


def test_a_placement_puts_the_speech_after_that_much_silence(longform):
    speech = np.arange(1, 5, dtype=np.float32)
    out = longform.placed(speech, 0.5)
    assert out.dtype == np.float32 and len(out) == 8000 + 4
    assert not out[:8000].any() and out[8000:].tolist() == speech.tolist()


def test_a_rows_wer_is_the_median_over_its_placements_with_its_spread(longform):
    reference = "one two three four five six seven eight nine ten"
    texts = [reference, "one two three four five six seven eight nine", "one two three four five six seven eight"]
    row = longform._row("edgemfm x", reference, None, texts, [2.0, 3.0, 10.0], 60.0, placed=True)
    assert row["WER vs text %"] == "10.00" and row["WER spread"] == "0.00–20.00"
    assert row["CPU s (median)"] == "3.0" and row["audio s per CPU s"] == "20.00"
    single = longform._row("edgemfm x", reference, None, texts[:1], [2.0], 60.0, placed=False)
    assert "WER spread" not in single and single["WER vs text %"] == "0.00"
