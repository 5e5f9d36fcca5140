"""A model's own questions as pruning data: a data folder in `edgemfm finetune`'s format
(train.jsonl: a prompt about one image or audio file per line) calibrates the text decoder and
feeds its recovery, each question templated as the bundle's runtime templates it, with the media
rows the family's encoder and projector make spliced in, then continued by the unpruned model
(seeded top-p sampling), or with `answers` by a bundle's own greedy answers.

Why: a draft or a smaller model distilled on plain English learns little of what its decoder sees
on the device (the chat template, a picture's rows, the answers the model gives about them);
distilled on the model's own questions it learns exactly that. A speculative draft is scored on the
target bundle's greedy answers (`runtimes/speculative.py`), so `edgemfm prune --answers TARGET` distils it
on exactly those, written ~10x faster than the unpruned model samples them (int4 ONNX against PyTorch fp32;
BENCHMARKS.md, the demo's int4 drafts).

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
MAX_ANSWERED = 4096  # with a bundle's answers: ~0.15 s per 64 tokens of the demo's int4 bundle


def holds_questions(data: str | Path | None) -> bool:
    """Whether `data` is a data folder of questions (finetune's format) rather than calibration files."""
    return data is not None and (Path(data) / QUESTIONS).is_file()


def check_answers(answers: str | Path) -> None:
    """Refuse, before any slow work, an `--answers` bundle that is not there (`_bundle_answers` later checks its
    tokenizer against the checkpoint's)."""
    if not Path(answers).is_dir():
        raise InputError(f"--answers {answers}: no such bundle directory; allowed: a bundle exported from this model")


def question_sequences(
    source: Path,
    teacher: Any,
    data: Path,
    config: RecoveryConfig,
    count: int,
    progress: Progress | None = None,
    answers: str | Path | None = None,
) -> tuple[list[torch.Tensor], str]:
    """Up to `count` questions of `data/train.jsonl` (question types taken in turn, seeded), each as
    inputs_embeds [1, n, hidden]: the templated prompt with its media rows, then `teacher`'s
    continuation (seeded top-p sampling, `config.continuation` tokens at most, its end token kept),
    or with `answers` (a bundle of the same model and tokenizer) that bundle's greedy answer.
    `teacher` is the unpruned causal LM that reads those embeddings; returns the sequences and a note.

    Example:
        >>> [s.shape[-1] for s in question_sequences(src, lm, data, RecoveryConfig(), 2)[0]]   # doctest: +SKIP
        [576, 576]
    """
    trainee, answered, note = answered_questions(source, teacher, data, config, count, progress, answers)
    with torch.no_grad():
        return [torch.cat([prompt, trainee.embed(new)], 1) for _, prompt, new in answered], note


def answered_questions(
    source: Path,
    teacher: Any,
    data: Path,
    config: RecoveryConfig,
    count: int,
    progress: Progress | None = None,
    answers: str | Path | None = None,
) -> tuple[Any, list[tuple[Any, torch.Tensor, torch.Tensor]], str]:
    """`question_sequences`' questions before they are joined: the loaded checkpoint (`exporters/trainee.py`),
    and per question its example (`trainee.Example`), its prompt's inputs_embeds [1, n, hidden] and the
    continuation's token ids [1, m].

    Example:
        >>> trainee, answered, note = answered_questions(src, lm, data, RecoveryConfig(), 2, answers="bundles/t")  # doctest: +SKIP
        >>> answered[0][2].dtype                                                                                   # doctest: +SKIP
        torch.int64
    """
    from edgemfm.exporters.trainee import encode_media, load_trainee, read_examples, sequence

    trainee = _trainee(source, load_trainee)
    most = MAX_ANSWERED if answers else MAX_QUESTIONS
    examples = _in_turn(read_examples(Path(data), "train"), min(count, most), config.seed)
    # each distinct file encoded once by the frozen towers, pre-processed as the runtime does it
    feats = encode_media(trainee, sorted({(e.kind, e.media) for e in examples}), progress, cache=None)
    ends = list(trainee.split.tokenizer.eos_token_ids)
    tokens = max(config.continuation, 1)
    answer = _bundle_answers(answers, trainee, ends, tokens) if answers else None
    by = f"{Path(answers).name}'s greedy answers" if answers else "the unpruned model"
    advance = counter(progress, f"continuing the questions ({by})", len(examples))
    torch.manual_seed(config.seed)
    out = []
    with torch.no_grad():
        for e in examples:
            prompt = sequence(trainee, e, feats[e.media], with_answer=False).embeds[None]
            if answer:
                new = answer(e)
            else:
                new = teacher.generate(
                    inputs_embeds=prompt,
                    attention_mask=torch.ones(prompt.shape[:2], dtype=torch.long),
                    max_new_tokens=tokens,
                    do_sample=True,
                    top_p=0.95,
                    eos_token_id=ends,
                    pad_token_id=ends[0],
                )[:, -tokens:]
            out.append((e, prompt, new))
            advance()
    return trainee, out, f"{len(out)} questions of {Path(data) / QUESTIONS} with their media, continued by {by}"


def _bundle_answers(bundle: str | Path, trainee: Any, ends: list[int], tokens: int) -> Any:
    """A function from a question to the bundle's greedy answer ids [1, n] (an answer that ends early gets
    the first end token, as the unpruned model's continuation keeps its own); refused for a bundle whose
    tokenizer is not the checkpoint's."""
    import edgemfm

    pipe = edgemfm.load(bundle, threads=torch.get_num_threads())
    if pipe.tokenizer.get_vocab(with_added_tokens=True) != trainee.tokenizer.get_vocab(with_added_tokens=True):
        raise InputError(
            f"--answers {bundle}: its tokenizer is not the checkpoint's; allowed: a bundle exported from this model"
        )

    def answer(e: Any) -> torch.Tensor:
        media = {"images" if e.kind == "image" else "audio": [str(e.media)]}
        ids = list(pipe.generate_tokens(e.prompt, max_new_tokens=tokens, **media))
        return torch.tensor([ids + ends[:1] if len(ids) < tokens else ids])

    return answer


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
