"""Bundle I/O: write a bundle atomically, read it back with schema and integrity checks.

Writing builds everything in a hidden staging directory beside the output, records the sha256
and size of every file in the manifest, reads the result back as the runtime would, and only
then renames it into place. An interrupted or failed export leaves no bundle and no staging dir;
a replaced bundle is swapped in with one atomic exchange, so `out` always holds a whole bundle.
The output never overlaps an input (the checkpoint, the calibration folder).

Example:
    >>> with staging("out/bundle") as stage:          # doctest: +SKIP
    ...     (stage / "model.onnx").write_bytes(data)
    ...     seal(stage, manifest)
    >>> read_manifest("out/bundle").model_id          # doctest: +SKIP
    'edgemfm-default'
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from edgemfm import leftovers, validate
from edgemfm.errors import BundleError, InputError
from edgemfm.manifest import FileEntry, Manifest

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"  # edgemfm.signing writes it


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_output(out: str | Path, force: bool, inputs: Sequence[str | Path | None] = ()) -> Path:
    """Refuse an existing output directory unless `force`, and an output that is, holds or lies
    inside one of `inputs` (replacing it would delete them); called before any work is done.

    Example:
        >>> check_output("models/llava", force=True, inputs=["models/llava"])  # doctest: +SKIP
        InputError: output 'models/llava' is the input 'models/llava'; allowed: a folder outside every input
    """
    if str(out).strip() in ("", "."):  # Path("") is "."; replacing the working directory is never meant
        raise InputError(f"output {str(out)!r} is the working directory; allowed: a new folder path")
    out = Path(out)
    target, here = out.resolve(), Path.cwd().resolve()
    if target == here or target in here.parents or target == Path(target.anchor):
        raise InputError(f"output {str(out)!r} is or holds the working directory; allowed: a new folder path")
    for given in (Path(i) for i in inputs if i is not None):
        source = given.resolve()
        if target == source or source in target.parents or target in source.parents:
            where = "is" if target == source else "is inside" if source in target.parents else "holds"
            raise InputError(
                f"output {str(out)!r} {where} the input {str(given)!r}; allowed: a folder outside every input"
            )
    if out.exists() and not force:
        raise InputError(f"output {str(out)!r} already exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise InputError(f"output {str(out)!r} exists and is not a directory")
    parent = next(p for p in target.parents if p.exists())  # the folder the first mkdir happens in
    try:  # a probe, not os.access: root passes access() even on /proc, where mkdir then fails
        os.rmdir(tempfile.mkdtemp(prefix=leftovers.owned(".edgemfm-probe-"), dir=parent))
    except OSError as e:
        raise InputError(
            f"output {str(out)!r} cannot be created in {str(parent)!r} ({e.strerror}); allowed: a writable folder"
        ) from None
    return out


@contextmanager
def staging(
    out: str | Path,
    force: bool = False,
    verify: Callable[[Path], object] | None = None,
    inputs: Sequence[str | Path | None] = (),
) -> Iterator[Path]:
    """An empty directory to build the bundle in; moved to `out` when the block ends cleanly.

    The caller writes the files and then `seal(stage, manifest)`. On an exception (including
    KeyboardInterrupt, and SIGTERM under `leftovers.terminating_unwinds`) the staging directory is
    removed and `out` is left as it was. `verify` checks what was written (default: read the
    manifest back, as the runtime would). Staging folders of dead runs beside `out` are removed first.
    """
    out = check_output(out, force, inputs).absolute()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        leftovers.sweep(out.parent, f".{out.name}.")
        stage = Path(tempfile.mkdtemp(prefix=leftovers.owned(f".{out.name}."), suffix=".partial", dir=out.parent))
    except OSError as e:
        raise InputError(f"output {str(out)!r} cannot be created: {e.strerror}; allowed: a writable folder") from None
    try:
        yield stage
        (verify or read_manifest)(stage)  # verify what was written, exactly as a loader would
        _normal_permissions(stage)
        if out.exists():
            _replace(stage, out)
        else:
            stage.rename(out)
    finally:
        if stage.exists():
            shutil.rmtree(stage)


def _normal_permissions(stage: Path) -> None:
    """mkdtemp made the stage 0700; a bundle is read by service accounts: 0777/0666 less the umask."""
    umask = os.umask(0o022)
    os.umask(umask)  # read it back: there is no getter
    for path in [stage, *stage.rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    fn = getattr(ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True), "renameat2", None)
    at_fdcwd, rename_exchange = -100, 2
    return fn is not None and fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _replace(stage: Path, out: Path) -> None:
    """Put the complete bundle at `stage` in place of the one at `out`, never leaving `out` empty."""
    if _exchange(stage, out):
        shutil.rmtree(stage)  # now the old bundle
        return
    # Two renames: a kill between them leaves the old bundle at `.NAME.<pid>-...old`, which the
    # next run's leftovers.sweep moves back to `out`.
    old = stage.with_suffix(".old")
    out.rename(old)
    stage.rename(out)
    shutil.rmtree(old)


def seal(stage: Path, manifest: Manifest) -> Manifest:
    """Hash every file in `stage` into the manifest and write `manifest.json`."""
    assert all(p.is_file() for p in stage.iterdir()), "bundles are flat directories of files"
    files = {
        p.name: FileEntry(sha256=sha256_of(p), bytes=p.stat().st_size)
        for p in sorted(stage.iterdir())
        if p.name not in (MANIFEST, SIGNATURE)  # the signature signs the manifest; it cannot be listed in it
    }
    manifest = manifest.with_files(files)
    (stage / MANIFEST).write_text(manifest.to_json())
    return manifest


def read_manifest(bundle: str | Path, trusted_keys: Sequence[str | Path] | None = None) -> Manifest:
    """Read a bundle's manifest and check every file it lists (presence, size, sha256, no symlinks);
    with `trusted_keys` (public key files), also its signature (see `edgemfm.signing`).

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
    if path.is_symlink():
        raise BundleError(f"{str(path)!r} is a symbolic link; allowed: bundle files that are plain files")
    data = path.read_bytes()  # verified and parsed from the same bytes
    if trusted_keys is not None:
        from edgemfm.signing import verify

        verify(bundle, data, trusted_keys)
    manifest = validate.check(Manifest.from_json(data.decode(errors="replace"), where=str(path)), str(path))
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
    if path.is_symlink():  # a tokenizer.json -> /etc/shadow would be read; the sha256 list proves content, not place
        raise BundleError(f"bundle file {name!r} is a symbolic link; allowed: plain files inside the bundle")
    if not path.is_file():
        raise BundleError(f"bundle file {name!r} is missing from {str(bundle)!r}")
    size = path.stat().st_size
    if size != entry.bytes:
        raise BundleError(f"bundle file {name!r} is {size} bytes, the manifest says {entry.bytes} (truncated?)")
    if sha256_of(path) != entry.sha256:
        raise BundleError(f"bundle file {name!r} does not match its sha256 in the manifest (tampered?)")
