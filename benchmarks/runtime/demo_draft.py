"""The demo model's int4 target and an int4 pruned draft for it, as BENCHMARKS.md's speculative rows time them.

Steps (each skipped when its output is already under --work, so a rerun picks up where it stopped):
1. `target`: `edgemfm export --device host --precision int4 --kernels edgemfm` of the built-in demo model;
2. `questions`: open questions about the demo's kind of pictures (`open_questions.py`);
3. `demo`: the demo checkpoint (`exporters/demo_sources.build_default`: what `edgemfm export` exports);
4. `draft-ckpt`: `edgemfm prune --blocks B --data questions --recover STEPS --answers target --continuation 64`:
   the least important blocks removed, then distilled from the demo model on the target's own greedy
   answers to the questions;
5. `draft`: `edgemfm export --model draft-ckpt --precision int4 --kernels edgemfm --draft-vocab 8192`;
then the draft's agreement with the target, untimed: teacher-forced on the target's greedy answers to the
held-out questions (eval.jsonl: none trained on, the first three being the ones speculative.py times), the
share of answer tokens the draft's argmax predicts.

    python -m benchmarks.runtime.demo_draft --work DIR [--blocks 20] [--recover 4096]
    python -m benchmarks.runtime.speculative DIR/target --draft DIR/draft --image samples/demo_model/media/shape.png
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


def make(work: Path, blocks: int, recover: int) -> tuple[Path, Path, Path]:
    """The target bundle, the draft bundle and the questions under `work`, each made where missing."""
    from edgemfm.exporters.demo_sources import build_default
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
    return target, draft, questions


def agreement(target: Path, draft: Path, questions: Path) -> dict[str, float]:
    """Share of the target's greedy answer tokens the draft's argmax predicts, teacher-forced: on the three
    questions speculative.py times (with shape.png) and on the other held-out ones."""
    rows = [json.loads(line) for line in (questions / "eval.jsonl").read_text().splitlines()]
    sets = {
        "timed": [(r["prompt"], SHAPE) for r in rows[:3]],
        "held out": [(r["prompt"], questions / r["image"]) for r in rows[3:]],
    }
    big, small = edgemfm.load(target, threads=1), edgemfm.load(draft, threads=1)
    out = {}
    for name, pairs in sets.items():
        hits = total = 0
        for prompt, image in pairs:
            answer = list(big.generate_tokens(prompt, images=[str(image)], max_new_tokens=TOKENS))
            cache = small.decoder.new_cache()
            media, cache.fixed = small.attend({"image": [str(image)]})
            small.prefill(cache, prompt, media)
            guesses = small.decoder.run(cache, small.decoder.embed_ids(answer[:-1])).argmax(-1)
            hits += int((guesses == np.asarray(answer[1:])).sum())
            total += len(answer) - 1
        out[name] = hits / total
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--blocks", type=int, default=20, help="decoder blocks removed (of 30)")
    p.add_argument("--recover", type=int, default=4096, help="distillation steps")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    target, draft, questions = make(args.work, args.blocks, args.recover)
    print({k: f"{v:.1%}" for k, v in agreement(target, draft, questions).items()})


if __name__ == "__main__":
    main()
