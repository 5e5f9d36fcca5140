"""The command line: one-line errors with exit code 2, real output for each command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgemfm.cli import main


def test_devices_lists_every_profile(capsys):
    assert main(["devices", "--json"]) == 0
    names = {p["name"] for p in json.loads(capsys.readouterr().out)}
    assert {"jetson-orin-nano-8gb", "raspberry-pi-5-8gb", "snapdragon-8-gen-3", "host-x86-64-avx2"} <= names


def test_a_reader_that_goes_away_ends_the_output_quietly():
    # `edgemfm devices --json | head -1`: the pipe closes before the JSON is written
    reader_gone = subprocess.run(
        f"{sys.executable} -m edgemfm.cli devices --json | true",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in reader_gone.stderr and "BrokenPipeError" not in reader_gone.stderr, reader_gone.stderr


def test_devices_show_resolves_an_alias(capsys):
    assert main(["devices", "show", "jetson"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "jetson-orin-nano-8gb"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["devices", "show", "pi9"], "unknown device 'pi9'; known: "),
        (["export", "--device", "pi9"], "unknown device 'pi9'"),
        (
            ["export", "--device", "jetson", "--format", "pte"],
            "format 'pte' is not available for jetson-orin-nano-8gb; allowed: onnx",
        ),
        (["export", "--device", "host", "--precision", "int3"], "precision 'int3' is not supported; allowed: fp32"),
        (
            ["export", "--device", "pi5", "--format", "pte", "--max-seq-len", "5000"],
            "max sequence length 5000 is out of range for raspberry-pi-5-8gb; allowed: 1 to 1024",
        ),
        (["export", "--device", "host", "--model", "/nonexistent"], "model directory '/nonexistent' does not exist"),
        (["run", "/nonexistent", "--prompt", "hi"], "bundle '/nonexistent' is not a directory"),
        (["inspect", "/nonexistent"], "bundle '/nonexistent' is not a directory"),
    ],
)
def test_user_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgemfm: error: ") and message in err and "\n" not in err


def test_run_streams_an_answer(default_bundle, picture, capsys):
    assert (
        main(
            [
                "run",
                str(default_bundle),
                "--prompt",
                "What is in the picture?",
                "--image",
                str(picture),
                "--max-new-tokens",
                "12",
            ]
        )
        == 0
    )
    answer = capsys.readouterr().out.strip()
    assert len(answer) >= 6 and answer.isprintable()


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--image", "missing.png", "image file 'missing.png' does not exist"),
        ("--image", "manifest.json", "is not an image Pillow can read"),
        ("--audio", "speech.wav", "this bundle takes no audio input; it takes: text, image"),
    ],
)
def test_run_rejects_bad_media(default_bundle, flag, value, message, capsys):
    path = str(default_bundle / value) if value == "manifest.json" else value
    assert main(["run", str(default_bundle), "--prompt", "hi", flag, path]) == 2
    assert message in capsys.readouterr().err


def test_inspect_shows_components(default_bundle, capsys):
    assert main(["inspect", str(default_bundle)]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in ("vision_encoder", "token_embedding", "text_decoder", "host-x86-64-avx2"))


def test_import_and_run_stay_free_of_torch(default_bundle, picture):
    """The runtime install has no torch: importing edgemfm and running a bundle must not need it."""
    code = (
        "import sys; from edgemfm.cli import main; import edgemfm;"
        f"rc = main(['run', {str(default_bundle)!r}, '--prompt', 'hi', '--image', {str(picture)!r}, '--max-new-tokens', '4']);"
        "heavy = sorted({'torch', 'transformers', 'onnx', 'onnxscript'} & set(sys.modules));"
        "print('HEAVY', heavy); sys.exit(rc or bool(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "HEAVY []" in result.stdout
