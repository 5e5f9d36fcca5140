"""What a killed export or tune leaves behind, and how the next one clears it.

A `with` block cleans up on an exception, and Ctrl-C is one; SIGTERM (what `timeout`, systemd and
`kill` send) is turned into one too while `terminating_unwinds()` is active. SIGKILL runs no
code at all, so every staging and scratch folder carries its owner's PID in its name
(`.NAME.<pid>-xxxx.partial`, `edgemfm-export-<pid>-xxxx`, `edgemfm-tune-<pid>-xxxx`): the next
run removes those whose owner is no longer alive.

Example:
    >>> with terminating_unwinds():                                     # doctest: +SKIP
    ...     sweep(Path("bundles"), ".default-host.")                     # a dead export's staging dirs
    []
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCRATCH_PREFIX = "edgemfm-export-"
TUNE_SCRATCH_PREFIX = "edgemfm-tune-"  # tune's parts and evaluation bundles: hundreds of MB for the demo model
_OWNED = re.compile(r"(\d+)-[^/]*$")  # "<pid>-<random>[.partial|.old]" after the prefix


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: unwinds like Ctrl-C, so every `with` block removes what it made."""


def owned(prefix: str) -> str:
    """A folder-name prefix that records this process as the owner: `prefix` + "<pid>-".

    Example:
        >>> owned("edgemfm-export-").startswith("edgemfm-export-")
        True
    """
    return f"{prefix}{os.getpid()}-"


def alive(pid: int) -> bool:
    """Whether process `pid` exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def sweep(folder: Path, prefix: str) -> list[Path]:
    """Remove the folders in `folder` named `prefix<pid>-...` whose owner is dead; returns them.

    A dead replacement's `.old` bundle is moved back to the output first if the output is gone,
    so a kill between the two renames of the fallback replace never loses the bundle.

    Example:
        >>> sweep(Path(tempfile.gettempdir()), SCRATCH_PREFIX)  # doctest: +SKIP
        [PosixPath('/tmp/edgemfm-export-4242-k3j2')]
    """
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for path in entries:
        if not path.name.startswith(prefix) or not path.is_dir() or path.is_symlink():
            continue
        m = _OWNED.match(path.name[len(prefix) :])
        if m is None or int(m.group(1)) == os.getpid() or alive(int(m.group(1))):
            continue
        if path.name.endswith(".old") and prefix.startswith(".") and prefix.endswith("."):
            out = folder / prefix[1:-1]
            if not out.exists():
                path.rename(out)  # the old bundle was moved aside and the new one never arrived
                continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def sweep_for(out: Path) -> list[Path]:
    """Remove dead runs' staging folders beside `out` and dead exports' scratch folders in the
    temp dir (the demo model's is ~570 MB); returns what went.

    Example:
        >>> sweep_for(Path("bundles/default-host"))  # doctest: +SKIP
        [PosixPath('bundles/.default-host.4242-k3j2.partial'), PosixPath('/tmp/edgemfm-export-4242-x1')]
    """
    out = Path(out).absolute()
    return sweep(out.parent, f".{out.name}.") + sweep(Path(tempfile.gettempdir()), SCRATCH_PREFIX)


@contextmanager
def terminating_unwinds() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` (a KeyboardInterrupt) in the main thread.

    Left alone where it cannot apply: outside the main thread, or when the application installed
    its own SIGTERM handler.

    Example:
        >>> with terminating_unwinds():
        ...     pass
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) not in (
        signal.SIG_DFL,
        None,
    ):
        yield
        return

    def raise_terminated(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def scratch(prefix: str, parent: str | Path | None = None) -> Iterator[Path]:
    """A scratch folder `prefix<pid>-xxxx` in `parent` (default: the temp dir), removed on leaving
    the block, on Ctrl-C and on SIGTERM; dead runs' folders of the same prefix there go first.

    Example:
        >>> with scratch(TUNE_SCRATCH_PREFIX) as tmp:
        ...     tmp.name.startswith(owned(TUNE_SCRATCH_PREFIX))
        True
    """
    sweep(Path(parent) if parent is not None else Path(tempfile.gettempdir()), prefix)
    with terminating_unwinds(), tempfile.TemporaryDirectory(prefix=owned(prefix), dir=parent) as tmp:
        yield Path(tmp)
