"""Qwen2-Audio: the audio encoder's rows replace the <|AUDIO|> token; their count follows the clip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_audio import speech_wav
from tiny_audio import tiny_qwen2_audio

import edgemfm
from edgemfm.cli import main
from edgemfm.runtimes.audio import load_audio

PROMPT = "What does the speaker say?"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_qwen2_audio(tmp_path_factory.mktemp("models") / "tiny-qwen2-audio")


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "tiny-qwen2-audio-host"
    assert main(["export", "--model", str(checkpoint), "--device", "host", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return speech_wav(tmp_path_factory.mktemp("audio") / "weather.wav", "It will rain in the afternoon.")


def _reference(checkpoint, pipe, samples, max_new_tokens):
    """transformers' tokens for the same prompt, with the audio token expanded as the processor does."""
    from transformers import Qwen2AudioForConditionalGeneration, WhisperFeatureExtractor

    fe = WhisperFeatureExtractor.from_pretrained(checkpoint)(
        samples, sampling_rate=16000, return_tensors="pt", return_attention_mask=True, padding="max_length"
    )
    frames = int(fe.attention_mask.sum())
    rows = (((frames - 1) // 2 + 1) - 2) // 2 + 1  # Qwen2AudioProcessor's count
    audio_id = pipe.manifest.prompt.media["audio"].token_id
    ids = [t for i in pipe.prompt_ids(PROMPT, {"audio": 1}) for t in ([i] * rows if i == audio_id else [i])]
    model = Qwen2AudioForConditionalGeneration.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([ids]),
            input_features=fe.input_features,
            feature_attention_mask=fe.attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
        )
    return rows, [t for t in out[0, len(ids) :].tolist() if t not in pipe.manifest.tokenizer.eos_token_ids]


def test_greedy_generation_matches_transformers(checkpoint, exported, speech):
    pipe = edgemfm.load(exported)
    assert set(pipe.manifest.components) == {"audio_encoder", "token_embedding", "text_decoder"}
    assert all(p.max_abs_diff <= 1e-4 * p.scale for p in pipe.manifest.report.parity.values())
    ours = list(pipe.generate_tokens(PROMPT, audio=[str(speech)], max_new_tokens=20))
    rows, theirs = _reference(checkpoint, pipe, load_audio(speech, pipe.manifest.preprocess.audio), 20)
    ids = pipe.prompt_ids(PROMPT, {"audio": 1})
    assert pipe.embed(ids, {"audio": [str(speech)]}).shape[1] == len(ids) - 1 + rows
    assert len(ours) >= 12 and len(set(ours)) > 4
    assert ours == theirs


def test_cli_answers_about_a_clip(exported, speech, capsys):
    assert main(["run", str(exported), "--prompt", PROMPT, "--audio", str(speech), "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out.strip()
    assert main(["run", str(exported), "--prompt", PROMPT, "--image", str(speech)]) == 2
    assert "this bundle takes no image input; it takes: text, audio" in capsys.readouterr().err
    assert main(["run", str(exported), "--prompt", PROMPT, "--audio", str(exported / "manifest.json")]) == 2
    assert "manifest.json' is not a WAV file; allowed: WAV" in capsys.readouterr().err


@pytest.mark.parametrize("seconds", [0.5, 7.3])
def test_audio_token_count_follows_the_clip_length(exported, seconds):
    pipe = edgemfm.load(exported)
    clip = np.sin(np.arange(int(16000 * seconds)) / 7.0).astype(np.float32) * 0.3
    frames = -(-len(clip) // 160)
    rows = (((frames - 1) // 2 + 1) - 2) // 2 + 1
    ids = pipe.prompt_ids(PROMPT, {"audio": 1})
    assert pipe.embed(ids, {"audio": [clip]}).shape[1] == len(ids) - 1 + rows


def test_calibration_folder_clips_calibrate_and_measure_the_audio_encoder(exported, speech, tmp_path):
    """A folder's wav clips (or, without a folder, the built-in spoken clips) reach the audio encoder and,
    spliced into prompts, the decoder: int8 is measured there; a folder without clips leaves it unmeasured."""
    import shutil

    from edgemfm.bundle import read_manifest
    from edgemfm.configs import QuantizeConfig
    from edgemfm.profiles import load_profile
    from edgemfm.quantizers.calibration import component_feeds
    from edgemfm.quantizers.quantize import quantize

    folder = tmp_path / "calib"
    folder.mkdir()
    shutil.copy(speech, folder / "weather.wav")
    (folder / "prompts.txt").write_text("What does the speaker say?\nTranscribe the clip.\n")
    manifest = read_manifest(exported)
    spec = manifest.prompt.media["audio"]
    feeds = component_feeds(exported, manifest, folder)
    assert len(feeds[spec.encoder]) == 1 and feeds[spec.encoder][0][spec.input].shape[:2] == (1, 128)
    built_in = component_feeds(exported, manifest, None)  # the built-in set: six spoken phrases
    assert len(built_in[spec.encoder]) == 6
    audio_rows = edgemfm.load(exported).encode("audio", folder / "weather.wav").shape[1]
    decoder_rows = sum(f["inputs_embeds"].shape[1] for f in feeds[manifest.generation.decoder])
    assert decoder_rows >= 2 * audio_rows, "both prompts carry the clip's rows"
    no_clips = tmp_path / "no-clips"
    no_clips.mkdir()
    (no_clips / "prompts.txt").write_text("Transcribe the clip.\n")
    for name, folder_or_none, measured in (
        ("with", folder, True),
        ("built-in", None, True),
        ("without", no_clips, False),
    ):
        stage = tmp_path / name
        shutil.copytree(exported, stage)
        config = QuantizeConfig(precision="int8", calibration=folder_or_none)
        m = quantize(stage, manifest, load_profile("pi5"), config, tmp_path / f"scratch-{name}")
        sqnr = m.report.quantization[spec.encoder].sqnr_db
        assert (sqnr is not None and sqnr > 20) if measured else sqnr is None
