"""Voice-activity gating with silero VAD's real weights: silence is neither encoded nor decoded, and timestamps stay
on the recording's timeline; long-form and a live stream alike, on a tiny Whisper with 3 s windows."""

from __future__ import annotations

import importlib.util
import math
import wave

import numpy as np
import pytest
from test_audio import speech_wav

import edgemfm
from edgemfm.cli import main
from edgemfm.errors import InputError
from edgemfm.runtimes.audio import read_wav, resample
from edgemfm.runtimes.longform import LongForm, TranscribeConfig
from edgemfm.runtimes.mel_windows import ArraySource
from edgemfm.runtimes.vad import FRAME, RATE, Gate, GatedSource, Timeline, VadConfig

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("silero_vad") is None,
    reason="silero-vad's weights are not installed (pip install --no-deps silero-vad==6.2.3)",
)
GAP_S = 8.0  # seconds of faint noise between the two utterances: longer than the 2 s that ends a region
VAD = TranscribeConfig(vad=VadConfig())
# a kept region's end to its endpoint: min_silence_s of quiet frames after the speech, less the pad_s kept of them
ENDPOINT_S = (round(VadConfig().min_silence_s * RATE / FRAME) - round(VadConfig().pad_s * RATE / FRAME)) * FRAME / RATE


@pytest.fixture(scope="module")
def exported3(tiny_whisper_en_3s_pi5):
    """A tiny English Whisper with 3 s windows exported for pi5 (conftest.py: test_whisper_longform's too)."""
    return tiny_whisper_en_3s_pi5


@pytest.fixture(scope="module")
def pauses(tmp_path_factory):
    """1 s of faint noise, an utterance, GAP_S s of noise, another utterance, 3 s of noise; where each utterance
    starts and ends (seconds)."""
    rng, parts, spans, at = np.random.default_rng(0), [], [], 0.0
    for i, (text, gap) in enumerate([("Hello, how are you today?", 1.0), ("The weather is fine.", GAP_S)]):
        samples, rate = read_wav(speech_wav(tmp_path_factory.mktemp("audio") / f"{i}.wav", text))
        speech = resample(samples.mean(axis=1), rate, 16000)
        parts += [rng.normal(0, 0.002, int(gap * 16000)).astype(np.float32), speech]
        spans.append((at + gap, at + gap + len(speech) / 16000))
        at = spans[-1][1]
    parts.append(rng.normal(0, 0.002, 3 * 16000).astype(np.float32))  # long enough to end the second region
    return np.concatenate(parts), spans


def _encoder_runs(pipe, monkeypatch) -> list:
    cross = pipe.manifest.components[pipe.manifest.generation.decoder].cross_attention
    encoder, runs = pipe.sessions[cross.encoder], []
    run = encoder.run
    monkeypatch.setattr(encoder, "run", lambda feeds: runs.append(1) or run(feeds))
    return runs


def _whole_windows(monkeypatch) -> None:
    """The random model's timestamps jump anywhere (past the audio, too): each window advances by a whole window,
    as speech without pauses would."""
    split = LongForm.split
    monkeypatch.setattr(LongForm, "split", lambda self, tokens, seek, n: (split(self, tokens, seek, n)[0], n))


def test_the_gate_keeps_each_utterance_and_its_pads_and_drops_the_long_silence(pauses):
    samples, spans = pauses
    speech = GatedSource(ArraySource(samples), VadConfig())
    kept = [(at / 16000, (at + n) / 16000) for _, at, n in speech.pieces]
    assert len(kept) == 2  # the pieces of one region are merged: two regions, the 8 s of noise between them dropped
    for (start, end), (a, b) in zip(spans, kept):
        assert start - 0.4 - 0.1 <= a <= start and end <= b <= end + 0.4 + 0.1  # the 0.4 s pads, within 3 frames
    assert speech.length < len(samples) - (GAP_S - 1) * 16000
    # the joined audio is the recording's audio, piece after piece
    assert np.array_equal(
        speech.read(0, speech.length), np.concatenate([samples[at : at + n] for _, at, n in speech.pieces])
    )
    second = speech.pieces[1][0] / 16000
    assert speech.timeline.original(second) == kept[1][0] and speech.timeline.original(second, end=True) == kept[0][1]
    # a stream's gate says where each region ended: `min_silence_s` after its quiet began, which is `pad_s` before
    # the kept piece's end; before the next region's audio
    gate = Gate(VadConfig())
    out = [(start, x) for i in range(0, len(samples), 1600) for start, x in gate.feed(samples[i : i + 1600])]
    ends = [start / 16000 for start, x in out if x is None]
    assert ends == pytest.approx([b + ENDPOINT_S for _, b in kept])
    assert [start for start, x in out if x is not None and start > ends[0] * 16000][0] > ends[0] * 16000


