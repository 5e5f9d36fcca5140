"""No lost data, no leftovers: outputs never overlap inputs, replacing is atomic, bundles get
normal permissions, and killed exports (SIGTERM, SIGKILL) leave nothing once the next one ran."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import demo_weights

from edgemfm import bundle, leftovers
from edgemfm.cli import main
from edgemfm.errors import InputError


def _checkpoint(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llava"}')
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize(
    "out, message",
    [
        ("{model}", "is the input"),
        ("{model}/bundle", "is inside the input"),
        ("{model}/..", "holds the input"),
        ("{calibration}/b", "is inside the input"),
    ],
)
def test_output_overlapping_an_input_is_refused_before_anything_is_touched(tmp_path, capsys, out, message):
    model = _checkpoint(tmp_path / "ckpt")
    calibration = tmp_path / "calib"
    calibration.mkdir()
    before = _snapshot(tmp_path)
    target = out.format(model=model, calibration=calibration)
    argv = ["export", "--device", "host", "--model", str(model), "--calibration", str(calibration), "--out", target]
    assert main([*argv, "--force"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "allowed: a folder outside every input" in err and "\n" not in err
    assert _snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["calib", "ckpt"]


def test_output_under_proc_is_refused_in_one_line(tmp_path, capsys):
    assert main(["export", "--device", "host", "--model", str(_checkpoint(tmp_path / "m")), "--out", "/proc/x/b"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot be created in '/proc'" in err and "\n" not in err


def _fake_bundle(stage: Path, text: str) -> None:
    (stage / "a.bin").write_text(text)


def test_force_replaces_atomically_with_normal_permissions(tmp_path):
    out = tmp_path / "b"
    for text in ("old", "new"):
        with bundle.staging(out, force=True, verify=lambda p: None) as stage:
            _fake_bundle(stage, text)
    assert (out / "a.bin").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert (out.stat().st_mode & 0o777, (out / "a.bin").stat().st_mode & 0o777) == (
        0o777 & ~umask,
        0o666 & ~umask,
    )


def test_permissions_follow_the_umask(tmp_path):
    previous = os.umask(0o077)
    try:
        with bundle.staging(tmp_path / "b", verify=lambda p: None) as stage:
            _fake_bundle(stage, "x")
    finally:
        os.umask(previous)
    assert ((tmp_path / "b").stat().st_mode & 0o777, (tmp_path / "b/a.bin").stat().st_mode & 0o777) == (0o700, 0o600)


def test_replace_without_exchange_never_leaves_out_empty(tmp_path, monkeypatch):
    """The two-rename fallback: a kill between the renames leaves the old bundle aside, and the
    next run's sweep puts it back."""
    out = tmp_path / "b"
    with bundle.staging(out, verify=lambda p: None) as stage:
        _fake_bundle(stage, "old")
    monkeypatch.setattr(bundle, "_exchange", lambda a, b: False)
    with bundle.staging(out, force=True, verify=lambda p: None) as stage:
        _fake_bundle(stage, "new")
    assert (out / "a.bin").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    aside = tmp_path / f".b.{_dead_pid()}-x1.old"
    out.rename(aside)  # as a kill after the first rename leaves it
    assert leftovers.sweep_for(out) == [] and (out / "a.bin").read_text() == "new"


def test_dead_runs_leftovers_are_swept_and_live_ones_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr("tempfile.tempdir", None)
    (tmp_path / "tmp").mkdir()
    dead, live = _dead_pid(), os.getppid()
    made = [
        tmp_path / f".b.{dead}-k3.partial",
        tmp_path / f".b.{live}-k4.partial",
        tmp_path / "tmp" / f"edgemfm-export-{dead}-z",
        tmp_path / "tmp" / f"edgemfm-export-{live}-y",
        tmp_path / ".other.1-x.partial",
    ]
    for path in made:
        path.mkdir()
    assert sorted(leftovers.sweep_for(tmp_path / "b")) == sorted([made[0], made[2]])
    assert [p.exists() for p in made] == [False, True, False, True, True]


def test_sigterm_unwinds_like_ctrl_c():
    with pytest.raises(KeyboardInterrupt):
        with leftovers.terminating_unwinds():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def _ours(scratch: Path) -> list[str]:
    """edgemfm's folders in the temp dir (other tools drop their own files there)."""
    return [p.name for p in scratch.iterdir() if p.name.startswith("edgemfm")]


