"""The demo model's int4 target, an int4 pruned draft and a lookahead head for it, as BENCHMARKS.md's speculative
rows time them.

Steps (each skipped when its output is already under --work, so a rerun picks up where it stopped):
1. `target`: `edgemfm export --device host --precision int4 --kernels edgemfm` of the built-in demo model;
2. `questions`: open questions about the demo's kind of pictures (`open_questions.py`);
3. `demo`: the demo checkpoint (`exporters/demo_sources.build_default`: what `edgemfm export` exports);
4. `draft-ckpt`: `edgemfm prune --blocks B --data questions --recover STEPS --answers target --continuation 64`:
   the least important blocks removed, then distilled from the demo model on the target's own greedy
   answers to the questions;
5. `draft`: `edgemfm export --model draft-ckpt --precision int4 --kernels edgemfm --draft-vocab 8192`;
6. `lookahead.safetensors`: `edgemfm lookahead --model demo --data questions --answers target`: a lookahead
   head trained on the target's greedy answers;
7. `target-lookahead`: the target exported again with `--lookahead lookahead.safetensors`;
then each draft's agreement with the target, untimed: teacher-forced on the target's greedy answers to the
held-out questions (eval.jsonl: none trained on, the first three being the ones speculative.py times), the
share of answer tokens the draft's argmax predicts, and the share the lookahead head proposes right.

    python -m benchmarks.runtime.demo_draft --work DIR [--blocks 20] [--recover 4096]
    python -m benchmarks.runtime.speculative DIR/target --draft DIR/draft --lookahead DIR/target-lookahead \
        --image samples/demo_model/media/shape.png
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

import edgemfm

from . import open_questions

SHAPE = Path(__file__).resolve().parents[2] / "samples" / "demo_model" / "media" / "shape.png"
TOKENS = 64  # the answers speculative.py times


def make(work: Path, blocks: int, recover: int) -> tuple[Path, Path, Path, Path]:
    """The target bundle, the draft bundle, the target with a lookahead head and the questions under `work`,
    each made where missing."""
    from edgemfm.exporters.demo_sources import build_default
    from edgemfm.lookahead import train_lookahead
    from edgemfm.pruners.prune import PruneConfig, prune

    target, questions, demo, ckpt, draft = (work / n for n in ("target", "questions", "demo", "draft-ckpt", "draft"))
    int4 = dict(device="host", precision="int4", kernels="edgemfm")
    if not target.exists():
        edgemfm.export(edgemfm.ExportConfig(out=target, **int4))
    for folder, write in ((questions, open_questions.build), (demo, build_default)):
        if not folder.exists():  # written aside, then renamed: a stopped run leaves no half-written folder
            shutil.rmtree(folder.with_suffix(".partial"), ignore_errors=True)
            write(folder.with_suffix(".partial"))
            folder.with_suffix(".partial").rename(folder)
    if not ckpt.exists():
        config = PruneConfig(blocks=blocks)
        prune(demo, ckpt, config, data=questions, recover=recover, answers=target, continuation=TOKENS)
    if not draft.exists():
        edgemfm.export(edgemfm.ExportConfig(model=ckpt, out=draft, draft_vocab=8192, **int4))
    head, lookahead = work / "lookahead.safetensors", work / "target-lookahead"
    if not head.exists():  # written aside and renamed by train_lookahead
        train_lookahead(demo, head, questions, target)
    if not lookahead.exists():
        edgemfm.export(edgemfm.ExportConfig(model=demo, out=lookahead, lookahead=str(head), **int4))
    return target, draft, lookahead, questions


def agreement(target: Path, draft: Path, lookahead: Path, questions: Path) -> dict[str, float]:
    """Share of the target's greedy answer tokens the draft's argmax predicts, and the lookahead head's proposals,
    teacher-forced: on the three questions speculative.py times (with shape.png) and on the other held-out ones."""
    rows = [json.loads(line) for line in (questions / "eval.jsonl").read_text().splitlines()]
    sets = {
        "timed": [(r["prompt"], SHAPE) for r in rows[:3]],
        "held out": [(r["prompt"], questions / r["image"]) for r in rows[3:]],
    }
    big, small, ahead = (edgemfm.load(b, threads=1) for b in (target, draft, lookahead))
    out = {}
    for name, pairs in sets.items():
        hits, total = {"draft": 0, "lookahead": 0}, 0
        for prompt, image in pairs:
            answer = list(big.generate_tokens(prompt, images=[str(image)], max_new_tokens=TOKENS))
            guesses = _teacher_forced(small, prompt, image, answer)[0].argmax(-1)
            hits["draft"] += int((guesses == np.asarray(answer[1:])).sum())
            hits["lookahead"] += int((_teacher_forced(ahead, prompt, image, answer)[1] == np.asarray(answer[1:])).sum())
            total += len(answer) - 1
        out |= {f"{who}, {name}": n / total for who, n in hits.items()}
    return out


def _teacher_forced(pipe, prompt: str, image: Path, answer: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
    """The logits after the prompt and each answer token but the last; with a lookahead head, its proposals for
    answer tokens 1, 2, ... (the prompt's last row proposes the token after the answer's first)."""
    cache = pipe.decoder.new_cache()
    media, cache.fixed = pipe.attend({"image": [str(image)]})
    pipe.prefill(cache, prompt, media)
    first = pipe.decoder.lookahead
    logits = pipe.decoder.run(cache, pipe.decoder.embed_ids(answer[:-1]))
    if first is None:
        return logits, None
    return logits, np.concatenate([first[-1:], pipe.decoder.lookahead[:-1]])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--blocks", type=int, default=20, help="decoder blocks removed (of 30)")
    p.add_argument("--recover", type=int, default=4096, help="distillation steps")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    target, draft, lookahead, questions = make(args.work, args.blocks, args.recover)
    print({k: f"{v:.1%}" for k, v in agreement(target, draft, lookahead, questions).items()})


if __name__ == "__main__":
    main()
