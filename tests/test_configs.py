"""The verbs' configs and the progress callback: JSON round trips, typed refusals, `export --dry-run`,
and a core that reports through the callback and never draws (or imports rich) itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import edgemfm
from edgemfm.cli import main
from edgemfm.configs import ExportConfig, FinetuneConfig, QuantizeConfig
from edgemfm.errors import ConfigError, InputError
from edgemfm.recipe import QuantSpec, Recipe, Rule
from edgemfm.records import from_dict, to_dict

CONFIGS = [
    ExportConfig(),
    ExportConfig(
        model="models/llava",
        device="pi5",
        out="llava-pi5",
        precision="auto",
        calibration="calib",
        memory_budget_mb=512.0,
        accuracy_tolerance_db=18.5,
        prune=("mlp=0.2", "vision_encoder:blocks=1"),
        recover=24,
    ),
    QuantizeConfig(precision="int8"),
    QuantizeConfig(
        precision="int4",
        recipe=Recipe(rules=(Rule("vision_encoder/*", None), Rule("*", QuantSpec(bits=4, group_size=32)))),
    ),
    FinetuneConfig(model="models/demo-base", data="data/demo", out="models/demo", steps=3, cache="cache"),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_every_config_round_trips_through_json(config):
    data = json.loads(json.dumps(to_dict(config)))
    assert data["version"] == 1
    assert from_dict(type(config), data) == config


@pytest.mark.parametrize("cls", [ExportConfig, QuantizeConfig, FinetuneConfig])
def test_an_unknown_key_is_refused_with_the_known_ones(cls):
    data = {**to_dict(CONFIGS[-1] if cls is FinetuneConfig else cls()), "bits": 4}
    with pytest.raises(ConfigError, match=r"unknown key 'bits'; known: .*version"):
        from_dict(cls, data)


def test_paths_are_kept_as_text_so_the_json_is_the_config():
    config = FinetuneConfig(model=Path("m"), data=Path("d"), out=Path("o"), cache=Path("c"))
    assert (config.model, config.data, config.out, config.cache) == ("m", "d", "o", "c")
    assert ExportConfig(prune=["mlp=0.2"]).prune == ("mlp=0.2",)  # a CLI list becomes the record's tuple


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: ExportConfig(memory_budget_mb=0), "memory budget 0 MB must be a positive number"),
        (lambda: QuantizeConfig(memory_budget_mb=-1.0), "memory budget -1.0 MB must be a positive number"),
        (lambda: FinetuneConfig("m", "d", "o", steps=-1), "steps must be 0 or more, got -1"),
        (lambda: FinetuneConfig("m", "d", "o", batch_size=0), "must be at least 1, got 0 and 20"),
    ],
)
def test_meaningless_values_are_refused_when_the_config_is_built(build, message):
    with pytest.raises(InputError, match=message):
        build()


def test_the_configs_come_from_edgemfm_itself():
    assert (edgemfm.ExportConfig, edgemfm.QuantizeConfig, edgemfm.FinetuneConfig) == (
        ExportConfig,
        QuantizeConfig,
        FinetuneConfig,
    )


def test_export_dry_run_prints_the_resolved_config_and_builds_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--device", "pi5", "--precision", "int4", "--dry-run"]) == 0
    config = from_dict(ExportConfig, json.loads(capsys.readouterr().out))
    assert (config.device, config.precision, config.fuse) == ("raspberry-pi-5-8gb", "int4", True)
    assert config.out == "edgemfm-demo-raspberry-pi-5-8gb" and config.max_seq_len == 1024
    assert config.accuracy_tolerance_db == 20.0
    assert list(tmp_path.iterdir()) == []


def test_export_dry_run_still_refuses_what_the_device_cannot_do(capsys):
    assert main(["export", "--device", "jetson", "--format", "pte", "--dry-run"]) == 2
    assert "format 'pte' is not available for jetson-orin-nano-8gb" in capsys.readouterr().err


def test_export_reports_through_the_callback_and_prints_nothing(placeholder_model, tmp_path, capfd):
    heard = []
    out = edgemfm.export(
        ExportConfig(model=placeholder_model, device="host", out=tmp_path / "b"), lambda d, f: heard.append((d, f))
    )
    assert (out / "manifest.json").is_file()
    assert heard[0][0].startswith("loading ") and len(heard) > 3
    assert all(isinstance(d, str) and (f is None or 0.0 <= f <= 1.0) for d, f in heard)
    captured = capfd.readouterr()
    assert captured.out == "" and "loading" not in captured.err


def test_the_verbs_never_import_rich():
    code = (
        "import sys; import edgemfm.exporting, edgemfm.finetune, edgemfm.quantizers.quantize,"
        " edgemfm.pruners.prune, edgemfm.tune, edgemfm.bench;"
        "print('RICH', sorted(m for m in sys.modules if m.split('.')[0] == 'rich'))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "RICH []" in result.stdout


def test_a_failing_write_leaves_the_previous_file_intact_and_no_temporary_file(tmp_path, monkeypatch):
    from edgemfm import records
    from edgemfm.runtimes import transcripts
    from edgemfm.runtimes.cascade import Calibration
    from edgemfm.runtimes.longform import Segment

    path, plain = tmp_path / "report.json", tmp_path / "plain.txt"
    records.write_json(path, {"run": 1})
    plain.write_text("x")
    before = path.read_text()
    assert json.loads(before) == {"run": 1} and path.stat().st_mode == plain.stat().st_mode  # not owner-only

    def half_then_full(value, f, **options):  # half the JSON written, then the disk is full
        f.write('{"run": ')
        raise OSError(28, "No space left on device")

    calibration = Calibration(-0.3, 10, 0.9, 1.0, 0.99, 0.1)
    for write in (
        lambda: records.write_json(path, {"run": 2}),
        lambda: calibration.save(path),  # Calibration.save, bench's --json and signing's record all write through it
    ):
        with monkeypatch.context() as m:
            m.setattr(records.json, "dump", half_then_full)
            with pytest.raises(OSError, match="No space left on device"):
                write()
        assert path.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["plain.txt", "report.json"]
    with pytest.raises(TypeError, match="not JSON serializable"):  # found mid-way, after the first keys are written
        records.write_json(path, {"a": 1, "b": [2, object()]})
    with monkeypatch.context() as m:  # the rename itself fails: a transcript too keeps its old file
        m.setattr(records.os, "replace", lambda *a: (_ for _ in ()).throw(PermissionError("read-only")))
        with pytest.raises(PermissionError):
            transcripts.write(path, [Segment(0.0, 1.0, " Hi.", ())], "json")
    assert path.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["plain.txt", "report.json"]
    calibration.save(path)
    assert Calibration.read(path) == calibration and len(list(tmp_path.iterdir())) == 2
