"""Whisper: audio encoder + decoder with self- and cross-attention caches, run from the manifest."""

from __future__ import annotations

import pytest
import torch
from test_audio import speech_wav

import edgemfm
from edgemfm.cli import main
from edgemfm.runtimes.audio import load_audio


@pytest.fixture(scope="module")
def checkpoint(tiny_whisper_checkpoint):
    return tiny_whisper_checkpoint


@pytest.fixture(scope="module")
def exported(tiny_whisper_pi5):
    """The tiny Whisper exported for pi5 (conftest.py: shared with test_whisper_quantized)."""
    return tiny_whisper_pi5


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return speech_wav(tmp_path_factory.mktemp("audio") / "hello.wav", "Hello, how are you today?")


def test_manifest_declares_the_cross_attention(exported):
    m = edgemfm.load(exported).manifest
    assert set(m.components) == {"audio_encoder", "token_embedding", "text_decoder"}
    cross = m.components["text_decoder"].cross_attention
    assert cross.encoder == "audio_encoder" and cross.media == "audio" and len(cross.outputs) == 2 * 2
    assert set(cross.outputs) <= {i.name for i in m.components["text_decoder"].inputs}
    assert [o.name for o in m.components["audio_encoder"].outputs] == list(cross.outputs)
    assert m.preprocess.audio.n_mels == 80 and m.prompt.media == {}
    assert all(p.max_abs_diff <= 1e-4 * p.scale for p in m.report.parity.values())


def test_decoder_attention_reads_the_cached_keys_and_values_without_copying_them(exported):
    import onnx

    m = edgemfm.load(exported).manifest
    fusion = m.report.parity["text_decoder"].fusion
    assert fusion.rules_fired["bnsh_kv.bnsh_kv"] == fusion.fused_ops["MultiHeadAttention"] >= 3
    graph = onnx.load(exported / m.components["text_decoder"].file).graph
    cross = set(m.components["text_decoder"].cross_attention.outputs)
    fed = [i for n in graph.node if n.op_type == "MultiHeadAttention" for i in n.input[1:3]]
    assert cross <= set(fed)  # straight from the inputs: no Transpose of 1500 positions at every step
    assert not [n for n in graph.node if n.op_type == "Transpose" and set(n.input) & cross]


def test_transcription_tokens_match_transformers(checkpoint, exported, speech):
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    pipe = edgemfm.load(exported)
    ours = list(pipe.generate_tokens("", audio=[str(speech)], max_new_tokens=24))
    samples = load_audio(speech, pipe.manifest.preprocess.audio)
    features = WhisperFeatureExtractor.from_pretrained(checkpoint)(
        samples, sampling_rate=16000, return_tensors="pt"
    ).input_features
    model = WhisperForConditionalGeneration.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        generated = model.generate(input_features=features, max_new_tokens=24, do_sample=False)
    theirs = [t for t in generated[0].tolist() if t not in pipe.manifest.tokenizer.eos_token_ids]
    assert len(ours) >= 12 and len(set(ours)) > 4
    assert ours == theirs
    assert ours[0] % 2 and not [t for t in ours if t < 256 and t % 8 == 1]  # the suppressed tokens


def test_cli_transcribes_and_refuses_bad_audio(exported, speech, tmp_path, capsys):
    assert main(["run", str(exported), "--audio", str(speech), "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.strip()
    assert main(["run", str(exported), "--prompt", "hi"]) == 2
    assert "exactly one audio input per call; got 0" in capsys.readouterr().err
    # no <|startofprev|> in this checkpoint: a prompt would be read as the start of the answer
    assert main(["run", str(exported), "--audio", str(speech), "--prompt", "transcribe"]) == 2
    assert "this bundle takes no text prompt" in capsys.readouterr().err
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    assert main(["run", str(exported), "--audio", str(bad)]) == 2
    assert "notes.wav' is not a WAV file; allowed: WAV" in capsys.readouterr().err
    assert main(["run", str(exported), "--audio", str(speech), "--image", str(speech)]) == 2
    assert "this bundle takes no image input; it takes: text, audio" in capsys.readouterr().err


def test_the_pte_decoder_reads_the_cross_attention_keys_and_values_without_copying_them(checkpoint):
    """transformers' DynamicCache(ddp_cache_data=...) concatenated each cross K/V onto an empty tensor: in a pte
    program a copy of all of them at every decode step (18 MB a step for the real tiny.en)."""
    import json

    from edgemfm.exporters import find_family

    family = find_family(json.loads((checkpoint / "config.json").read_text()))
    static = family.split(family.load(checkpoint), checkpoint).units["text_decoder"].static_cache(16)
    program = torch.export.export(static.module, static.args, strict=False)
    names = [s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    cross = {n for n in program.graph.nodes if n.name in names[2:]}  # after inputs_embeds and input_pos
    assert len(cross) == len(static.cross_attention.outputs)
    readers = [n for n in program.graph.nodes if n.op == "call_function" and set(n.all_input_nodes) & cross]
    assert readers and not [n for n in readers if "cat" in str(n.target)]