def _export(placeholder_model: Path, out: Path, env: dict) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "edgemfm.cli", "export", "--device", "host"]
    return subprocess.Popen(
        [*cmd, "--model", str(placeholder_model), "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_for(check, child: subprocess.Popen, limit: float = 300) -> None:
    """Poll until `check()` holds (a folder appeared), so the kill lands in that phase."""
    end = time.monotonic() + limit
    while not check() and child.poll() is None and time.monotonic() < end:
        time.sleep(0.05)


def _kill_then_rerun(tmp_path, monkeypatch, capsys, placeholder_model: Path, sig: int, when) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    out = tmp_path / "bundles" / "b"
    child = _export(placeholder_model, out, env)
    if isinstance(when, (int, float)):
        time.sleep(when)
    elif when == "scratch":
        _wait_for(lambda: _ours(scratch), child)
    else:
        _wait_for(lambda: out.parent.is_dir() and any(out.parent.iterdir()), child)
    child.send_signal(sig)
    child.wait()
    if sig == signal.SIGTERM:  # cleaned by the process itself
        assert child.returncode in (128 + signal.SIGTERM, -signal.SIGTERM, 0)
        if child.returncode != 0:
            assert not _ours(scratch) and not (out.parent.exists() and any(out.parent.iterdir()))
    # The next export (one that stops early: an unknown architecture) removes a dead run's folders.
    bad = _checkpoint(tmp_path / "other")
    (bad / "config.json").write_text('{"model_type": "nope"}')
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr("tempfile.tempdir", None)
    assert main(["export", "--device", "host", "--model", str(bad), "--out", str(out), "--force"]) == 2
    assert "unsupported architecture 'nope'" in capsys.readouterr().err
    assert not _ours(scratch)
    left = sorted(p.name for p in out.parent.iterdir()) if out.parent.exists() else []
    assert left in ([], ["b"]), left  # the bundle itself when the export finished before the signal


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_export_leaves_nothing_after_the_next_one(tmp_path, monkeypatch, capsys, placeholder_model, sig):
    _kill_then_rerun(tmp_path, monkeypatch, capsys, placeholder_model, sig, "staging")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("when", [1, 3, "scratch", 10, 30])
def test_killed_export_leaves_nothing_at_other_points(tmp_path, monkeypatch, capsys, placeholder_model, sig, when):
    _kill_then_rerun(tmp_path, monkeypatch, capsys, placeholder_model, sig, when)


@pytest.mark.parametrize("out", [".", "", "..", "/"])
def test_output_holding_the_working_directory_is_refused(tmp_path, monkeypatch, out):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    with pytest.raises(InputError, match="working directory; allowed: a new folder path"):
        bundle.check_output(out, force=True)


def test_tune_scratch_carries_its_pid_and_a_dead_tunes_is_swept(tmp_path, monkeypatch, default_bundle):
    from edgemfm import tune as tune_module

    dead, live = tmp_path / f"edgemfm-tune-{_dead_pid()}-k3", tmp_path / f"edgemfm-tune-{os.getppid()}-k4"
    dead.mkdir(), live.mkdir()
    seen = []

    def stop(model, revision, bundle, media, tmp, progress):  # the first step inside the scratch folder
        seen.append(tmp)
        assert tmp.is_dir() and not dead.exists()
        raise InputError("stop here")

    monkeypatch.setattr(tune_module, "float_source", stop)
    with pytest.raises(InputError, match="stop here"):
        tune_module.tune("pi5", 5.0, bundle=default_bundle, scratch=tmp_path)
    assert seen[0].name.startswith(f"edgemfm-tune-{os.getpid()}-") and seen[0].parent == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name]  # its own went on the way out, a live one stays


def _demo_export(out: Path, env: dict, log: Path) -> subprocess.Popen:
    # stderr to a file: the toolchain's progress bars would fill a pipe and stall the export
    cmd = [sys.executable, "-m", "edgemfm.cli", "export", "--device", "host", "--out", str(out), "--force"]
    with log.open("ab") as f:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=f)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("when", [1, 3, 10, 30, "staging"])
def test_killed_demo_export_leaves_its_output_whole_and_the_rerun_succeeds(tmp_path, sig, when):
    """The built-in demo model (its scratch folder holds ~570 MB): killed while exporting over an
    existing output with --force, it leaves that output untouched or whole; a rerun sweeps the
    dead run's folders and writes the bundle. Minutes: each case exports the demo model."""
    demo_weights()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    out = tmp_path / "bundles" / "demo"
    out.mkdir(parents=True)
    _fake_bundle(out, "old")
    log = tmp_path / "export.log"
    child = _demo_export(out, env, log)
    if isinstance(when, (int, float)):
        time.sleep(when)
    else:
        _wait_for(lambda: any(p.name.startswith(".demo.") for p in out.parent.iterdir()), child, limit=1800)
    child.send_signal(sig)
    child.wait()
    if _snapshot(out) != {"a.bin": b"old"}:
        bundle.read_manifest(out)  # not the old one: then the whole new one, every file against its sha256
    if sig == signal.SIGTERM and child.returncode != 0:  # cleaned by the process itself
        assert child.returncode in (128 + signal.SIGTERM, -signal.SIGTERM), log.read_text()[-2000:]
        assert not _ours(scratch) and sorted(p.name for p in out.parent.iterdir()) == ["demo"]
    assert _demo_export(out, env, log).wait() == 0, log.read_text()[-2000:]
    assert not _ours(scratch) and sorted(p.name for p in out.parent.iterdir()) == ["demo"]
    assert "text_decoder" in bundle.read_manifest(out).components
