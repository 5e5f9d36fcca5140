"""Whisper at full length: prompts as earlier text, long-form windows, live streaming, on a tiny
English-only Whisper with Whisper's special and timestamp tokens, checked against transformers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_audio import speech_wav
from tiny_audio import tiny_whisper_en

import edgemfm
from edgemfm.cli import main
from edgemfm.errors import InputError
from edgemfm.runtimes.audio import load_audio, read_wav, resample
from edgemfm.runtimes.decoding import Sampler
from edgemfm.runtimes.longform import TranscribeConfig, compression_ratio
from edgemfm.runtimes.mel_windows import MelWindows, WavSource

LONG_TEXT = (
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step. "
    "All that glitters is not gold, and not all those who wander are lost. The early bird catches the worm, "
    "but the second mouse gets the cheese. Actions speak louder than words, and practice makes perfect. "
    "When in Rome, do as the Romans do. Fortune favours the bold, and knowledge is power. Time flies like an "
    "arrow; fruit flies like a banana. Better late than never, but never late is better. The pen is mightier "
    "than the sword, and a picture is worth a thousand words. Where there is a will there is a way."
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_whisper_en(tmp_path_factory.mktemp("models") / "tiny-whisper-en")


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "tiny-whisper-en"
    assert main(["export", "--model", str(checkpoint), "--device", "pi5", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def checkpoint3(tiny_whisper_en_3s):
    """3 s windows, the feature extractor nested in processor_config.json (as transformers 5 saves a processor)."""
    return tiny_whisper_en_3s


@pytest.fixture(scope="module")
def exported3(tiny_whisper_en_3s_pi5):
    """checkpoint3 exported for pi5 (conftest.py: test_vad's bundle too)."""
    return tiny_whisper_en_3s_pi5


@pytest.fixture(scope="module")
def long_speech(tmp_path_factory):
    """34 s of espeak-ng speech: two 30 s windows, a dozen 3 s ones."""
    return speech_wav(tmp_path_factory.mktemp("audio") / "long.wav", LONG_TEXT)


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


def test_a_3s_window_checkpoint_exports_and_transcribes(checkpoint3, exported3, speech):
    from transformers import WhisperFeatureExtractor

    assert not (checkpoint3 / "preprocessor_config.json").exists()  # read from processor_config.json
    pipe = edgemfm.load(exported3)
    assert pipe.manifest.preprocess.audio.n_samples == 48000
    ours = list(pipe.generate_tokens("", audio=[str(speech)], max_new_tokens=16))
    extractor = WhisperFeatureExtractor(feature_size=80, chunk_length=3)
    features = extractor(
        load_audio(speech, pipe.manifest.preprocess.audio), sampling_rate=16000, return_tensors="pt"
    ).input_features
    assert features.shape[-1] == 300
    with torch.no_grad():
        theirs = _model(checkpoint3).generate(input_features=features, max_new_tokens=16, do_sample=False)
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


def _samples(path):
    samples, rate = read_wav(path)
    return resample(samples.mean(axis=1), rate, 16000)


def test_mel_windows_are_slices_of_the_whole_recordings_features(long_speech):
    from transformers import WhisperFeatureExtractor

    spec = edgemfm.manifest.AudioPreprocess(16000, 400, 160, 80, 480000)
    whole = WhisperFeatureExtractor(feature_size=80)(
        _samples(long_speech), sampling_rate=16000, truncation=False, padding="longest", return_tensors="np"
    ).input_features[0]
    source = WavSource(long_speech, 16000)
    reads = []
    read = source.read
    source.read = lambda a, b: reads.append(b - a) or read(a, b)
    mel = MelWindows(source, spec)
    assert mel.frames == whole.shape[1] > 3000
    for seek in (0, 1234, mel.frames - 500):
        n = min(3000, mel.frames - seek)
        window = mel.window(seek, 3000)
        assert float(abs(window[:, :n] - whole[:, seek : seek + n]).max()) < 1e-4
        assert not window[:, n:].any()  # padded with zeros, as transformers pads the last window
    # memory flat: never more than one window of samples (and the STFT's overlap) read at once
    assert max(reads) <= 480000 + 400 and source.length > 480000


SLOW = pytest.mark.slow  # each case runs transformers' long-form generate: a few in the default suite


@pytest.mark.parametrize(
    "windows,condition,prompt",
    [
        ("30s", False, ""),
        ("3s", False, ""),
        ("3s", True, "Hello there"),
        pytest.param("30s", True, "", marks=SLOW),
        pytest.param("30s", False, "Hello there", marks=SLOW),
        pytest.param("30s", True, "Hello there", marks=SLOW),
        pytest.param("3s", True, "", marks=SLOW),
        pytest.param("3s", False, "Hello there", marks=SLOW),
    ],
)
def test_longform_tokens_match_transformers_generate(request, long_speech, windows, condition, prompt):
    from transformers import WhisperFeatureExtractor

    checkpoint, bundle = (
        (request.getfixturevalue("checkpoint"), request.getfixturevalue("exported"))
        if windows == "30s"
        else (request.getfixturevalue("checkpoint3"), request.getfixturevalue("exported3"))
    )
    pipe = edgemfm.load(bundle)
    config = TranscribeConfig(prompt=prompt, condition_on_previous=condition)
    segments = list(pipe.transcribe(str(long_speech), config))
    ours = [t for s in segments for t in s.tokens]
    features = WhisperFeatureExtractor.from_pretrained(checkpoint)(
        _samples(long_speech), sampling_rate=16000, truncation=False, padding="longest", return_tensors="pt"
    ).input_features
    t = pipe.manifest.generation.transcription
    kwargs = (
        {"prompt_ids": torch.tensor([t.previous, *pipe.tokenizer.encode(" " + prompt, add_special_tokens=False).ids])}
        if prompt
        else {}
    )
    with torch.no_grad():
        out = _model(checkpoint).generate(
            input_features=features,
            return_timestamps=True,
            condition_on_prev_tokens=condition,
            return_segments=True,
            **kwargs,
        )
    theirs = [tok for tok in out["sequences"][0].tolist() if tok not in pipe.manifest.tokenizer.eos_token_ids]
    assert len(ours) >= 10 and ours == theirs
    assert [(s.start, s.end) for s in segments] == [
        (round(float(s["start"]), 3), round(float(s["end"]), 3)) for s in out["segments"][0]
    ]
    assert max(s["start"] for s in out["segments"][0]) > 3  # more than one window was decoded


def test_fallback_decodes_again_at_the_next_temperature(exported3, speech):
    pipe = edgemfm.load(exported3)
    greedy = [s.tokens for s in pipe.transcribe(str(speech))]
    # a log-probability no window reaches: every temperature is tried, the last one's tokens are kept
    unsure = TranscribeConfig(temperatures=(0.0, 1.0), logprob_threshold=0.0, seed=3)
    sampled = [s.tokens for s in pipe.transcribe(str(speech), unsure)]
    assert sampled and sampled != greedy
    assert compression_ratio([7, 8] * 50, 1770) > 2.4 > compression_ratio(list(range(100)), 1770)


def _looping(pipe):
    """The bundle's decoder made to answer a timestamp, then three text tokens over and over; its calls counted."""
    ts, calls, vocab = pipe.manifest.generation.transcription.no_timestamps + 1, [], pipe.tokenizer.get_vocab_size()
    cycle = [tok for tok in range(100, ts) if tok not in pipe.manifest.generation.suppress_tokens][:3]

    def run(cache, embeds):
        logits = np.zeros((1, vocab), np.float32)
        logits[0, ts if not calls else cycle[(len(calls) - 1) % len(cycle)]] = 20.0
        calls.append(embeds.shape[1])
        return logits

    pipe.decoder.run = run
    return calls, cycle


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_loop_is_completed_without_decoding_it(exported3, speech, temperature):
    from edgemfm.runtimes import longform

    judged = TranscribeConfig(logprob_threshold=-100.0)  # the mean log-probability is computed (and passes)
    runs = {}
    for name in ("completed", "decoded"):
        pipe = edgemfm.load(exported3)
        calls, cycle = _looping(pipe)  # so sure of each token that sampling picks it too
        mel = MelWindows(WavSource(speech, 16000), pipe.manifest.preprocess.audio)
        lf = longform.LongForm(pipe, judged)
        out = mel.window(0, mel.window_frames)[None]
        fixed = {k: v for k, v in lf.encoder.run({lf.cross.input: out}).items() if k in lf.cross.outputs}
        sampler = Sampler(temperature, seed=0)
        runs[name] = (lf._decode(fixed, list(lf.t.start), sampler, cut_loops=name == "completed"), len(calls))
    (completed, mean), steps = runs["completed"]
    assert (completed, mean) == runs["decoded"][0]  # the same tokens and mean log-probability as decoding on
    assert completed[1:7] == cycle * 2 and len(completed) == lf.t.max_target_positions - len(lf.t.start)
    assert steps < runs["decoded"][1]  # with fewer decoder steps


@pytest.mark.parametrize(
    "threshold,cut",
    [(2.4, [True, True, False]), (None, [True, False, False])],
)
def test_loops_are_cut_at_temperatures_whose_loop_fails_the_compression_check(exported3, speech, threshold, cut):
    from edgemfm.runtimes import longform

    pipe = edgemfm.load(exported3)
    _looping(pipe)
    config = TranscribeConfig(
        temperatures=(0.0, 0.5, 1.0), compression_ratio_threshold=threshold, logprob_threshold=0.0, seed=3
    )  # no window passes: every temperature is tried
    lf, seen = longform.LongForm(pipe, config), []
    decode = lf._decode
    lf._decode = lambda *a: seen.append(a[-1]) or decode(*a)
    mel = MelWindows(WavSource(speech, 16000), pipe.manifest.preprocess.audio)
    assert lf.window(mel, 0, earlier=[], condition=False)[0] and seen == cut


def test_cli_prints_timestamps_and_writes_transcripts_atomically(exported, long_speech, tmp_path, capsys, monkeypatch):
    import json

    monkeypatch.chdir(tmp_path)
    assert main(["run", str(exported), "--audio", str(long_speech), "--timestamps"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) > 2 and all(line.startswith("[00:0") and " → " in line for line in lines)
    for fmt in ("srt", "vtt", "json"):
        assert main(["run", str(exported), "--audio", str(long_speech), "--format", fmt]) == 0
    assert (tmp_path / "long.srt").read_text().startswith("1\n00:00:")
    assert (tmp_path / "long.vtt").read_text().startswith("WEBVTT\n")
    rows = json.loads((tmp_path / "long.json").read_text())["segments"]
    assert len(rows) == len(lines) and all(r["end"] >= r["start"] for r in rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.json", "long.srt", "long.vtt"]  # no temp files left
    # a longer recording than the window is transcribed whole without asking
    assert main(["run", str(exported), "--audio", str(long_speech)]) == 0
    assert capsys.readouterr().out.strip()


def _scripted(live, script):
    """The stream's window decodes answered from `script` (token lists), each checked to continue `forced`."""
    calls = iter(script)

    def window(mel, seek, earlier, condition, forced=()):
        tokens = next(calls)
        assert tokens[: len(forced)] == list(forced)  # the committed tokens are continued, never re-read
        return tokens, 0.0

    live.longform.window = window


@pytest.mark.parametrize(
    "delay, expected",
    [(0.0, ["", "the ca", "p is", " ready"]), (None, ["", "", "", "the cap is ready"])],  # None: the default
)
def test_live_commits_what_two_hypotheses_agree_on_and_settles_each_window_as_longform(exported3, delay, expected):
    """LocalAgreement-2 on scripted hypotheses (byte tokens) within a 3 s window; the whole window settled by the
    long-form rule: cut at its last complete segment's end, the words committed past it starting the next window.
    The default delay (a whole window) commits nothing before its window settles."""
    from edgemfm.runtimes.live import Live

    pipe = edgemfm.load(exported3)
    live = Live(pipe, TranscribeConfig(), step_s=1.0, **({} if delay is None else {"commit_delay_s": delay}))
    ids = lambda text: pipe.tokenizer.encode(text, add_special_tokens=False).ids  # noqa: E731
    t = lambda s: live.ts + round(s / 0.02)  # noqa: E731
    _scripted(
        live,
        [
            [t(0), *ids("the cat")],
            [t(0), *ids("the cap is")],  # agrees on "the ca"
            [t(0), *ids("the cap"), t(1), t(1), *ids(" is red")],  # agrees on "p is"
            [t(0), *ids("the cap"), t(1), t(1), *ids(" is read")],  # a whole window (3.02 s): cut at 1 s
            [t(0), *ids(" is ready"), t(1.5)],  # the end, continuing " is" from 1 s
        ],
    )
    updates = list(live.feed(np.zeros(n, np.float32) for n in (16000, 16000, 16320, 8000)))
    assert [u.committed for u in updates] == expected
    assert updates[2].partial == (" red" if delay == 0 else "the cap is red") and [u.audio_s for u in updates] == [
        1.0,
        2.0,
        3.0,
        3.52,
    ]
    done = updates[-1].segments
    assert [(s.start, s.end, s.text) for s in done] == [(0.0, 1.0, "the cap"), (1.0, 2.5, " is ready")]
    assert "".join(u.committed for u in updates) == "".join(s.text for s in done) == "the cap is ready"


@pytest.mark.parametrize("delay, expected", [(0.0, ["", "one two", " three"]), (1.5, ["", "one", " two three"])])
def test_live_commits_an_agreed_word_only_once_the_commit_delay_of_audio_follows_it(exported3, delay, expected):
    """At 2 s both hypotheses agree on "one two"; " two" ends at 0.9 s (its segment's closing timestamp), so with a
    1.5 s delay it waits (2.0 - 1.5 < 0.9) and the end settles it; "one" (ends 0.4 s) is committed at once."""
    from edgemfm.runtimes.live import Live

    pipe = edgemfm.load(exported3)
    live = Live(pipe, TranscribeConfig(), step_s=1.0, commit_delay_s=delay)
    ids = lambda text: pipe.tokenizer.encode(text, add_special_tokens=False).ids  # noqa: E731
    t = lambda s: live.ts + round(s / 0.02)  # noqa: E731
    said = [t(0), *ids("one"), t(0.4), t(0.4), *ids(" two")]
    _scripted(live, [said, [*said, t(0.9), t(1), *ids(" three")], [*said, t(0.9), t(1), *ids(" three"), t(2.4)]])
    updates = list(live.feed(np.zeros(n, np.float32) for n in (16000, 16000, 8000)))
    assert [u.committed for u in updates] == expected
    assert "".join(u.committed for u in updates) == "".join(s.text for s in updates[-1].segments) == "one two three"


def test_word_ends_spread_each_segment_to_its_closing_timestamp_or_the_audio_heard():
    from edgemfm.runtimes.live import word_ends

    ts = 100
    assert word_ends([ts, 1, 2, ts + 50, ts + 50, 3], ts, 0.02, heard=1.5) == [0.5, 1.0, 1.5]
    assert word_ends([ts + 10, 1, ts + 20], ts, 0.02, heard=3.0) == [0.4]
    assert word_ends([], ts, 0.02, heard=3.0) == []


def test_live_commits_a_whole_windows_complete_segments_though_no_two_hypotheses_agreed(exported3):
    from edgemfm.runtimes.live import Live

    pipe = edgemfm.load(exported3)
    live = Live(pipe, TranscribeConfig(), step_s=10.0)
    ids = lambda text: pipe.tokenizer.encode(text, add_special_tokens=False).ids  # noqa: E731
    t = lambda s: live.ts + round(s / 0.02)  # noqa: E731
    _scripted(
        live,
        [
            [t(0), *ids("one"), t(0.8), t(1), *ids(" two"), t(2), t(2), *ids(" thr")],  # settled: cut at 2 s
            [t(0), *ids(" three"), t(0.9)],  # the end
        ],
    )
    updates = list(live.feed([np.zeros(48320, np.float32)]))
    assert [u.committed for u in updates] == ["one two three"]
    assert [(s.start, s.end, s.text) for s in updates[-1].segments] == [
        (0.0, 0.8, "one"),
        (1.0, 2.0, " two"),
        (2.0, 2.9, " three"),
    ]


def test_live_settles_the_same_windows_as_longform_when_nothing_is_agreed_before(exported3, long_speech):
    """Fed in half-second chunks with no update before the end, the stream settles window after window as long-form
    does: the same segments, times and tokens (a buffer cut wherever LocalAgreement settled would not)."""
    pipe = edgemfm.load(exported3)
    samples = _samples(long_speech)
    # the log-mel's floor is 8 decades under the loudest frame, which a stream knows only once it has heard it:
    # here the loudest is in the first chunk
    samples[4000:4800] = 0.99 * np.sin(2 * np.pi * 1000 * np.arange(800) / 16000)
    longform = list(pipe.transcribe(samples))
    step = len(samples) / 16000 + 1
    updates = list(pipe.transcribe_stream((samples[i : i + 8000] for i in range(0, len(samples), 8000)), step_s=step))
    assert len(updates) == 1 and updates[0].committed == "".join(s.text for s in longform)
    assert [(round(s.start, 3), round(s.end, 3), s.tokens) for s in updates[0].segments] == [
        (s.start, s.end, s.tokens) for s in longform
    ]


def test_live_by_default_commits_only_settled_windows_so_its_text_is_the_longform_text(exported3, long_speech):
    """Updates every second (their partial text runs ahead), yet with the default delay (a whole window) nothing is
    committed before its window settles: the committed text, segments and tokens are long-form's."""
    pipe = edgemfm.load(exported3)
    samples = _samples(long_speech)
    samples[4000:4800] = 0.99 * np.sin(2 * np.pi * 1000 * np.arange(800) / 16000)  # the loudest frame heard first
    longform = list(pipe.transcribe(samples))
    updates = list(pipe.transcribe_stream(samples[i : i + 8000] for i in range(0, len(samples), 8000)))
    assert len(updates) == len(samples) // 16000 + 1 and any(u.partial for u in updates)
    assert "".join(u.committed for u in updates) == "".join(s.text for s in longform)
    assert [(round(s.start, 3), round(s.end, 3), s.tokens) for s in updates[-1].segments] == [
        (s.start, s.end, s.tokens) for s in longform
    ]


def test_live_text_is_prefix_stable_and_whole_audio_at_once_is_the_longform_text(exported3, long_speech):
    pipe = edgemfm.load(exported3)
    samples = _samples(long_speech)
    longform = "".join(s.text for s in pipe.transcribe(samples))
    once = list(pipe.transcribe_stream([samples], step_s=len(samples) / 16000 + 1))
    assert len(once) == 1 and once[0].committed == longform  # nothing to agree on: the long-form rule itself
    chunks = (samples[i : i + 8000] for i in range(0, len(samples), 8000))
    updates = list(pipe.transcribe_stream(chunks, step_s=1.0, commit_delay_s=0.0))
    committed = "".join(u.committed for u in updates)
    assert len(updates) == len(samples) // 16000 + 1 and committed
    assert "".join(s.text for s in updates[-1].segments) == committed  # the segments hold exactly what was committed
    assert all(s.start >= 0 and s.end >= s.start for s in updates[-1].segments)


def test_cli_transcribes_raw_pcm_from_stdin(exported3, long_speech, monkeypatch, capsys):
    import io
    import types

    pcm = (np.clip(_samples(long_speech)[: 16000 * 8], -1, 1) * 32767).astype("<i2").tobytes()
    monkeypatch.setattr("sys.stdin", types.SimpleNamespace(buffer=io.BytesIO(pcm)))
    assert main(["run", str(exported3), "--audio", "-", "--timestamps"]) == 0
    out = capsys.readouterr().out  # the random model's text holds any byte, newlines too
    assert "\n[00:00:0" in out and " → " in out
    assert main(["run", str(exported3), "--audio", "-", "--audio", str(long_speech)]) == 2
    assert "exactly one audio input" in capsys.readouterr().err
    assert main(["run", str(exported3), "--audio", "-", "--step", "0"]) == 2
    assert "argument --step: 0.0 is not allowed; allowed: a finite number above 0" in capsys.readouterr().err
    assert main(["run", str(exported3), "--audio", "-", "--step", "nan"]) == 2
    assert "argument --step: nan is not allowed" in capsys.readouterr().err
    assert main(["run", str(exported3), "--audio", "-", "--commit-delay", "-1"]) == 2
    assert "argument --commit-delay: -1.0 is not allowed; allowed: a finite number of at least 0" in (
        capsys.readouterr().err
    )
    with pytest.raises(InputError, match="commit_delay_s nan is not allowed"):
        edgemfm.load(exported3).transcribe_stream([np.zeros(16000, np.float32)], commit_delay_s=float("nan"))


def _oracle(live, words, ts, seconds=0.4, per_segment=5):
    """A perfect model's window: word i spoken over [0.4 i, 0.4 i + 0.3] s, five to a segment; the buffer's closed
    segments with both timestamps, then the words heard so far of the open one (checked to continue `forced`)."""

    def window(mel, seek, earlier, condition, forced=()):
        assert live.frames <= mel.window_frames + 2  # the buffer never outgrows the window (and 2 frames past it)
        heard = live.offset + min(live.frames, mel.window_frames) * 0.01
        stamp = lambda t: ts + round((t - live.offset) / 0.02)  # noqa: E731
        out = []
        for first in range(0, len(words), per_segment):
            start, end = first * seconds, (first + per_segment - 1) * seconds + 0.3
            said = [w for i, w in enumerate(words[first : first + per_segment]) if (first + i) * seconds + 0.3 <= heard]
            if start < live.offset - 1e-6 or not said:
                continue
            out += [stamp(start), *[t for w in said for t in w]] + ([stamp(end)] if end <= heard else [])
        assert out[: len(forced)] == list(forced)  # the committed words are continued, never re-read
        return out, 0.0

    return window


def test_live_commits_a_perfect_models_text_whole_with_a_bounded_buffer(exported3):
    """LocalAgreement-2 end to end on a model that hears perfectly: the committed text is the whole text, each
    hypothesis continues the committed tokens, and each 3 s window is cut where long-form cuts it."""
    from edgemfm.runtimes.live import Live

    pipe = edgemfm.load(exported3)
    words = [pipe.tokenizer.encode(f" w{i}", add_special_tokens=False).ids for i in range(30)]
    live = Live(pipe, TranscribeConfig(), step_s=1.0, commit_delay_s=0.0)
    ts, sizes, committed = live.ts, [], []
    oracle = _oracle(live, words, ts)

    def window(mel, seek, earlier, condition, forced=()):
        sizes.append(live.frames)
        return oracle(mel, seek, earlier, condition, forced)

    live.longform.window = window
    samples = np.zeros(16000 * 12, np.float32)
    for update in live.feed(samples[i : i + 8000] for i in range(0, samples.size, 8000)):
        committed.append(update.committed)
    assert "".join(committed) == pipe.tokenizer.decode([t for w in words for t in w])
    assert max(sizes) <= 302 and min(sizes) > 0 and len(sizes) >= 12  # within the 3 s window (and 2 frames)
    assert live.frames == 0 and [s.text for s in live.done][:2] == [" w0 w1 w2 w3 w4", " w5 w6 w7 w8 w9"]
    # stream time; the last segment, alone in the last window, starts where its window does (long-form's rule)
    assert [(round(s.start, 6), round(s.end, 6)) for s in live.done] == [(2.0 * i, 2.0 * i + 1.9) for i in range(5)] + [
        (9.9, 11.9)
    ]


def test_live_buffer_stays_within_one_window_and_hypotheses_continue_the_committed_text(exported3, long_speech):
    from edgemfm.runtimes.live import Live

    pipe = edgemfm.load(exported3)
    live = Live(pipe, TranscribeConfig(), step_s=1.0, commit_delay_s=0.0)
    real, seen = live.longform.window, []

    def window(mel, seek, earlier, condition, forced=()):
        out, temperature = real(mel, seek, earlier, condition, forced)
        seen.append(live.frames)
        assert out[: len(forced)] == list(forced)
        return out, temperature

    live.longform.window = window
    samples = _samples(long_speech)[: 16000 * 12]
    updates = list(live.feed(samples[i : i + 7000] for i in range(0, samples.size, 7000)))
    assert max(seen) <= 302 and seen  # (the random model's timestamps skip as far as 30 s, as long-form's would)
    assert "".join(u.committed for u in updates) == "".join(s.text for s in updates[-1].segments)


def test_a_terminal_sees_the_partial_on_a_status_line_while_committed_text_goes_to_stdout(capsys):
    import io

    from edgemfm.runtimes.live import LiveUpdate
    from edgemfm.speech import _print_live

    updates = [
        LiveUpdate(committed="", partial=" the act of", audio_s=2.0, segments=()),
        LiveUpdate(committed=" The act of moving.", partial=" next", audio_s=30.0, segments=()),
    ]
    status = io.StringIO()
    _print_live(iter(updates), timestamps=False, status=status)
    shown = status.getvalue()
    assert "the act of" in shown and "next" in shown and shown.endswith("\r\033[K")  # cleared at the end
    assert capsys.readouterr().out == " The act of moving.\n\n"  # committed only, a line per commit on a terminal
    _print_live(iter(updates), timestamps=False)  # piped (not a terminal): committed text only, as before
    assert capsys.readouterr().out == " The act of moving.\n"


def test_a_streams_log_mel_floor_is_the_recordings_not_each_chunk_framed_alone(exported3, long_speech):
    """The loudest frame so far is taken on the recording's hop grid as frames complete: after the last chunk it is
    long-form's, whatever the chunks (a chunk framed alone, reflected at its edges, reads louder than the recording)."""
    from edgemfm.runtimes.live import Live

    pipe = edgemfm.load(exported3)
    samples = _samples(long_speech)
    whole = MelWindows(WavSource(long_speech, 16000), pipe.manifest.preprocess.audio).top
    rng = np.random.default_rng(0)
    cuts = np.sort(rng.choice(len(samples), 60, replace=False))
    live = Live(pipe, TranscribeConfig(), step_s=1000.0)
    for chunk in np.split(samples, cuts):
        live._loudest(chunk)
    assert live.top <= whole
    live._loudest(np.zeros(0, np.float32), final=True)
    assert live.top == pytest.approx(whole, abs=1e-9)
