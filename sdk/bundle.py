"""Bundle I/O: write a bundle atomically, read it back with schema and integrity checks.

Writing builds everything in a hidden staging directory beside the output, records the sha256
and size of every file in the manifest, reads the result back as the runtime would, and only
then renames it into place. An interrupted or failed export leaves no bundle and no staging dir.

Example:
    >>> with staging("out/bundle") as stage:          # doctest: +SKIP
    ...     (stage / "model.onnx").write_bytes(data)
    ...     seal(stage, manifest)
    >>> read_manifest("out/bundle").model_id          # doctest: +SKIP
    'edgemfm-default'
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from edgemfm.errors import BundleError, InputError
from edgemfm.manifest import FileEntry, Manifest

MANIFEST = "manifest.json"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_output(out: str | Path, force: bool) -> Path:
    """Refuse an existing output directory unless `force`; called before any work is done."""
    out = Path(out)
    if out.exists() and not force:
        raise InputError(f"output {str(out)!r} already exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise InputError(f"output {str(out)!r} exists and is not a directory")
    return out


@contextmanager
def staging(out: str | Path, force: bool = False, verify: Callable[[Path], object] | None = None) -> Iterator[Path]:
    """An empty directory to build the bundle in; moved to `out` when the block ends cleanly.

    The caller writes the files and then `seal(stage, manifest)`. On an exception (including
    KeyboardInterrupt) the staging directory is removed and `out` is left as it was. `verify`
    checks what was written (default: read the manifest back, as the runtime would).
    """
    out = check_output(out, force).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield stage
        (verify or read_manifest)(stage)  # verify what was written, exactly as a loader would
        if out.exists():
            old = stage.with_suffix(".old")
            out.rename(old)
            stage.rename(out)
            shutil.rmtree(old)
        else:
            stage.rename(out)
    finally:
        if stage.exists():
            shutil.rmtree(stage)


def seal(stage: Path, manifest: Manifest) -> Manifest:
    """Hash every file in `stage` into the manifest and write `manifest.json`."""
    assert all(p.is_file() for p in stage.iterdir()), "bundles are flat directories of files"
    files = {
        p.name: FileEntry(sha256=sha256_of(p), bytes=p.stat().st_size)
        for p in sorted(stage.iterdir())
        if p.name != MANIFEST
    }
    manifest = manifest.with_files(files)
    (stage / MANIFEST).write_text(manifest.to_json())
    return manifest


def read_manifest(bundle: str | Path) -> Manifest:
    """Read a bundle's manifest and check every file it lists (presence, size, sha256).

    Example:
        >>> read_manifest("bundles/default-jetson").profile   # doctest: +SKIP
        'jetson-orin-nano-8gb'
    """
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise BundleError(f"bundle {str(bundle)!r} is not a directory")
    path = bundle / MANIFEST
    if not path.is_file():
        raise BundleError(f"{str(bundle)!r} is not an edgemfm bundle: it has no {MANIFEST}")
    manifest = Manifest.from_json(path.read_text(errors="replace"), where=str(path))
    for name, entry in manifest.files.items():
        _check_file(bundle, name, entry)
    referenced = {c.file for c in manifest.components.values()} | {manifest.tokenizer.file}
    if missing := sorted(referenced - set(manifest.files)):
        raise BundleError(f"{path}: {missing[0]!r} is used but not listed under files")
    return manifest


def copy_bundle(bundle: str | Path, dest: str | Path) -> Manifest:
    """Copy a bundle's listed files and manifest to `dest`, checked before and after the copy.

    The copy is staged beside `dest` and replaces it only once it reads back intact, so an app's
    assets hold the old bundle or the new one, never a mix.

    Example:
        >>> copy_bundle("bundles/android", "samples/android/app/src/main/assets/bundle").profile  # doctest: +SKIP
        'android-arm64'
    """
    manifest = read_manifest(bundle)
    with staging(dest, force=True) as stage:
        for name in [*manifest.files, MANIFEST]:
            shutil.copyfile(Path(bundle) / name, stage / name)
    return manifest


def _check_file(bundle: Path, name: str, entry: FileEntry) -> None:
    if Path(name).name != name or name in ("", ".", ".."):
        raise BundleError(f"{bundle / MANIFEST}: file name {name!r} is not a plain name in the bundle")
    path = bundle / name
    if not path.is_file():
        raise BundleError(f"bundle file {name!r} is missing from {str(bundle)!r}")
    size = path.stat().st_size
    if size != entry.bytes:
        raise BundleError(f"bundle file {name!r} is {size} bytes, the manifest says {entry.bytes} (truncated?)")
    if sha256_of(path) != entry.sha256:
        raise BundleError(f"bundle file {name!r} does not match its sha256 in the manifest (tampered?)")
