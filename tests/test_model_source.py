"""`--model` as a Hugging Face Hub id, resolved offline from a cache built in the hub's own layout."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import tiny_llama

from edgemfm.cli import main
from edgemfm.errors import InputError

REPO, COMMIT = "tiny-org/tiny-llama", "0123456789abcdef0123456789abcdef01234567"


def hub_cache(hf_home: Path, checkpoint: Path, repo: str = REPO, commit: str = COMMIT) -> Path:
    """`checkpoint` laid out as huggingface_hub caches it: blobs by hash, a snapshot of links, refs/main."""
    root = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in checkpoint.iterdir():
        data = f.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("hf_home")
    hub_cache(home, tiny_llama(tmp_path_factory.mktemp("ckpt") / "tiny-llama"))
    return home


@pytest.fixture
def offline(hf_home, monkeypatch) -> Path:
    """This process offline on `hf_home` (huggingface_hub reads HF_HOME once, at import)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hf_home


def test_hub_id_resolves_from_hf_home_offline(hf_home):
    code = (
        "import json; from edgemfm.model_source import resolve_model as r; "
        f"a, b = r({REPO!r}), r({REPO!r}, revision={COMMIT!r}); "
        "print(json.dumps([str(a.path), a.model_id, a.hub_id, a.revision, str(b.path)]))"
    )
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    path, model_id, hub_id, revision, by_commit = json.loads(done.stdout)
    snapshot = hf_home / "hub" / "models--tiny-org--tiny-llama" / "snapshots" / COMMIT
    assert Path(path) == Path(by_commit) == snapshot.resolve()
    assert (model_id, hub_id, revision) == ("tiny-llama", REPO, COMMIT)


def test_export_from_a_hub_id(offline, tmp_path):
    import edgemfm

    out = tmp_path / "bundle"
    assert main(["export", "--model", REPO, "--revision", "main", "--device", "host", "--out", str(out)]) == 0
    pipe = edgemfm.load(out)
    assert pipe.manifest.model_id == "tiny-llama"
    assert len(list(pipe.generate_tokens("hello", max_new_tokens=2))) > 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--model", "tiny-org/absent"],
            "model 'tiny-org/absent' is neither a directory nor in the Hugging Face cache (",
        ),
        (
            ["--model", REPO, "--revision", "v9"],
            f"revision 'v9' of '{REPO}' is not in the Hugging Face cache (",
        ),
        (
            ["--model", "no/such/folder"],
            "model directory 'no/such/folder' does not exist, nor is it a Hugging Face Hub",
        ),
    ],
)
def test_an_unknown_id_or_revision_is_one_line(offline, argv, message, capsys):
    assert main(["export", "--device", "host", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgemfm: error: ") and message in err and "\n" not in err, err
    assert ("HF_HUB_OFFLINE=1" in err) == ("/folder" not in argv[1])
    if "--revision" in argv:
        assert f"cached: main ({COMMIT[:7]})" in err


def test_revision_of_a_folder_is_refused(tmp_path):
    from edgemfm.model_source import resolve_model

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(InputError, match="--revision 'main' applies to a Hub id"):
        resolve_model(tmp_path, revision="main")


def test_dry_run_names_the_cached_snapshot(offline, capsys):
    assert main(["export", "--model", REPO, "--device", "host", "--out", "b", "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["model"] == REPO
    assert f"model: {REPO!r} from the Hugging Face cache, commit {COMMIT}" in captured.err.replace("\n", "")


def test_dry_run_with_an_uncached_id_says_what_it_would_fetch_and_fetches_nothing(tmp_path, monkeypatch, capsys):
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    calls = []
    real = huggingface_hub.snapshot_download

    def local_only(*args, **kwargs):  # a download would be a call without local_files_only
        calls.append(kwargs.get("local_files_only", False))
        assert kwargs.get("local_files_only"), "--dry-run must not download"
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", local_only)
    argv = ["export", "--model", "tiny-org/elsewhere", "--revision", "v2", "--device", "pi5,jetson", "--out", "f"]
    assert main([*argv, "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert [json.loads(c)["device"] for c in captured.out.replace("}\n{", "}\0{").split("\0")] == [
        "raspberry-pi-5-8gb",
        "jetson-orin-nano-8gb",
    ]
    err = captured.err.replace("\n", "")
    assert f"would fetch 'tiny-org/elsewhere' at revision v2 from the Hugging Face Hub into {tmp_path / 'hub'}" in err
    assert calls and all(calls)
