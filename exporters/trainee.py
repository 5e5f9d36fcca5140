"""A checkpoint loaded for training, and the questions it trains on: what the `finetune` verb and
pruning's recovery on a model's own questions (`pruners/questions.py`) share.

`load_trainee` loads a checkpoint through its family's `finetune` capability (exporters/family.py)
with the family's split (prompt template, pre-processing, encoder and decoder units: what `export`
writes). `read_jsonl` / `read_examples` read questions (JSONL, one per line, one media item each,
bad rows refused in one line naming `file:line`); `encode_media` runs each distinct media file once
through the frozen towers, pre-processed by the runtime's own code; `sequence` builds a question's
decoder inputs as the bundle's runtime does (media rows spliced in, M-RoPE positions).

Example:
    >>> t = load_trainee(Path("models/demo"))                                  # doctest: +SKIP
    >>> questions = read_examples(Path("data/demo"), "train")                  # doctest: +SKIP
    >>> feats = encode_media(t, [(q.kind, q.media) for q in questions[:2]], None, None)   # doctest: +SKIP
    >>> sequence(t, questions[0], feats[questions[0].media], True).answer      # doctest: +SKIP
    [55, 2]
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from edgemfm.errors import InputError
from edgemfm.model_source import load_checkpoint
from edgemfm.progress import Progress, counter

KINDS = ("image", "audio")
DATA_KEYS = ("prompt", "answer", *KINDS)


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str
    kind: str  # "image" or "audio": the one media item the question is about
    media: Path
    where: str = ""  # file:line of the row, for errors found later (a placeholder typed into the prompt)


def read_examples(data: Path, split: str) -> list[Example]:
    """The questions of `data/{split}.jsonl` (a data folder), checked as `read_jsonl` does.

    Example:
        >>> read_examples(Path("data/demo"), "eval")[0].kind   # doctest: +SKIP
        'image'
    """
    path = data / f"{split}.jsonl"
    if not path.is_file():
        raise InputError(f"data folder {str(data)!r} has no {split}.jsonl; it needs train.jsonl and eval.jsonl")
    return read_jsonl(path)


def read_jsonl(path: Path) -> list[Example]:
    """The questions of one JSONL file, checked: known keys, one media item, files present
    (media paths relative to the file's folder).

    Example:
        >>> read_jsonl(Path("data/demo/eval.jsonl"))[0].kind   # doctest: +SKIP
        'image'
    """
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected an object with keys {', '.join(DATA_KEYS)}")
        unknown = sorted(set(row) - set(DATA_KEYS))
        if unknown:
            raise InputError(f"{where}: unknown key {unknown[0]!r}; known: {', '.join(DATA_KEYS)}")
        kinds = [k for k in KINDS if k in row]
        if len(kinds) != 1 or not all(isinstance(row.get(k), str) and row.get(k) for k in ("prompt", "answer")):
            raise InputError(f"{where}: needs a non-empty prompt and answer and exactly one of: {', '.join(KINDS)}")
        media = path.parent / row[kinds[0]]
        if not media.is_file():
            raise InputError(f"{where}: {kinds[0]} file {str(media)!r} does not exist")
        out.append(Example(row["prompt"], row["answer"], kinds[0], media, where))
    if not out:
        raise InputError(f"{path} holds no questions")
    return out


@dataclass
class Trainee:
    """A loaded model with what training reads of it: the family's `finetune` capability, its split
    (prompt, pre-processing, encoder and decoder units: what `export` writes) and its tokenizer."""

    model: Any  # torch model, fp32
    trainer: Any  # the family's Finetuning
    split: Any  # the family's Split of the model
    tokenizer: Any  # tokenizers.Tokenizer of the checkpoint's tokenizer.json
    adapters: list = field(default_factory=list)  # edgemfm.lora adapters on the decoder; empty: none

    @property
    def decoder(self) -> Any:
        """The decoder unit's module (exporters/decoder.py TextDecoder: `.language_model`, `.lm_head`)."""
        return self.split.units[self.split.generation.decoder].module

    @property
    def embed(self) -> Any:
        return self.split.units[self.split.generation.embedding].module

    @property
    def eos(self) -> int:
        return self.split.tokenizer.eos_token_ids[0]

    def projector(self, kind: str) -> Any:
        return self.model.get_submodule(self.trainer.trainable[kind])

    def project(self, kind: str, features: Any) -> Any:
        """Trained rows [n, rows, hidden] of frozen features [n, rows in, width] (one encoder call each)."""
        out = self.projector(kind)(features)
        return out.reshape(features.shape[0], -1, out.shape[-1])


@dataclass(frozen=True)
class Encoded:
    """One media file as the runtime will see it: its prompt text and each encoder call's frozen features."""

    text: str  # what stands for the item in the prompt: one placeholder per call (tiles, wrappers)
    features: Any  # [calls, rows, width]: the projector's input, per call
    grids: tuple  # per call, the (t, h, w) of its decoder rows (M-RoPE), or None


def load_trainee(model_dir: Path) -> Trainee:
    """The checkpoint at `model_dir`, loaded by its family for training.

    Example:
        >>> load_trainee(Path("models/llava-tiny")).trainer.trainable   # doctest: +SKIP
        {'image': 'model.multi_modal_projector'}
    """
    from tokenizers import Tokenizer

    from edgemfm.exporters import capability, find_family

    family = find_family(json.loads((model_dir / "config.json").read_text()))
    trainer = capability(family, "finetune")
    model = load_checkpoint(trainer.load, model_dir)
    split = family.split(model, model_dir)
    return Trainee(model, trainer, split, Tokenizer.from_file(str(split.tokenizer_file)))


def _view(t: Trainee) -> Any:
    """What runtimes.media.prepare reads of a manifest (its prompt and pre-processing), from the split."""
    return SimpleNamespace(prompt=t.split.prompt, preprocess=t.split.preprocess)


def _fingerprint(t: Trainee, kind: str) -> str:
    """What a cached feature depends on besides the file: the tower's weights, the model's config and
    the pre-processing."""
    import hashlib

    config = t.model.config if isinstance(t.model.config, dict) else t.model.config.to_dict()
    h = hashlib.sha256(repr((t.split.preprocess, t.split.prompt.media[kind], sorted(config.items()))).encode())
    for name, tensor in sorted(t.model.get_submodule(t.trainer.towers[kind]).state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _encode(t: Trainee, kind: str, calls: list[Any]) -> Any:
    """Frozen features [calls, rows, width] of one item: each call runs the family's encoder unit,
    and a hook keeps what its projector is given."""
    import torch

    unit = t.split.units[t.split.prompt.media[kind].encoder]
    projector, seen = t.projector(kind), []
    hook = projector.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    out = []
    try:
        for call in calls:
            rows = unit.module(*(torch.from_numpy(call.feeds[name]) for name in unit.input_names))
            x = seen.pop()
            features = x.reshape(-1, x.shape[-1])
            n = rows.reshape(-1, rows.shape[-1]).shape[0]
            if projector(x).reshape(-1, rows.shape[-1]).shape[0] != n:
                # a row-wise projector whose padded rows the encoder drops after it (Qwen2-Audio's
                # masked frames): the real rows are the first n
                features = features[:n]
            seen.clear()
            out.append(features)
    finally:
        hook.remove()
    return torch.stack(out)


def encode_media(t: Trainee, items: list[tuple[str, Path]], progress: Progress | None, cache: Path | None):
    """Every distinct media file pre-processed as the runtime does it and encoded once by the frozen
    towers (`Encoded` per path); with `cache`, features kept on disk under the file's content hash and the tower's
    fingerprint, so a rerun encodes nothing (it only pre-processes, for the prompt text)."""
    import hashlib

    import numpy as np
    import torch

    from edgemfm.runtimes.media import prepare

    advance = counter(progress, "encoding media (frozen towers)", len(items))
    out: dict[Path, Encoded] = {}
    folders = {k: cache / f"{k}-{_fingerprint(t, k)}" for k in {k for k, _ in items}} if cache else {}
    with torch.no_grad():
        for kind, p in items:
            prepared = prepare(kind, p, _view(t))
            file = folders[kind] / f"{hashlib.sha256(p.read_bytes()).hexdigest()}.npy" if cache else None
            if file is not None and file.is_file():
                features = torch.from_numpy(np.load(file))
            else:
                features = _encode(t, kind, prepared.calls)
                if file is not None:  # written beside, then renamed: a killed run leaves no torn file
                    file.parent.mkdir(parents=True, exist_ok=True)
                    tmp = file.with_suffix(".partial.npy")
                    np.save(tmp, features.numpy())
                    tmp.rename(file)
            out[p] = Encoded(prepared.text, features, tuple(c.grid for c in prepared.calls))
            advance()
    return out


@dataclass(frozen=True)
class Sequence:
    """Decoder inputs of one question, as the bundle's runtime builds them."""

    embeds: Any  # [seq, hidden]: the templated prompt's embeddings with the media rows spliced in, then the answer's
    positions: Any  # [1, seq] or, with M-RoPE, [3, 1, seq]
    answer: list[int]  # the ids the positions after the prompt must predict: the answer and end-of-turn
    mrope: Any  # the prompt's M-RoPE positions and shift (runtimes.positions.mrope_prompt); None: arange


def sequence(t: Trainee, e: Example, item: Encoded, with_answer: bool) -> Sequence:
    """The decoder inputs of question `e` about `item`, the answer appended when `with_answer`.

    Example:
        >>> sequence(t, example, feats[example.media], True).answer   # doctest: +SKIP
        [55, 2]
    """
    import torch

    from edgemfm.runtimes.positions import decoder_positions, mrope_prompt

    prompt, spec = t.split.prompt, t.split.prompt.media[e.kind]
    ids = t.tokenizer.encode(
        prompt.template.format(media=item.text, prompt=e.prompt), add_special_tokens=prompt.add_special_tokens
    ).ids
    spots = [i for i, token in enumerate(ids) if token == spec.token_id]
    if len(spots) != item.features.shape[0]:
        raise InputError(
            f"{e.where}: the prompt must not contain the {e.kind} placeholder {spec.placeholder.strip()!r}"
        )
    answer = t.tokenizer.encode(e.answer, add_special_tokens=False).ids + [t.eos] if with_answer else []
    text = t.embed(torch.tensor(ids + answer))
    pieces, segments, start = [], [], 0
    for spot, rows, grid in zip(spots, t.project(e.kind, item.features), item.grids):
        pieces += [text[start:spot], rows]
        segments += [spot - start, grid]
        start = spot + 1
    pieces.append(text[start:])
    segments.append(len(ids) - start)
    embeds = torch.cat(pieces)
    mrope = mrope_prompt([s for s in segments if s != 0]) if t.split.generation.positions == "mrope" else None
    positions = torch.from_numpy(decoder_positions(0, embeds.shape[0], mrope))
    return Sequence(embeds, positions, answer, mrope)
