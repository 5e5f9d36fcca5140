"""What every benchmark script writes: benchmarks/results/<name>.json with the command line, the git
commit, the machine and the rows, so that `python -m benchmarks.render` can put them into BENCHMARKS.md.

    >>> write("decode_speed", [{"bundle": "demo-host", "tokens_per_s": 25.2}])  # doctest: +SKIP
    PosixPath('.../benchmarks/results/decode_speed.json')
"""

from __future__ import annotations

import contextlib
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from . import RESULTS, ROOT


def commit() -> str:
    """The checkout's short commit, with "+dirty" when it has uncommitted changes ("unknown" outside git).

    >>> commit()  # doctest: +SKIP
    'a3dee2b+dirty'
    """
    run = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True)  # noqa: E731
    head = run("rev-parse", "--short=7", "HEAD")
    if head.returncode:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if run("status", "--porcelain", "--untracked-files=no").stdout else "")


def command() -> str:
    """The command line that runs this script, as a reader would type it again.

    >>> command()  # doctest: +SKIP
    'python -m benchmarks.runtime.decode_speed demo-host --tokens 128'
    """
    module = getattr(sys.modules["__main__"], "__spec__", None)
    head = ["python", "-m", module.name] if module else ["python", sys.argv[0]]
    return shlex.join([*head, *sys.argv[1:]])


def blocks(
    name: str, title: str, caption: str | None = None, after: tuple = (), note: str | Path | None = None
) -> list:
    """A section's blocks as render.py reads them: its title, the command, the caption, where the table comes
    from (this result's commit and command), then `after` (a picture) and the note file's text (what it says).

    >>> blocks("runtime-chat", "Chat", "3 rounds")[2:]  # doctest: +SKIP
    [{'text': '3 rounds'}, {'from': 'runtime-chat.json', 'commit': 'a3dee2b', 'command': 'python -m ...'}]
    """
    source = {"from": f"{name}.json", "commit": commit(), "command": command()}
    texts = [{"text": caption}] if caption else []
    notes = [{"text": Path(note).read_text().strip()}] if note else []
    return [{"heading": title, "level": 2}, {"code": command(), "lang": "bash"}, *texts, source, *after, *notes]


def load_average() -> str:
    """The machine's load average as a title gives it (the results file holds it in "machine" too).

    >>> load_average()  # doctest: +SKIP
    '0.52 / 0.73 / 0.69'
    """
    from edgemfm.bench import machine

    return " / ".join(f"{x:.2f}" for x in machine().load_average)


def write(name: str, rows: list[dict], **extra) -> Path:
    """benchmarks/results/<name>.json: the command, the commit, the machine, the date, the rows and `extra`.

    >>> write("audio_preprocess", [{"step": "log-mel, 80 bins", "edgemfm_ms": 171.5}])  # doctest: +SKIP
    """
    from edgemfm.bench import machine
    from edgemfm.records import to_dict

    record = {
        "name": name,
        "command": command(),
        "commit": commit(),
        "machine": to_dict(machine()),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "rows": rows,
        **extra,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    print(f"results: {out}", file=sys.stderr)
    return out


@contextlib.contextmanager
def timing_lock(path: Path | None):
    """Hold the file lock at `path` (flock, as `flock FILE cmd` takes it) for a timed section; None: no lock.

    Shared machines time one benchmark at a time; the untimed work (exports, accuracy) runs outside it.

    >>> with timing_lock(Path("/tmp/bench.lock")): ...  # doctest: +SKIP
    """
    if path is None:
        yield
        return
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


class Table:
    """A markdown table printed line by line as a script measures, its rows written by `write` at the end.

    >>> table = Table("gptq_layers", "| layer | RTN |")  # doctest: +SKIP
    >>> table.line(f"| layers.1 q_proj | {21.43:.1f} |")  # doctest: +SKIP
    >>> table.write()  # doctest: +SKIP
    """

    def __init__(self, name: str, header: str):
        self.name, self.header, self.rows = name, _cells(header), []
        print(header.strip() + "\n|" + "---|" * len(self.header), flush=True)

    def line(self, row: str) -> None:
        """Print one markdown row and keep it, cell by cell under the header's names."""
        print(row, flush=True)
        self.rows.append(dict(zip(self.header, _cells(row))))

    def write(self, **extra) -> Path:
        """benchmarks/results/<name>.json with the rows so far (see `write`)."""
        return write(self.name, self.rows, **extra)
