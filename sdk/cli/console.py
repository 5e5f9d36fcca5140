"""What every verb of the command line shares: the two consoles, the progress bar and the --revision help.

Example:
    >>> from edgemfm.cli.console import out
    >>> out.print("[green]wrote[/green] bundles/default-jetson")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console

from edgemfm.progress import Progress

# soft_wrap: a line is never broken at the console's width (80 columns when piped), so a message stays
# one line in a log or under grep, and the terminal wraps what it must.
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

# --model as a Hub id: resolved through the Hugging Face cache (HF_HOME, HF_HUB_OFFLINE)
REVISION_HELP = "with a Hub id: branch, tag or commit (default: main)"


@contextmanager
def rich_progress() -> Iterator[Progress]:
    """A rich bar, cleared when the block ends, and the callback (`edgemfm.progress`) that drives it:
    the core only reports what it does; drawing it is the command line's business.

    Example:
        >>> with rich_progress() as progress:  # doctest: +SKIP
        ...     export(ExportConfig(device="pi5"), progress)
    """
    from rich.progress import Progress as Bar

    with Bar(transient=True) as bar:
        task = bar.add_task("starting", total=None)

        def report(description: str, fraction: float | None) -> None:
            total = None if fraction is None else 1.0  # None: rich pulses the bar instead of filling it
            bar.update(task, description=description, total=total, completed=fraction or 0.0)

        yield report
