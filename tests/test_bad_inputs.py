"""The bad-input catalogue: every case ends in a typed error of one line (CLI: exit 2, no
traceback) that names the problem, and leaves nothing behind."""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import edgemfm
from edgemfm.cli import main
from edgemfm.errors import EdgemfmError, MissingExtraError, UnknownDeviceError, UnsupportedModelError
from edgemfm.manifest import AudioPreprocess
from edgemfm.runtimes.audio import load_audio, read_wav

WHISPER = AudioPreprocess(sampling_rate=16000, n_fft=400, hop_length=160, n_mels=80, n_samples=480000)
BAD_UTF8 = b"\xff\xfe".decode("utf-8", "surrogateescape")  # what Python makes of argv bytes that are not UTF-8


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A real 1x1 PNG whose header claims `width` x `height` (Pillow reads the size from the header)."""
    Image.new("RGB", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))
    return path


def _wav(path: Path, samples: np.ndarray, rate: int = 16000, channels: int = 1, claim: int | None = None) -> Path:
    """A float32 WAV; `claim` overrides the data size its header states."""
    raw = samples.astype(np.float32).tobytes()
    fmt = struct.pack("<HHIIHH", 3, channels, rate, rate * 4 * channels % 2**32, 4 * channels % 2**16, 32)
    data = struct.pack("<4sI", b"data", len(raw) if claim is None else claim) + raw
    body = b"WAVE" + struct.pack("<4sI", b"fmt ", len(fmt)) + fmt + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("media")
    (d / "folder.png").mkdir()
    (d / "bad-config").mkdir()
    (d / "bad-config" / "config.json").write_text("{not json")
    (d / "list-config").mkdir()
    (d / "list-config" / "config.json").write_text("[]")
    (d / "no-weights").mkdir()
    (d / "no-weights" / "config.json").write_text(
        json.dumps({"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"]})
    )
    shutil.copytree(d / "no-weights", d / "truncated")
    header = b'{"w": {"dtype": "F32", "shape": [4096], "data_offsets": [0, 16384]}}'
    (d / "truncated" / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(100))
    Image.new("RGB", (64, 48), (200, 30, 30)).save(d / "ok.png")
    (d / "questions").mkdir()  # a finetune data folder that reads well, so the checkpoint is what fails
    for split in ("train", "eval"):
        row = {"image": str(d / "ok.png"), "prompt": "What colour is it?", "answer": "red"}
        (d / "questions" / f"{split}.jsonl").write_text(json.dumps(row) + "\n")
    return {
        "ok": str(d / "ok.png"),
        "bomb": str(_png_claiming(d / "bomb.png", 20000, 20000)),
        "folder": str(d / "folder.png"),
        "bad_config": str(d / "bad-config"),
        "list_config": str(d / "list-config"),
        "no_weights": str(d / "no-weights"),
        "truncated": str(d / "truncated"),
        "questions": str(d / "questions"),  # a download cut short: the header promises more bytes than the file holds
        "file": str(d / "bomb.png"),
    }


def _one_line_refusal(argv: list[str], capsys, fragment: str) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()  # `run` says which provider it runs on first
    errors = [line for line in lines if line.startswith("edgemfm: error: ")]
    assert len(errors) == 1 and all(line.startswith("edgemfm: ") for line in lines), lines
    assert "Traceback" not in captured.out + captured.err
    assert fragment in errors[0], errors[0]


RUN_CASES = [
    (["--memory-budget", "nan"], "argument --memory-budget: nan is not allowed"),
    (["--memory-budget", "inf"], "argument --memory-budget: inf is not allowed"),
    (["--memory-budget", "0"], "allowed: a finite number above 0"),
    (["--memory-budget", "-5"], "allowed: a finite number above 0"),
    (["--seed", "-1"], "argument --seed: -1 is not allowed; allowed: an integer from 0 to 4294967295"),
    (["--seed", str(2**40)], "allowed: an integer from 0 to 4294967295"),
    (["--seed", "1.5"], "'1.5' is not an integer"),
    (["--threads", "-1"], "argument --threads: -1 is not allowed; allowed: an integer from 0 to 1024"),
    (["--threads", "100000"], "allowed: an integer from 0 to 1024"),
    (["--temperature", "nan"], "argument --temperature"),
    (["--temperature", "-1"], "allowed: a finite number of at least 0"),
    (["--top-p", "0"], "argument --top-p: 0.0 is not allowed"),
    (["--top-p", "1.5"], "argument --top-p: 1.5 is not allowed"),
    (["--top-k", "-3"], "argument --top-k: -3 is not allowed"),
    (["--max-new-tokens", "-1"], "argument --max-new-tokens: -1 is not allowed"),
    (["--max-new-tokens", "x"], "'x' is not an integer"),
    (["--draft-k", "0"], "argument --draft-k: 0 is not allowed"),
    (["--device", ""], "argument --device: '' is empty; allowed: a non-empty name"),
    (["--device", "pi9"], "unknown device 'pi9'; known: "),
    (["--prompt", BAD_UTF8], "prompt is not valid UTF-8 text"),
    (["--image", "{bomb}"], "(400000000 pixels)); allowed: at most 89478485 pixels"),
    (["--image", "{folder}"], "is a directory; allowed: an image file"),
    (["--image", "missing.png"], "image file 'missing.png' does not exist"),
    (["--audio", "x.wav"], "this bundle takes no audio input; it takes: text, image"),
    (["--stop", ""], "a stop string must not be empty"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
]


@pytest.mark.parametrize("extra, fragment", RUN_CASES, ids=[" ".join(c[0])[:40] for c in RUN_CASES])
def test_run_refuses_in_one_line(default_bundle, media, capsys, extra, fragment):
    extra = [x.format(**media) for x in extra]
    argv = ["run", str(default_bundle), "--prompt", "hi", "--max-new-tokens", "2", *extra]
    _one_line_refusal(argv, capsys, fragment)


EXPORT_CASES = [
    (["--out", "/proc/x/b"], "cannot be created in '/proc'"),
    (["--out", ""], "argument --out: '' is empty"),
    (["--device", ""], "argument --device: '' is empty"),
    (["--memory-budget", "nan"], "argument --memory-budget: nan is not allowed"),
    (["--memory-budget", "-1"], "allowed: a finite number above 0"),
    (["--accuracy-tolerance", "inf"], "argument --accuracy-tolerance: inf is not allowed; allowed: a finite number"),
    (["--max-seq-len", "0"], "argument --max-seq-len: 0 is not allowed"),
    (["--recover", "-1"], "argument --recover: -1 is not allowed"),
    (["--model", "{bad_config}"], "config.json' is not valid JSON"),
    (["--model", "{list_config}"], "config.json' holds a list; allowed: a JSON object"),
    (["--model", "{no_weights}"], "cannot load the checkpoint in"),
    (["--model", "{truncated}"], "cannot load the checkpoint in"),
    (["--model", "{file}"], "model directory"),
    (["--calibration", "/nonexistent"], "calibration folder '/nonexistent' does not exist"),
    (["--format", "xyz"], "format 'xyz' is not available"),
]


@pytest.mark.parametrize("extra, fragment", EXPORT_CASES, ids=[" ".join(c[0])[:40] for c in EXPORT_CASES])
def test_export_refuses_in_one_line_and_leaves_nothing(tmp_path, media, capsys, monkeypatch, extra, fragment):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    # torch's own compile cache (made under the temp dir the first time a process loads a checkpoint) is not ours
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path.parent / "torchinductor"))
    monkeypatch.setattr(tempfile, "tempdir", None)
    extra = [x.format(**media) for x in extra]
    argv = ["export", "--device", "host", "--out", str(tmp_path / "b"), *extra]
    _one_line_refusal(argv, capsys, fragment)
    assert not [p for p in tmp_path.iterdir() if p.name != ".ses"]  # nothing written, no scratch left


OTHER_CASES = [
    (["prune", "--model", "m", "--out", "o", "--blocks", "-1"], "argument --blocks: -1 is not allowed"),
    (["prune", "--model", "m", "--out", "o", "--mlp", "1.5"], "--mlp 1.5 is outside (0, 1)"),
    (["prune", "--model", "m", "--out", "o", "--heads", "nan"], "argument --heads: nan is not allowed"),
    (["tune", "--device", "host", "--latency-budget", "nan"], "argument --latency-budget: nan is not allowed"),
    (["tune", "--device", "host", "--latency-budget", "0"], "argument --latency-budget: 0.0 is not allowed"),
    (["tune", "--device", "host", "--latency-budget", "9", "--workers", "0"], "argument --workers: 0"),
    (["bench", "b", "--tokens", "0"], "argument --tokens: 0 is not allowed"),
    (["bench", "b", "--repeats", "-1"], "argument --repeats: -1 is not allowed"),
    (["finetune", "--model", "m", "--data", "d", "--out", "o", "--lr", "nan"], "argument --lr: nan is not allowed"),
    (["finetune", "--model", "m", "--data", "d", "--out", "o", "--batch-size", "0"], "argument --batch-size: 0"),
    (["finetune", "--model", "m", "--data", "d", "--out", "o", "--seed", "-1"], "argument --seed: -1"),
    (["inspect", "/nonexistent"], "bundle '/nonexistent' is not a directory"),
    (["devices", "show", ""], "devices show needs a device NAME"),
    (["nosuchverb"], "edgemfm: error: argument command: invalid choice: 'nosuchverb'"),
]


@pytest.mark.parametrize("argv, fragment", OTHER_CASES, ids=[" ".join(c[0])[:50] for c in OTHER_CASES])
def test_other_verbs_refuse_in_one_line(tmp_path, capsys, monkeypatch, argv, fragment):
    monkeypatch.chdir(tmp_path)
    _one_line_refusal(argv, capsys, fragment)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "error",
    [
        UnknownDeviceError("toaster", ["pi5"]),
        UnsupportedModelError("Foo", ["llama"], "prune"),
        MissingExtraError("torch"),
    ],
    ids=type,
)
def test_a_typed_error_crosses_a_process_boundary(error):
    # bench and tune run their work in spawned workers, which send a raised error back pickled: one whose
    # __init__ takes (name, known) could not be rebuilt from its message, and `edgemfm bench --device toaster` hung
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error) and str(back) == str(error)


@pytest.mark.parametrize("verb", [["prune", "--mlp", "0.5"], ["finetune", "--data", "{questions}"]], ids=lambda v: v[0])
def test_a_truncated_checkpoint_is_refused_by_every_verb_that_loads_one(tmp_path, media, capsys, verb):
    argv = [
        verb[0],
        "--model",
        media["truncated"],
        "--out",
        str(tmp_path / "o"),
        *(x.format(**media) for x in verb[1:]),
    ]
    _one_line_refusal(argv, capsys, "cannot load the checkpoint in")
    assert not (tmp_path / "o").exists()


def _set(path: str, value):
    """An edit of the manifest dict setting the dotted `path` (list items by index)."""

    def edit(m: dict) -> dict:
        *parents, last = path.split(".")
        node = m
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = (
            value(node[int(last) if isinstance(node, list) else last]) if callable(value) else value
        )
        return m

    return edit


def _rewrite(name: str, data: bytes):
    """An edit replacing a bundle file and updating its sha256 and size, as a careful attacker would."""

    def edit(m: dict, bundle: Path) -> dict:
        (bundle / name).write_bytes(data)
        m["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        return m

    return edit


MANIFEST_CASES = [
    (_set("components.text_decoder.kv_cache.layers", 0), "kv_cache.layers 0 is not allowed; allowed: 1 to 1024"),
    (_set("components.text_decoder.kv_cache.head_dim", 0), "kv_cache.head_dim 0 is not allowed"),
    (_set("components.text_decoder.kv_cache.past", "past.{layer}.{kind}.{shard}"), "not {shard}"),
    (_set("prompt.template", "USER: {media}{prompt}{foo} ASSISTANT:"), "prompt.template"),
    (_set("prompt.template", "USER: {media"), "prompt.template"),
    (_set("components.text_decoder.dtype", "float128"), "dtype 'float128' is not allowed; allowed: bfloat16"),
    (_set("components.vision_encoder.inputs.0.dtype", "float128"), "inputs[0].dtype 'float128'"),
    (_set("generation.decoder", "nope"), "generation.decoder 'nope' is not allowed; allowed: text_decoder"),
    (_set("generation.embedding", "nope"), "generation.embedding 'nope'"),
    (_set("components.text_decoder.inputs.1.name", "attn_mask"), "differ from its graph's"),
    (_set("components.text_decoder.inputs.0.name", "embeds"), "'inputs_embeds' is not allowed"),
    (_set("generation.suppress_tokens", [10**6]), "generation.suppress_tokens 1000000 is not allowed"),
    (_set("generation.max_new_tokens", -1), "generation.max_new_tokens -1"),
    (_set("components.text_decoder.peak_activation_bytes", -1), "peak_activation_bytes -1 is not allowed"),
    (_set("components.vision_encoder.weight_bytes", 10**15), "weight_bytes 1000000000000000 is not allowed"),
    (_set("tokenizer.eos_token_ids", [10**20]), "tokenizer"),
    (_set("tokenizer.eos_token_ids", [5000]), "tokenizer.eos_token_ids 5000 is not allowed; allowed: 0 to"),
    (_set("prompt.media.image.token_id", 999999), "prompt.media.image.token_id 999999"),
    (_set("prompt.media.image.encoder", "nope"), "prompt.media.image.encoder 'nope'"),
    (_set("prompt.media.image.output", "nope"), "prompt.media.image.output 'nope'"),
    (_set("prompt.media.image.placeholder", "<notatoken>"), "does not tokenize to its token id"),
    (_set("preprocess.image.size", 34000), "preprocess.image.size 34000 is not allowed; allowed: 1 to 4096"),
    (_set("preprocess.image.std", [0.0, 1.0, 1.0]), "preprocess.image.std 0.0 is not allowed"),
    (_set("preprocess.image", None), "preprocess.image None is not allowed"),
    (_set("streaming.max_seq_len", 0), "streaming.max_seq_len 0 is not allowed"),
    (_set("streaming.audio_window_s", float("nan")), "streaming.audio_window_s nan"),
    (_set("report.parity", []), "report.parity: expected a table/object, got []"),
    (_set("report.parity.text_decoder.max_abs_diff", "x"), "max_abs_diff: expected float, got 'x'"),
    (_rewrite("text_decoder.onnx", b"garbage" * 100), "'text_decoder.onnx' is not an ONNX model onnxruntime"),
    (_rewrite("tokenizer.json", b""), "'tokenizer.json' is not a tokenizer the tokenizers library reads"),
    (_rewrite("tokenizer.json", b"{}"), "'tokenizer.json' is not a tokenizer"),
]


@pytest.mark.parametrize("edit, fragment", MANIFEST_CASES, ids=[c[1][:45] for c in MANIFEST_CASES])
def test_hostile_manifest_is_refused_in_one_line(default_bundle, media, tmp_path, capsys, edit, fragment):
    copy = tmp_path / "bundle"
    shutil.copytree(default_bundle, copy)
    path = copy / "manifest.json"
    m = json.loads(path.read_text())
    m = edit(m, copy) if edit.__code__.co_argcount == 2 else edit(m)
    path.write_text(json.dumps(m))
    argv = ["run", str(copy), "--prompt", "hi", "--image", media["ok"], "--max-new-tokens", "2"]
    _one_line_refusal(argv, capsys, fragment)


def test_symlinked_bundle_file_is_refused(default_bundle, tmp_path, capsys):
    copy = tmp_path / "bundle"
    shutil.copytree(default_bundle, copy)
    target = tmp_path / "elsewhere.json"
    shutil.move(copy / "tokenizer.json", target)
    os.symlink(target, copy / "tokenizer.json")
    _one_line_refusal(["inspect", str(copy)], capsys, "'tokenizer.json' is a symbolic link; allowed: plain files")


@pytest.fixture(scope="module")
def pipe(default_bundle):
    return edgemfm.load(default_bundle)


API_CASES = [
    (lambda p, b: edgemfm.load(b, device=""), "device '' is empty"),
    (lambda p, b: edgemfm.load(b, threads=-1), "threads -1 is not allowed"),
    (lambda p, b: edgemfm.load(b, threads=2.5), "threads 2.5 is not allowed"),
    (lambda p, b: edgemfm.load(b, memory_budget=math.nan), "memory budget (MiB) nan is not allowed"),
    (lambda p, b: edgemfm.load(b, memory_budget=0), "memory budget (MiB) 0 is not allowed"),
    (lambda p, b: edgemfm.load(b, draft_k=0), "draft_k 0 is not allowed"),
    (lambda p, b: edgemfm.load(b, sink_tokens=10**9), "streaming settings"),
    (lambda p, b: list(p.generate(None)), "prompt None is a NoneType; allowed: a str"),
    (lambda p, b: list(p.generate(b"hi")), "prompt b'hi' is a bytes"),
    (lambda p, b: list(p.generate("hi", images="x.png")), "images='x.png' is one str; allowed: a list"),
    (lambda p, b: list(p.generate("hi", images=Path("x.png"))), "is one PosixPath"),
    (lambda p, b: list(p.generate("hi", audio="x.wav")), "audio='x.wav' is one str"),
    (lambda p, b: list(p.generate("hi", images=[42])), "image item 42 is a int"),
    (lambda p, b: list(p.generate("hi" + BAD_UTF8)), "prompt is not valid UTF-8 text"),
    (lambda p, b: list(p.generate("hi", seed=-1)), "seed -1 is not allowed"),
    (lambda p, b: list(p.generate("hi", max_new_tokens=-1)), "max_new_tokens -1 is not allowed"),
    (lambda p, b: list(p.generate("hi", max_new_tokens=1.5)), "max_new_tokens 1.5 is not allowed"),
    (lambda p, b: list(p.generate("hi", temperature=math.nan)), "temperature nan is not allowed"),
    (lambda p, b: list(p.generate("hi", top_p=math.inf)), "top-p inf is not allowed"),
    (lambda p, b: list(p.generate("hi", images=[np.zeros((4, 4), np.float32)])), "image array must be HxWx3 uint8"),
]


@pytest.mark.parametrize("call, fragment", API_CASES, ids=[c[1][:40] for c in API_CASES])
def test_api_refuses_with_a_typed_one_line_error(pipe, default_bundle, call, fragment):
    with pytest.raises(EdgemfmError) as err:
        call(pipe, default_bundle)
    assert fragment in str(err.value) and "\n" not in str(err.value), str(err.value)


SECOND = np.sin(np.linspace(0, 2000, 16000)).astype(np.float32)
AUDIO_CASES = [
    (lambda d: _wav(d / "nan.wav", np.where(np.arange(16000) == 9, np.nan, SECOND)), "NaN or infinite samples"),
    (lambda d: _wav(d / "inf.wav", np.where(np.arange(16000) == 9, np.inf, SECOND)), "NaN or infinite samples"),
    (lambda d: _wav(d / "2h.wav", SECOND, claim=7200 * 16000 * 4), "lasts 7200.0 s; this model takes clips of"),
    (lambda d: _wav(d / "short.wav", SECOND, claim=3 * 16000 * 4), "header claims 192000 (truncated?)"),
    (lambda d: _wav(d / "1hz.wav", SECOND[:10], rate=1), "declares 1 Hz; allowed: 1000 to 768000 Hz"),
    (lambda d: _wav(d / "many.wav", np.zeros(65535 * 2), channels=65535), "declares 65535 channels; allowed: 1 to"),
    (lambda d: (d / "dir.wav").mkdir() or d / "dir.wav", "is a directory; allowed: a WAV file"),
    (lambda d: np.array([0.0, np.nan], np.float32), "audio array holds NaN or infinite samples"),
    (lambda d: 42, "audio item 42 is a int"),
]


@pytest.mark.parametrize("make, fragment", AUDIO_CASES, ids=[c[1][:40] for c in AUDIO_CASES])
def test_audio_is_checked_before_it_is_decoded(tmp_path, make, fragment):
    with pytest.raises(EdgemfmError) as err:
        load_audio(make(tmp_path), WHISPER)
    assert fragment in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_wav_shorter_than_its_header_is_reported_without_a_length_limit(tmp_path):
    with pytest.raises(EdgemfmError, match=r"holds 64000 bytes of samples where its header claims 460800000"):
        read_wav(_wav(tmp_path / "2h.wav", SECOND, claim=7200 * 16000 * 4))
