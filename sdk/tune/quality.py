"""Quality of tuner candidates on a held-out task, evaluated on a process pool or a Ray cluster.

A candidate's parts are assembled into a real bundle (`assemble`: hard links, a manifest, sealed
as `export` seals one) and answer held-out questions through the runtime, exactly as
`edgemfm run` would; exact match is the score. Each question uses one kind of media, so a
question's answer depends only on its own encoder part and the decoder's parts: the tuner scores
each (media setting, encoder precision, decoder precision) once and combines them per candidate.

The answer jobs go through `edgemfm.jobs.run_jobs`: a local process pool, or the Ray cluster at
`ray_address` (the scratch directory must be storage its workers see).

Example:
    >>> run_jobs(answer_rate, [TaskJob("/tmp/eval-0", questions["image"])], workers=2)   # doctest: +SKIP
    [0.91]
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgemfm import bundle as bundle_io
from edgemfm.errors import InputError
from edgemfm.manifest import Manifest
from edgemfm.recipe import QuantSpec, Recipe, Rule
from edgemfm.report import Parity, Tune

MAX_NEW_TOKENS = 8


@dataclass(frozen=True)
class Question:
    kind: str  # image or audio
    media: str  # file path
    prompt: str
    answer: str


@dataclass(frozen=True)
class TaskJob:
    bundle: str  # an assembled candidate bundle
    questions: tuple[Question, ...]


def read_questions(data: str | Path, per_kind: int) -> dict[str, tuple[Question, ...]]:
    """The first `per_kind` held-out questions of each media kind in `data`/eval.jsonl.

    Example:
        >>> {k: len(v) for k, v in read_questions("/tmp/demo-data", 12).items()}   # doctest: +SKIP
        {'image': 12, 'audio': 12}
    """
    path = Path(data) / "eval.jsonl"
    if not path.is_file():
        raise InputError(
            f"task data {str(data)!r} has no eval.jsonl (build one with samples/demo_model/build_dataset.py)"
        )
    out: dict[str, list[Question]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line) if line.strip() else {}
        kind = next((k for k in ("image", "audio") if k in row), None)
        if kind and len(out.setdefault(kind, [])) < per_kind:
            out[kind].append(Question(kind, str(Path(data) / row[kind]), row["prompt"], row["answer"]))
    if not out:
        raise InputError(f"{path} holds no image or audio questions")
    return {k: tuple(v) for k, v in out.items()}


def answer_rate(job: TaskJob) -> float:
    """Exact-match rate of the bundle's greedy answers to the job's questions (one thread per session)."""
    from edgemfm.runtimes.pipeline import load

    pipe = load(job.bundle, threads=1)
    right = 0
    for q in job.questions:
        media = {"images": [q.media]} if q.kind == "image" else {"audio": [q.media]}
        right += "".join(pipe.generate(q.prompt, **media, max_new_tokens=MAX_NEW_TOKENS)).strip() == q.answer
    return right / len(job.questions)


def _place(src: Path, dst: Path, link: bool) -> None:
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:  # another file system: copy
            pass
    shutil.copyfile(src, dst)


def recipe_of(precisions: dict[str, str], specs: dict[str, QuantSpec | None]) -> Recipe:
    """One rule per component (its name and its units) with the spec of its precision."""
    rules = tuple(Rule(p, specs[precisions[name]]) for name in precisions for p in (name, f"{name}/*"))
    return Recipe(rules=rules)


def assemble(
    parts: dict[str, Any],
    manifest: Manifest,
    preprocess: Any,
    seq_len: int,
    recipe: Recipe,
    source: Path,
    out: Path,
    link: bool = True,
    report: Tune | None = None,
    force: bool = True,
) -> Path:
    """Write a bundle at `out` from one part per component (atomically: staged, sealed, verified, renamed).

    The KV cache holds `seq_len` positions; a prefill chunk that would not fit beside the sink
    tokens is shortened to fit.
    """
    with bundle_io.staging(out, force=force) as stage:
        components = {}
        for name, part in parts.items():
            c = manifest.components[name]
            _place(part.path, stage / c.file, link)
            components[name] = replace(part.record, file=c.file)
        _place(source / manifest.tokenizer.file, stage / manifest.tokenizer.file, link)
        parity = {
            name: replace(manifest.report.parity.get(name, Parity()), nodes=part.nodes) for name, part in parts.items()
        }
        candidate = replace(
            manifest,
            components=components,
            preprocess=preprocess,
            recipe=recipe,
            streaming=replace(
                manifest.streaming,
                max_seq_len=seq_len,
                prefill_chunk=min(manifest.streaming.prefill_chunk, seq_len - manifest.streaming.sink_tokens),
            ),
            report=replace(manifest.report, precision="tune", parity=parity, tune=report),
        )
        bundle_io.seal(stage, candidate)
    return out
