"""Signed bundles: Ed25519 over the manifest; a broken, missing or foreign signature is refused in one line."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

import edgemfm
from edgemfm.cli import main
from edgemfm.errors import BundleError, MissingExtraError

pytest.importorskip("cryptography")


@pytest.fixture
def signed(default_bundle, tmp_path) -> tuple[Path, Path]:
    copy = tmp_path / "bundle"
    shutil.copytree(default_bundle, copy)
    assert main(["keygen", str(tmp_path / "ci-key")]) == 0
    assert main(["sign", str(copy), "--key", str(tmp_path / "ci-key")]) == 0
    return copy, tmp_path / "ci-key.pub"


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path, capsys):
    assert main(["keygen", str(tmp_path / "k")]) == 0
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "k.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert main(["keygen", str(tmp_path / "k")]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err


def test_a_signed_bundle_loads_with_its_key(signed):
    bundle, public = signed
    pipe = edgemfm.load(bundle, trusted_keys=[public])
    assert len(list(pipe.generate_tokens("hi", max_new_tokens=2))) == 2
    assert "manifest.sig" not in json.loads((bundle / "manifest.json").read_text())["files"]


def _refused(argv, capsys, fragment):
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("edgemfm: error: ")]
    assert len(errors) == 1 and fragment in errors[0], errors


def test_a_tampered_manifest_is_refused(signed, capsys):
    bundle, public = signed
    m = json.loads((bundle / "manifest.json").read_text())
    m["generation"]["max_new_tokens"] = 7  # every file still matches its sha256: only the signature tells
    (bundle / "manifest.json").write_text(json.dumps(m))
    argv = ["run", str(bundle), "--prompt", "hi", "--trusted-key", str(public)]
    _refused(argv, capsys, "does not verify with any of the 1 trusted key(s)")


def test_a_bundle_signed_by_another_key_is_refused(signed, tmp_path, capsys):
    bundle, _ = signed
    assert main(["keygen", str(tmp_path / "other")]) == 0
    argv = ["run", str(bundle), "--prompt", "hi", "--trusted-key", str(tmp_path / "other.pub")]
    _refused(argv, capsys, "does not verify with any of the 1 trusted key(s)")


def test_an_unsigned_bundle_is_refused_when_keys_are_required(signed, capsys):
    bundle, public = signed
    (bundle / "manifest.sig").unlink()
    _refused(["run", str(bundle), "--prompt", "hi", "--trusted-key", str(public)], capsys, "is not signed")


def test_a_garbled_signature_file_is_refused(signed):
    bundle, public = signed
    (bundle / "manifest.sig").write_text("{")
    with pytest.raises(BundleError, match="is not a signature edgemfm wrote"):
        edgemfm.load(bundle, trusted_keys=[public])


def test_a_missing_extra_names_the_pip_command(signed, monkeypatch, capsys):
    bundle, public = signed
    for name in [m for m in sys.modules if m.split(".")[0] == "cryptography"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed: every import of it fails
    with pytest.raises(MissingExtraError, match=r"pip install 'edgemfm\[sign\]'"):
        edgemfm.load(bundle, trusted_keys=[public])
    # The CLI prints the brackets too (rich once read `[sign]` as markup and dropped it).
    argv = ["run", str(bundle), "--prompt", "hi", "--trusted-key", str(public)]
    _refused(argv, capsys, "needs: pip install 'edgemfm[sign]'")
