"""Recovery after pruning: distil the pruned model's text decoder from the unpruned one.

The loss is KL(teacher || student) on next-token distributions (Hinton et al.'s distillation on
logits), so every position of every sequence teaches the whole distribution, not one label: a
few dozen steps win back much of what a cut lost. The sequences are the calibration texts, each
continued by the *teacher* (seeded sampling): no labelled data is needed, and the student learns
on text the teacher finds likely. Only the decoder layers train (the tied embedding and head
stay as they are); on a CPU, one thread, everything is seeded, so a run is repeatable.

Example:
    >>> report = distil(pruned, unpruned, tokenizer, texts, RecoveryConfig(steps=32))   # doctest: +SKIP
    >>> report.loss.last < report.loss.first                                             # doctest: +SKIP
    True
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from edgemfm.errors import InputError
from edgemfm.progress import Progress, counter
from edgemfm.pruners.importance import calibration_samples
from edgemfm.pruners.structure import find_decoder
from edgemfm.report import Loss, Recovery


@dataclass(frozen=True)
class RecoveryConfig:
    """How long and how hard to distil."""

    version: int = 1
    steps: int = 32  # one sequence per step: a few minutes on one core for a 135M decoder
    lr: float = 1e-4  # AdamW, constant: short runs have no room for a schedule
    continuation: int = 32  # tokens the teacher writes after each calibration text
    seed: int = 0
    label_weight: float = (
        0.0  # cross-entropy on labelled tokens added to the KL: the teacher's own misses are not copied
    )

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise InputError(f"--recover {self.steps}: the number of distillation steps must be 1 or more")
        if not self.lr > 0 or self.continuation < 0 or self.label_weight < 0:
            raise InputError(
                f"recovery lr {self.lr:g}, continuation {self.continuation} and label weight {self.label_weight:g} must be positive"
            )


def teacher_sequences(teacher: Any, tokenizer: Any, texts: Sequence[str], config: RecoveryConfig) -> list[torch.Tensor]:
    """Each calibration text continued by the teacher (seeded top-p sampling): token ids [1, n].

    Example:
        >>> [s.shape for s in teacher_sequences(model, tok, ["Once upon a time"], RecoveryConfig(continuation=8))]  # doctest: +SKIP
        [torch.Size([1, 12])]
    """
    torch.manual_seed(config.seed)
    out = []
    with torch.no_grad():
        for ids in calibration_samples(tokenizer, texts):
            if config.continuation:
                pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
                ids = teacher.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=config.continuation,
                    do_sample=True,
                    top_p=0.95,
                    pad_token_id=pad,
                )
            out.append(ids)
    return out


def _kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(teacher || student)."""
    t = torch.log_softmax(teacher_logits.float(), dim=-1)
    s = torch.log_softmax(student_logits.float(), dim=-1)
    return torch.nn.functional.kl_div(s.flatten(0, -2), t.flatten(0, -2), log_target=True, reduction="batchmean")


def distil(
    student: Any,
    teacher: Any,
    tokenizer: Any,
    texts: Sequence[str],
    config: RecoveryConfig,
    sequences: Sequence[torch.Tensor] | None = None,
    progress: Progress | None = None,
    labels: Sequence[torch.Tensor] | None = None,
) -> Recovery:
    """Train `student`'s decoder layers in place towards `teacher`'s logits; returns the report.

    `sequences` (from `teacher_sequences`) may be passed to reuse the teacher's text across students;
    a floating-point sequence [1, n, hidden] is fed as `inputs_embeds` (a multimodal model's
    question with its media rows spliced in). `labels` (one [n] id tensor per sequence, -100 where
    no token is labelled: Hugging Face's convention) add `config.label_weight` x cross-entropy on
    the labelled next tokens (a question's true answer).

    Example:
        >>> distil(pruned, unpruned, tokenizer, read_texts(None), RecoveryConfig()).config["steps"]   # doctest: +SKIP
        32
    """
    start = time.perf_counter()
    sequences = list(sequences) if sequences is not None else teacher_sequences(teacher, tokenizer, texts, config)
    if config.label_weight and (labels is None or len(labels) != len(sequences)):
        raise InputError(
            f"recovery label weight {config.label_weight:g} needs one label tensor per sequence ({len(sequences)})"
        )
    layers = find_decoder(student).layers
    trained = set(map(id, layers.parameters()))
    frozen = [p for p in student.parameters() if id(p) not in trained and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    torch.manual_seed(config.seed)
    order = torch.randperm(len(sequences) * (config.steps // len(sequences) + 1)) % len(sequences)
    optimizer = torch.optim.AdamW(layers.parameters(), lr=config.lr, weight_decay=0.0)
    step_done = counter(progress, "distilling", config.steps)
    losses = []
    student.train()
    try:
        for step in range(config.steps):
            seq = sequences[int(order[step])]
            inputs = {"inputs_embeds": seq} if seq.is_floating_point() else {"input_ids": seq}
            with torch.no_grad():
                target = teacher(**inputs, use_cache=False).logits
            logits = student(**inputs, use_cache=False).logits
            loss = _kl(target, logits)
            if config.label_weight:  # position t predicts token t + 1
                loss = loss + config.label_weight * torch.nn.functional.cross_entropy(
                    logits[0, :-1], labels[int(order[step])][1:], ignore_index=-100
                )
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(layers.parameters(), 1.0)  # a sliced model's first steps can be steep
            optimizer.step()
            losses.append(loss.item())
            step_done()
    finally:
        student.eval()
        for p in frozen:
            p.requires_grad_(True)
    window = max(1, min(4, len(losses) // 4))
    return Recovery(
        method="distillation: KL(unpruned || pruned) on next-token logits; decoder layers trained, embedding and head frozen",
        config=asdict(config),
        sequences=len(sequences),
        tokens=sum(s.shape[1] for s in sequences),
        loss=Loss(first=sum(losses[:window]) / window, last=sum(losses[-window:]) / window),
        seconds=round(time.perf_counter() - start, 1),
    )