def test_vad_gated_longform_encodes_fewer_windows_and_keeps_the_recordings_timestamps(exported3, pauses, monkeypatch):
    samples, spans = pauses
    pipe = edgemfm.load(exported3)
    runs = _encoder_runs(pipe, monkeypatch)
    _whole_windows(monkeypatch)
    whole = list(pipe.transcribe(samples))
    every = len(runs)
    gated = list(pipe.transcribe(samples, VAD))
    speech = GatedSource(ArraySource(samples), VadConfig())
    # 15 s in 3 s windows; the two utterances and their pads, 4.1 s, in two
    assert every == math.ceil(len(samples) // 160 / 300) == 5
    assert len(runs) - every == math.ceil(speech.length // 160 / 300) == 2
    joined = list(pipe.transcribe(speech.read(0, speech.length)))
    # the segments of the joined speech, moved onto the recording's timeline
    assert gated == [speech.timeline.segment(s) for s in joined] and whole
    late = [s for s in gated if s.start >= spans[1][0] - 0.5]
    assert late and all(s.start >= spans[1][0] - 0.5 for s in late)  # after the gap: on the recording's clock
    assert max(s.end for s in gated) > speech.length / 16000  # past the joined audio's end: the recording's time


def test_live_with_vad_decodes_nothing_while_nobody_speaks_and_reports_the_recordings_times(
    exported3, pauses, monkeypatch
):
    samples, spans = pauses
    pipe = edgemfm.load(exported3)
    runs = _encoder_runs(pipe, monkeypatch)
    _whole_windows(monkeypatch)
    chunks = [samples[i : i + 1600] for i in range(0, len(samples), 1600)]
    plain = list(pipe.transcribe_stream(chunks, step_s=1.0))
    every = len(runs)
    gated = list(pipe.transcribe_stream(chunks, VAD, step_s=1.0))
    # an update a second and each window settled: 15 + 5 encoder runs; with the VAD only the 4.1 s of speech is
    # decoded (no update while silent; the default delay commits nothing at an endpoint, so none decodes there)
    assert (every, len(plain)) == (20, 16) and len(runs) - every <= 6 and len(gated) <= 5
    assert gated[-1].audio_s == pytest.approx(len(samples) / 16000)  # the stream's clock, silences included
    speech = GatedSource(ArraySource(samples), VadConfig())
    gate = Gate(VadConfig())
    pieces = [x for chunk in chunks for _, x in gate.feed(chunk)] + [x for _, x in gate.flush()]
    kept = [x for x in pieces if x is not None]
    assert np.array_equal(np.concatenate(kept), speech.read(0, speech.length))  # a stream gated as a file is
    alone = list(pipe.transcribe_stream(kept, step_s=1.0))
    # the stream of the speech alone (in the same pieces), its segments moved onto the recording's timeline
    assert [(s.start, s.end, s.tokens) for s in gated[-1].segments] == [
        (s.start, s.end, s.tokens) for s in map(speech.timeline.segment, alone[-1].segments)
    ]
    assert "".join(u.committed for u in gated) == "".join(u.committed for u in alone)
    assert any(s.start > speech.length / 16000 for s in gated[-1].segments)  # the recording's clock, not the speech's


def test_live_with_vad_at_the_default_delay_commits_nothing_at_a_pause_and_keeps_longforms_text(
    exported3, pauses, monkeypatch
):
    samples, spans = pauses
    pipe = edgemfm.load(exported3)
    _whole_windows(monkeypatch)
    chunks = [samples[i : i + 1600] for i in range(0, len(samples), 1600)]
    gated = list(pipe.transcribe_stream(chunks, VAD, step_s=1.0))
    # the default delay (30 s) is longer than the 3 s window and its pause: the first utterance (2.5 s with its pads)
    # waits at its endpoint, and is committed once the window fills, in the second utterance
    first = next(u for u in gated if u.committed)
    assert first.audio_s > spans[1][0]
    assert "".join(u.committed for u in gated) == "".join(s.text for s in pipe.transcribe(samples, VAD))


def test_live_with_vad_and_a_short_delay_commits_an_utterance_at_the_pause_after_it(exported3, pauses, monkeypatch):
    samples, spans = pauses
    pipe = edgemfm.load(exported3)
    _whole_windows(monkeypatch)
    chunks = [samples[i : i + 1600] for i in range(0, len(samples), 1600)]
    gated = list(pipe.transcribe_stream(chunks, VAD, step_s=1.0, commit_delay_s=0.5))
    first = next(u for u in gated if u.committed)
    # the first utterance and its pads (about 2.5 s) never fill a 3 s window; the 2 s pause after it counts as audio
    # after its words (up to the window's end), which a 0.5 s delay lets through: all of it is committed at the VAD's
    # endpoint (in the 0.1 s chunk that reaches it), long before the next utterance starts
    speech = GatedSource(ArraySource(samples), VadConfig())
    endpoint = (speech.pieces[0][1] + speech.pieces[0][2]) / 16000 + ENDPOINT_S
    assert speech.pieces[0][2] < 3 * 16000 and endpoint <= first.audio_s <= endpoint + 0.1 < spans[1][0]
    assert first.partial == "" and not first.segments  # all it heard committed; the window not cut
    # the window goes on, continuing the committed tokens: settled, it begins with them (never rewritten)
    settled = "".join(s.text for s in gated[-1].segments)
    assert settled.startswith(first.committed) and settled == "".join(u.committed for u in gated)


def test_a_stream_of_silence_keeps_nothing_and_transcribes_to_nothing(exported3):
    noise = np.random.default_rng(1).normal(0, 0.002, 16000 * 4).astype(np.float32)
    gate = Gate(VadConfig())
    assert gate.feed(noise) == [] and gate.flush() == []
    assert list(edgemfm.load(exported3).transcribe(noise, VAD)) == []


def test_timeline_maps_joined_seconds_onto_the_recording():
    t = Timeline(16000)
    t.add(0, 8000)  # 0.5 s onward kept
    t.add(8000, 16000)  # continues the same piece: no seam
    t.add(24000, 64000)  # then from 4 s
    assert (t.original(0.25), t.original(1.0), t.original(1.5), t.original(1.5, end=True)) == (0.75, 1.5, 4.0, 2.0)


def test_a_missing_or_corrupt_vad_model_is_one_line(exported3, pauses, tmp_path, capsys):
    wav = tmp_path / "a.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((pauses[0][:48000] * 32767).astype("<i2").tobytes())
    assert main(["run", str(exported3), "--audio", str(wav), "--vad", str(tmp_path / "none.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the line saying where the bundle runs
    assert err.startswith("edgemfm: error: VAD model") and "Traceback" not in err
    assert "none.onnx' not found; allowed: silero-vad's silero_vad_16k_sequence.onnx" in err
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    assert main(["run", str(exported3), "--audio", str(wav), "--vad", str(tmp_path / "bad.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "bad.onnx' is not an ONNX model" in err[-1] and not any("Traceback" in line for line in err)
    with pytest.raises(InputError, match="VAD threshold 2 is not allowed"):
        VadConfig(threshold=2)
    assert main(["run", str(exported3), "--audio", str(wav), "--vad", "--timestamps"]) == 0
    assert " → " in capsys.readouterr().out
