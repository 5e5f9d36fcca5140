"""The progress callback every long verb takes: `(description, fraction done or None)`.

The core reports what it is doing through this callback and never draws anything itself: the CLI
turns the calls into a rich bar, the Python API without a callback prints nothing.

Example:
    >>> seen = []
    >>> advance = counter(lambda d, f: seen.append((d, f)), "scoring", 2)
    >>> advance(); advance()
    >>> seen
    [('scoring', 0.0), ('scoring', 0.5), ('scoring', 1.0)]
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, "float | None"], None]  # (what is happening, fraction done; None: unknown)


def say(progress: Progress | None, description: str, fraction: float | None = None) -> None:
    """Report `description` (and how much of it is done) when there is a callback.

    Example:
        >>> say(None, "loading")  # no callback: nothing happens
    """
    if progress is not None:
        progress(description, fraction)


def counter(progress: Progress | None, description: str, total: int) -> Callable[..., None]:
    """A step counter over `total` steps: each call advances it (by `n`, optionally renaming the step).

    Example:
        >>> step = counter(lambda d, f: print(d, f), "distilling", 4)
        distilling 0.0
        >>> step(2, "distilling (loss 0.5)")
        distilling (loss 0.5) 0.5
    """
    done = 0
    say(progress, description, 0.0 if total else None)

    def advance(n: int = 1, note: str | None = None) -> None:
        nonlocal done
        done += n
        say(progress, note or description, min(done / total, 1.0) if total else None)

    return advance
