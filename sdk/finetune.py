"""`finetune`: domain-adaptive fine-tuning on CPU, before compression, as the method prescribes.

It trains the media projectors of a model whose encoders and decoder stay frozen (optionally LoRA
adapters on the decoder), in two stages:

    frozen encoders ─► features, computed once per image / clip (and kept on disk with `cache`)
    1. align   every projector row classified against the decoder's own (tied) embeddings of the
               answers' first tokens, soft target over all of the item's answers, plus an MSE
               pull toward their mean embedding: cheap (no decoder), it makes the rows tell the
               answers apart in the words the decoder already reads
    2. tune    projectors end to end through the frozen decoder, cross-entropy on the answer
               tokens and the end-of-turn token, batches balanced across question types, lr on
               a half cosine: the decoder learns nothing, the rows learn to make it answer in
               the data's words and format
    held-out evaluation: greedy answers, exact match, per media kind

Why this recipe (measured on the demo data set, samples/demo_model/README.md): the first one
(MSE onto the first answer token, 150 steps; 100 end-to-end steps of randomly drawn questions)
reached 50% on images. MSE regresses a drawing's rows onto the average of its two answers
("triangle", "blue") and never pushes the ten digit rows apart; classifying rows against the
answer embeddings makes stage 1 alone as good as a linear probe of the frozen features
(held-out MNIST 94%, shapes and colours 100%, words 100%, nearest answer embedding). Without
the decoder in the loop, though, a row that *is* the word "7" makes SmolLM2 say "This is the
number ..." (0% exact match): stage 2 is what teaches the format, and it must see every
question type as often (random draws gave the colour question a tenth of the batches).
Features are cached by content hash because encoding the 1,200 media takes ~8 minutes on two
busy cores, longer than the alignment.
The defaults (100 alignment steps, 240 tuning steps) produced the committed adapter: held-out
images 94% (digits 90%, shapes and colours 100%), words 100%. At 60 tuning steps the digit rows
had collapsed onto "1" (digits 34%): each digit is seen about twice per 8 questions' batch, so
the ten digits need the longer run (about 10 minutes on an idle 2-core machine).

Lives in sdk/ beside `export` because it is a user verb with the same shape (a model directory
in, a model directory out). It names no family: the family's `finetune` capability
(exporters/family.py) says what is trained (the projector per media kind), which tower keys the
feature cache and how the result is saved; the family's `split` gives the rest, the same prompt
template, placeholders, pre-processing, encoder units and decoder unit that `export` writes. So a
media file is pre-processed by the runtime's own code (runtimes/media.py: tiles, patch grids, mel
windows), each encoder call runs frozen while a hook keeps what its projector is given (the
cached feature), and a question is the templated prompt with each placeholder replaced by its
call's projected rows, at the runtime's positions (M-RoPE for Qwen2-VL). `lora_rank` adds
adapters to every linear layer of the decoder (edgemfm.lora), trained in stage 2 and merged into
the weights before the evaluation and the save.

Data: JSONL, one question per line, media paths relative to the file's folder; a bad row is
refused in one line naming `file:line`. `data` is the training file, or a folder holding
`train.jsonl` and `eval.jsonl`; `eval` (a file) gives the held-out questions instead. A file
without `eval` holds out every fifth question of each media kind (its 5th, 10th, ... image and
audio questions: the same split on every run, both kinds measured) and trains on the rest:

    {"image": "images/seven.png", "prompt": "What digit is this?", "answer": "7"}
    {"audio": "audio/red.wav", "prompt": "What word is spoken?", "answer": "red"}

Output: a checkpoint directory in the family's own layout that `edgemfm export --model` accepts
(config and weights from the family's `save`, the other files of the base checkpoint copied:
tokenizer, processor settings), plus adapter.safetensors (the trained projectors, fp16),
finetune.json (settings, losses, held-out accuracy of the base and of the result) and
checkpoints/. Trained projectors are rounded to fp16 before the evaluation, so the accuracy
reported is the accuracy of the weights written. Written in a staging directory and renamed:
an interrupted run leaves nothing.

Example:
    >>> report = finetune(FinetuneConfig("models/demo-base", "data/demo", "models/demo"))   # doctest: +SKIP
    >>> report.accuracy                                                     # doctest: +SKIP
    {'image': 0.96, 'audio': 0.99}
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

from edgemfm import bundle
from edgemfm.configs import FinetuneConfig
from edgemfm.errors import InputError
from edgemfm.exporters.trainee import (
    KINDS,
    Encoded,
    Example,
    Sequence,
    Trainee,
    encode_media,
    load_trainee,
    read_examples,
    read_jsonl,
    sequence,
)
from edgemfm.progress import Progress, counter
from edgemfm.records import to_dict
from edgemfm.report import FinetuneReport


def read_data(data: Path, held_out: Path | None = None) -> tuple[list[Example], list[Example]]:
    """The training and held-out questions: `data` a JSONL file or a folder with train.jsonl and
    eval.jsonl, `held_out` a JSONL file replacing the folder's eval.jsonl or the file's split.

    Example:
        >>> train, held_out = read_data(Path("data/train.jsonl"))   # doctest: +SKIP
        >>> len(held_out) * 5 <= len(train + held_out)              # doctest: +SKIP
        True
    """
    if held_out is not None and not held_out.is_file():
        raise InputError(f"eval file {str(held_out)!r} does not exist; allowed: a JSONL file of held-out questions")
    if data.is_dir():
        train = read_examples(data, "train")
        return train, read_jsonl(held_out) if held_out else read_examples(data, "eval")
    if not data.is_file():
        raise InputError(f"data {str(data)!r} does not exist; allowed: a JSONL file, or a folder with train.jsonl")
    rows = read_jsonl(data)
    if held_out is not None:
        return rows, read_jsonl(held_out)
    nth = {kind: [e for e in rows if e.kind == kind] for kind in KINDS}
    kept = {id(e) for group in nth.values() for e in group[4::5]}  # the 5th, 10th, ... of each kind
    if not kept:
        raise InputError(
            f"{data} has {len(rows)} question(s): too few to hold every fifth out for evaluation; "
            "allowed: at least 5 of a kind, or --eval FILE"
        )
    return [e for e in rows if id(e) not in kept], [e for e in rows if id(e) in kept]


def trainable(t: Trainee) -> list[Any]:
    """The parameters finetune trains: the projectors the family names, and the LoRA adapters if any."""
    from edgemfm import lora

    kinds = [k for k in t.trainer.trainable if k in t.split.prompt.media]
    return [p for k in kinds for p in t.projector(k).parameters()] + lora.parameters(t.adapters)


def _align(t: Trainee, examples, feats, steps, lr, progress) -> list[float]:
    """Stage 1: every projected row of an item is classified against the decoder's own embeddings
    of the answers' first tokens, the item's answers sharing the target (a drawing has a shape and
    a colour), plus an MSE pull toward their mean embedding that keeps the rows at the scale of the
    words the decoder reads (full batch; items stacked by feature shape)."""
    import torch

    table = t.embed.embed_tokens.weight.detach()
    scale = table.pow(2).mean()  # MSE in units of a typical embedding's energy
    first = {e.answer: t.tokenizer.encode(e.answer, add_special_tokens=False).ids[0] for e in examples}
    candidates = sorted(set(first.values()))  # the answers the data can ask for: a probe's classes
    column = {c: i for i, c in enumerate(candidates)}
    classes = table[candidates]
    answers: dict[Path, list[str]] = {}
    kind_of = {}
    for e in examples:
        answers.setdefault(e.media, []).append(e.answer)
        kind_of[e.media] = e.kind
    groups: dict[tuple, list[Path]] = {}  # items whose calls stack: one kind, one feature shape
    for m in answers:
        groups.setdefault((kind_of[m], tuple(feats[m].features.shape[1:])), []).append(m)
    x, soft = {}, {}
    for g, media in groups.items():
        x[g] = torch.cat([feats[m].features for m in media])
        target = torch.zeros(len(media), len(candidates))
        for i, m in enumerate(media):
            for a in answers[m]:
                target[i, column[first[a]]] += 1 / len(answers[m])
        soft[g] = torch.repeat_interleave(target, torch.tensor([feats[m].features.shape[0] for m in media]), 0)
    opt = torch.optim.AdamW(trainable(t), lr=lr, weight_decay=0.0)
    advance, losses = counter(progress, "stage 1: aligning projectors", steps), []
    for _ in range(steps):
        loss = 0
        for g in x:
            rows = t.project(g[0], x[g])
            logp = torch.log_softmax(rows @ classes.T, -1)
            mean = (soft[g] @ classes)[:, None]
            term = -(logp * soft[g][:, None]).sum(-1).mean() + ((rows - mean) ** 2).mean() / scale
            loss = loss + term / len(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        advance()
    return losses


def _batch(seqs: list[Sequence]) -> tuple[Any, Any, Any]:
    """Padded embeddings, attention mask and positions of sequences of different lengths (right padding)."""
    import torch

    width = max(s.embeds.shape[0] for s in seqs)
    pad = [width - s.embeds.shape[0] for s in seqs]
    embeds = torch.stack([torch.nn.functional.pad(s.embeds, (0, 0, 0, p)) for s, p in zip(seqs, pad)])
    mask = torch.tensor([[1] * (width - p) + [0] * p for p in pad])
    positions = torch.cat([torch.nn.functional.pad(s.positions, (0, p)) for s, p in zip(seqs, pad)], -2)
    return embeds, mask, positions


def _tune(t: Trainee, examples, feats, config: FinetuneConfig, rng, progress, checkpoints: Path) -> list[float]:
    """Stage 2: projectors (and adapters) trained through the frozen decoder on the answer tokens.
    Batches take question types in turn (digit, shape, colour, word ...), so the 136 drawings'
    questions weigh as much as the 400 digits'; the learning rate falls along a half cosine to a tenth."""
    import math

    import torch

    steps = config.steps
    opt = torch.optim.AdamW(trainable(t), lr=config.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.1 + 0.45 * (1 + math.cos(math.pi * s / steps)))
    lm, head = t.decoder.language_model, t.decoder.lm_head
    advance, losses = counter(progress, "stage 2: tuning through the decoder", steps), []
    groups: dict[tuple[str, str], list[Example]] = {}
    for e in examples:
        groups.setdefault((e.kind, e.prompt), []).append(e)
    queues: dict[tuple[str, str], list[Example]] = {g: [] for g in groups}
    turn = 0
    for step in range(1, steps + 1):
        batch = []
        for _ in range(config.batch_size):
            g = list(groups)[turn % len(groups)]
            turn += 1
            if not queues[g]:
                queues[g] = rng.sample(groups[g], len(groups[g]))
            batch.append(queues[g].pop())
        seqs = [sequence(t, e, feats[e.media], True) for e in batch]
        embeds, mask, positions = _batch(seqs)
        hidden = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
        # logits only where an answer token is predicted: the vocabulary-wide head is the costliest layer
        n = [s.embeds.shape[0] for s in seqs]
        where = [(b, n[b] - len(s.answer) - 1 + j) for b, s in enumerate(seqs) for j in range(len(s.answer))]
        logits = head(torch.stack([hidden[b, i] for b, i in where]))
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor([i for s in seqs for i in s.answer]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        advance(1, f"stage 2: tuning through the decoder (loss {loss:.3f})")
        if step % config.checkpoint_every == 0 or step == steps:
            _save_adapter(t, checkpoints / f"step-{step:05d}.safetensors")
    return losses


def answer(t: Trainee, examples: list[Example], feats, max_new_tokens: int = 6) -> list[str]:
    """Greedy answers to questions whose prompts have one length, batched (no padding), as the runtime decodes.

    Example:
        >>> answer(t, [example], feats)   # doctest: +SKIP
        ['7']
    """
    import numpy as np
    import torch
    from transformers import DynamicCache

    from edgemfm.runtimes.positions import decoder_positions

    lm, head, eos = t.decoder.language_model, t.decoder.lm_head, t.split.tokenizer.eos_token_ids
    with torch.no_grad():
        seqs = [sequence(t, e, feats[e.media], False) for e in examples]
        length = seqs[0].embeds.shape[0]
        assert all(s.embeds.shape[0] == length for s in seqs), "answer batches prompts of one length"
        embeds, _, positions = _batch(seqs)
        out = lm(inputs_embeds=embeds, position_ids=positions, cache=DynamicCache(config=lm.config), use_cache=True)
        done, tokens = torch.zeros(len(examples), dtype=torch.bool), []
        for step in range(max_new_tokens):
            nxt = head(out.last_hidden_state[:, -1]).argmax(-1)
            tokens.append(torch.where(done, eos[0], nxt))
            done |= torch.isin(nxt, torch.tensor(eos))
            if bool(done.all()):
                break
            at = np.concatenate([decoder_positions(length + step, 1, s.mrope) for s in seqs], -2)
            out = lm(
                inputs_embeds=t.embed(nxt[:, None]),
                position_ids=torch.from_numpy(at),
                cache=out.cache,
                use_cache=True,
            )
    rows = torch.stack(tokens, 1).tolist()
    cut = [next((i for i, token in enumerate(row) if token in eos), len(row)) for row in rows]
    return [t.tokenizer.decode(row[:n]).strip() for row, n in zip(rows, cut)]


def evaluate(t: Trainee, examples: list[Example], feats, progress) -> dict[str, Any]:
    """Exact-match accuracy of greedy answers, per media kind, and the misses.

    Example:
        >>> evaluate(t, held_out, feats, None)["accuracy"]   # doctest: +SKIP
        {'image': 0.94}
    """
    groups: dict[tuple[str, str, int], list[Example]] = {}
    for e in examples:  # one batch shape: same question, same number of media rows
        groups.setdefault((e.kind, e.prompt, _shape(feats[e.media])), []).append(e)
    advance = counter(progress, "held-out evaluation", len(examples))
    right = {k: 0 for k in KINDS}
    total = {k: 0 for k in KINDS}
    misses = []
    for group in groups.values():
        for i in range(0, len(group), 16):
            batch = group[i : i + 16]
            for e, got in zip(batch, answer(t, batch, feats)):
                total[e.kind] += 1
                right[e.kind] += got == e.answer
                if got != e.answer:
                    misses.append({"media": e.media.name, "prompt": e.prompt, "answer": e.answer, "got": got})
            advance(len(batch))
    accuracy = {k: right[k] / total[k] for k in KINDS if total[k]}
    return {"accuracy": accuracy, "questions": {k: total[k] for k in KINDS if total[k]}, "misses": tuple(misses)}


def _shape(item: Encoded) -> tuple:
    """What sets an item's prompt length and positions besides the question: its text and call grids."""
    return (item.text, tuple(item.features.shape), item.grids)


def _save_adapter(t: Trainee, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        f"{name}.{k}": v.detach().half().contiguous()
        for name in t.trainer.trainable.values()
        for k, v in t.model.get_submodule(name).state_dict().items()
    }
    save_file(state, str(path))


def finetune(config: FinetuneConfig, progress: Progress | None = None) -> FinetuneReport:
    """Fine-tune the projectors of `config.model` (a checkpoint directory, or a Hub id at `config.revision`)
    on the questions in `config.data` (held out: `config.eval`, see `read_data`); write the result to `config.out`.

    Returns the report also written to `out/finetune.json` (losses, held-out accuracy before and
    after). The output is built in `bundle.staging` and renamed into place: an interrupted run
    leaves nothing. `progress` hears each step (see `edgemfm.progress`); without it nothing is printed.

    Example:
        >>> finetune(FinetuneConfig("models/demo-base", "data/demo", "models/demo")).accuracy  # doctest: +SKIP
        {'image': 0.96, 'audio': 0.99}
    """
    from edgemfm.exporters import capability, find_family
    from edgemfm.model_source import resolve_model

    model_dir, data = resolve_model(config.model, config.revision).path, Path(config.data)
    capability(find_family(json.loads((model_dir / "config.json").read_text())), "finetune")  # refused early
    train, held_out = read_data(data, Path(config.eval) if config.eval else None)
    inputs = (model_dir, data, config.eval, config.cache)
    with bundle.staging(config.out, config.force, verify=_verify_checkpoint, inputs=inputs) as stage:
        return _run(config, model_dir, train, held_out, stage, progress)


def _verify_checkpoint(stage: Path) -> None:
    """What `export --model` will read of the output must be there before it is renamed into place."""
    for name in ("config.json", "tokenizer.json", "adapter.safetensors", "finetune.json"):
        assert (stage / name).is_file(), f"finetune wrote no {name}"


def _copy_beside(model_dir: Path, stage: Path) -> None:
    """The checkpoint's other files (tokenizer, processor and chat settings) into the output, as they
    were: `save` wrote the weights and config, the rest of what `export` reads is unchanged."""
    weights = (".safetensors", ".bin", ".pt", ".safetensors.index.json", ".bin.index.json")
    for f in sorted(model_dir.iterdir()):
        if f.is_file() and not f.name.endswith(weights) and not (stage / f.name).exists():
            shutil.copyfile(f, stage / f.name)


def _run(config, model_dir, train, held_out, stage: Path, progress: Progress | None) -> FinetuneReport:
    import torch

    from edgemfm import lora

    torch.manual_seed(config.seed)
    rng, start = random.Random(config.seed), time.monotonic()
    t = load_trainee(model_dir)
    t.model.requires_grad_(False)
    items = sorted({(e.kind, e.media) for e in train + held_out})
    feats = encode_media(t, items, progress, Path(config.cache) if config.cache else None)
    before = evaluate(t, held_out, feats, progress)["accuracy"]  # the base model's, measured the same way
    if config.lora_rank:
        t.adapters = lora.attach(t.decoder.language_model, config.lora_rank, config.lora_alpha, config.seed)
    for p in trainable(t):
        p.requires_grad_(True)
    align = _align(t, train, feats, config.align_steps, config.align_lr, progress)
    tune = _tune(t, train, feats, config, rng, progress, stage / "checkpoints") if config.steps else []
    with torch.no_grad():  # evaluate exactly the fp16 projector weights the adapter file keeps
        for k in t.trainer.trainable.values():
            for p in t.model.get_submodule(k).parameters():
                p.copy_(p.half().float())
    lora.merge(t.adapters)  # the decoder evaluated (and saved) is the merged one
    result = evaluate(t, held_out, feats, progress)
    t.trainer.save(t.model, stage)
    _copy_beside(model_dir, stage)
    _save_adapter(t, stage / "adapter.safetensors")
    report = FinetuneReport(
        base=str(model_dir),
        seed=config.seed,
        train_questions=len(train),
        align_steps=config.align_steps,
        steps=config.steps,
        batch_size=config.batch_size,
        lr=config.lr,
        align_lr=config.align_lr,
        align_loss=align[-1] if align else None,
        loss=tuple(tune[:: max(1, len(tune) // 20)] + tune[-1:]),
        seconds=round(time.monotonic() - start, 1),
        **result,
        accuracy_before=before,
        lora_rank=config.lora_rank,
    )
    (stage / "finetune.json").write_text(json.dumps(to_dict(report), indent=2) + "\n")
    return report
