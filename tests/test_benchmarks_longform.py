"""The long-form benchmark's placements: the same speech after silence, and a row's WER as the median over them."""

from __future__ import annotations

import argparse
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


def test_pooled_wer_weighs_each_pass_by_its_words_not_the_mean_of_their_wers(longform):
    long = ("one two three four five six seven eight nine ten", "one two three four five six seven eight nine ten")
    short = ("one two", "one")  # 50 % alone
    assert longform.pooled([long, short]) == pytest.approx(100 / 12)  # 1 error in 12 words, not (0 + 50) / 2


def test_a_rows_pooled_wer_reads_the_other_files_texts_of_the_same_placements(longform, tmp_path):
    other, saved = tmp_path / "adj", tmp_path / "texts"
    other.mkdir(), saved.mkdir()
    (other / "wordnet-adj-10min.wav").write_bytes(b"")
    (other / "wordnet-adj-10min.txt").write_text("red green blue\n")
    for silence, text in ((0.0, "red green blue"), (2.1, "red green")):
        longform._saved(saved, "edgemfm x", silence).write_text(text)
    args = argparse.Namespace(pool=(other, saved), placements=[0.0, 2.1])
    # this file's two passes: 0 errors in 4 words each; the other's: 0 and 1 in 3 words each
    assert longform._pool(args, "a b c d", ["a b c d", "a b c d"], "edgemfm x") == f"{100 / 14:.2f}"
    assert longform._pool(args, "a b c d", ["a b c d", "a b c d"], "faster-whisper int8") == "—"  # no texts of it


@pytest.fixture
def long_audio(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.speech import long_audio

    return long_audio


def test_a_speech_folder_is_read_by_the_one_file_it_holds(long_audio, tmp_path):
    for name in ("wordnet-adj-10min.wav", "wordnet-adj-10min.txt"):
        (tmp_path / name).write_bytes(b"")
    assert long_audio.speech(tmp_path) == (tmp_path / "wordnet-adj-10min.wav", tmp_path / "wordnet-adj-10min.txt")
    (tmp_path / "wordnet-10min.wav").write_bytes(b"")
    with pytest.raises(SystemExit, match="holds 2 of the speech files; allowed: one folder with wordnet-10min.wav"):
        long_audio.speech(tmp_path)


def test_the_two_test_files_and_the_calibration_clips_share_no_sentence(long_audio):
    if not long_audio.WORDNET.is_dir():
        pytest.skip("wordnet-base is not installed")
    noun, adj = (set(long_audio.sentences(text=long_audio.TEXTS[k])) for k in ("noun", "adj"))
    calibration = set(long_audio.sentences(long_audio.CLIPS * long_audio.CLIP_WORDS, long_audio.CALIBRATION))
    assert len(adj) > 200 and not noun & adj and not (noun | adj) & calibration
