"""Whisper at full length: prompts as earlier text, long-form windows, live streaming, on a tiny
English-only Whisper with Whisper's special and timestamp tokens, checked against transformers."""

from __future__ import annotations

import pytest
import torch
from test_audio import speech_wav
from tiny_audio import tiny_whisper_en

import edgemfm
from edgemfm.cli import main
from edgemfm.runtimes.audio import load_audio


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_whisper_en(tmp_path_factory.mktemp("models") / "tiny-whisper-en")


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "tiny-whisper-en"
    assert main(["export", "--model", str(checkpoint), "--device", "pi5", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return speech_wav(tmp_path_factory.mktemp("audio") / "hello.wav", "Hello, how are you today?")


def _model(checkpoint):
    from transformers import WhisperForConditionalGeneration

    return WhisperForConditionalGeneration.from_pretrained(checkpoint).eval()


def test_prompt_goes_before_the_start_token_as_transformers_prompt_ids(checkpoint, exported, speech):
    from transformers import WhisperFeatureExtractor

    pipe = edgemfm.load(exported)
    ours = list(pipe.generate_tokens("Hello there", audio=[str(speech)], max_new_tokens=20))
    prompt_ids = [pipe.manifest.generation.transcription.previous] + pipe.tokenizer.encode(
        " Hello there", add_special_tokens=False
    ).ids
    assert pipe.prompt_ids("Hello there") == prompt_ids + pipe.prompt_ids("")
    features = WhisperFeatureExtractor.from_pretrained(checkpoint)(
        load_audio(speech, pipe.manifest.preprocess.audio), sampling_rate=16000, return_tensors="pt"
    ).input_features
    with torch.no_grad():
        theirs = _model(checkpoint).generate(
            input_features=features, prompt_ids=torch.tensor(prompt_ids), max_new_tokens=20, do_sample=False
        )
    assert len(ours) == 20 and ours == theirs[0].tolist()[:20]


def test_a_3s_window_checkpoint_exports_and_transcribes(tmp_path, speech):
    from transformers import WhisperFeatureExtractor

    # the feature extractor nested in processor_config.json, as transformers 5 saves a whole processor
    checkpoint = tiny_whisper_en(tmp_path / "w3", max_source_positions=150, chunk_length=3, nested=True)
    assert not (checkpoint / "preprocessor_config.json").exists()
    out = tmp_path / "bundle"
    assert main(["export", "--model", str(checkpoint), "--device", "pi5", "--out", str(out)]) == 0
    pipe = edgemfm.load(out)
    assert pipe.manifest.preprocess.audio.n_samples == 48000
    ours = list(pipe.generate_tokens("", audio=[str(speech)], max_new_tokens=16))
    extractor = WhisperFeatureExtractor(feature_size=80, chunk_length=3)
    features = extractor(
        load_audio(speech, pipe.manifest.preprocess.audio), sampling_rate=16000, return_tensors="pt"
    ).input_features
    assert features.shape[-1] == 300
    with torch.no_grad():
        theirs = _model(checkpoint).generate(input_features=features, max_new_tokens=16, do_sample=False)
    theirs = [t for t in theirs[0].tolist() if t not in pipe.manifest.tokenizer.eos_token_ids]
    assert len(theirs) >= 8 and ours[: len(theirs)] == theirs


def test_a_window_the_encoder_does_not_take_fails_at_export_in_one_line(tmp_path, capsys):
    from transformers import WhisperFeatureExtractor

    checkpoint = tiny_whisper_en(tmp_path / "w3", max_source_positions=150, chunk_length=3)
    WhisperFeatureExtractor(feature_size=80, chunk_length=30).save_pretrained(checkpoint)  # 30 s windows, 3 s encoder
    capsys.readouterr()  # the checkpoint writer's progress bar
    assert main(["export", "--model", str(checkpoint), "--device", "pi5", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "80 mel bins x 3000 frames (30 s windows at hop 160); the encoder takes 80 x 300" in err
    assert err.endswith("allowed: chunk_length 3")
