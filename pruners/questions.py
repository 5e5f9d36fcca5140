"""A model's own questions as pruning data: a data folder in `edgemfm finetune`'s format
(train.jsonl: a prompt about one image or audio file per line) calibrates the text decoder and
feeds its recovery, each question templated as the bundle's runtime templates it, with the media
rows the family's encoder and projector make spliced in, then continued by the unpruned model.

Why: a draft or a smaller model distilled on plain English learns little of what its decoder sees
on the device (the chat template, a picture's rows, the answers the model gives about them);
distilled on the model's own questions it learns exactly that.

Example:
    >>> sequences, note = question_sequences(Path("ckpt"), teacher, Path("data"), RecoveryConfig(steps=64))  # doctest: +SKIP
    >>> sequences[0].dtype, note                                                                          # doctest: +SKIP
    (torch.float32, '64 questions of data/train.jsonl with their media, continued by the unpruned model')
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

from edgemfm.errors import InputError
from edgemfm.progress import Progress, counter
from edgemfm.pruners.recovery import RecoveryConfig

QUESTIONS = "train.jsonl"  # finetune's training split; eval.jsonl stays held out
MAX_QUESTIONS = 256  # one teacher continuation each: on 2 cores ~2 s per 64 tokens of a 135M decoder


def holds_questions(data: str | Path | None) -> bool:
    """Whether `data` is a data folder of questions (finetune's format) rather than calibration files."""
    return data is not None and (Path(data) / QUESTIONS).is_file()


def question_sequences(
    source: Path, teacher: Any, data: Path, config: RecoveryConfig, count: int, progress: Progress | None = None
) -> tuple[list[torch.Tensor], str]:
    """Up to `count` questions of `data/train.jsonl` (question types taken in turn, seeded), each as
    inputs_embeds [1, n, hidden]: the templated prompt with its media rows, then `teacher`'s
    continuation (seeded top-p sampling, `config.continuation` tokens at most, its end token kept).
    `teacher` is the unpruned causal LM that reads those embeddings; returns the sequences and a note.

    Example:
        >>> [s.shape[-1] for s in question_sequences(src, lm, data, RecoveryConfig(), 2)[0]]   # doctest: +SKIP
        [576, 576]
    """
    from edgemfm.exporters.trainee import encode_media, load_trainee, read_examples, sequence

    trainee = _trainee(source, load_trainee)
    examples = _in_turn(read_examples(Path(data), "train"), min(count, MAX_QUESTIONS), config.seed)
    # each distinct file encoded once by the frozen towers, pre-processed as the runtime does it
    feats = encode_media(trainee, sorted({(e.kind, e.media) for e in examples}), progress, cache=None)
    ends = list(trainee.split.tokenizer.eos_token_ids)
    advance = counter(progress, "continuing the questions (unpruned model)", len(examples))
    torch.manual_seed(config.seed)
    out = []
    with torch.no_grad():
        for e in examples:
            prompt = sequence(trainee, e, feats[e.media], with_answer=False).embeds[None]
            new = teacher.generate(
                inputs_embeds=prompt,
                attention_mask=torch.ones(prompt.shape[:2], dtype=torch.long),
                max_new_tokens=max(config.continuation, 1),
                do_sample=True,
                top_p=0.95,
                eos_token_id=ends,
                pad_token_id=ends[0],
            )
            out.append(torch.cat([prompt, trainee.embed(new[:, -max(config.continuation, 1) :])], 1))
            advance()
    return out, f"{len(out)} questions of {Path(data) / QUESTIONS} with their media, continued by the unpruned model"


def _trainee(source: Path, load: Any) -> Any:
    """The checkpoint loaded as finetune loads it (its split templates prompts and encodes media);
    refused for a family without media prompts or whose positions are not one running count."""
    from edgemfm.exporters import find_family

    family = find_family(json.loads((source / "config.json").read_text()))
    if family.finetune is None:
        raise InputError(
            f"--data {QUESTIONS}: {family.name} has no media prompts to template; allowed: a folder of .txt files"
        )
    trainee = load(source)
    if trainee.split.generation.positions != "arange":
        # distil feeds inputs_embeds alone: the decoder counts positions 0, 1, 2 ... itself
        raise InputError(
            f"--data {QUESTIONS}: {family.name}'s decoder takes {trainee.split.generation.positions} positions; "
            "recovery on questions supports arange positions; allowed: a folder of .txt files"
        )
    return trainee


def _in_turn(examples: list[Any], count: int, seed: int) -> list[Any]:
    """`count` examples, the question types (media kind and prompt) in turn, each type's order seeded."""
    rng, groups = random.Random(seed), {}
    for e in examples:
        groups.setdefault((e.kind, e.prompt), []).append(e)
    queues = [rng.sample(g, len(g)) for g in groups.values()]
    out: list[Any] = []
    while len(out) < count and any(queues):
        out += [q.pop() for q in queues if q][: count - len(out)]
    return out
