"""`prune`: a checkpoint + how much to remove -> a dense, smaller checkpoint with a consistent config.

Per component (text decoder, vision encoder, audio encoder), three granularities, applied in
this order, each scored on calibration data against the model as the previous stage left it
(see `importance` for the scores, `structure` for the slicing, `data` for the inputs):

- `blocks=N`:    remove the N blocks that turn their input the least;
- `heads=F`:     remove the fraction F of KV groups (each with all its query heads) in every layer;
- `mlp=F`:       remove the fraction F of MLP intermediate channels in every layer.

Every layer loses the same count of heads and channels (the least important in *that* layer):
a transformers config holds one `num_key_value_heads` and one `intermediate_size` per model, so
per-layer sizes could not be loaded back. The output is written atomically with `pruning.json`
(what was removed, where, the scores and why) beside the weights and the tokenizer/processor files.

The checkpoint is opened, searched and written through its family's `prunable` capability
(exporters/family.py): the transformers families share `checkpoint.TRANSFORMERS`, the demo model
declares its own (its SmolLM2 decoder); a checkpoint of no registered family is tried as a
transformers one, its stacks checked by their shape.

Recovery (`recover=STEPS`, `edgemfm prune --recover STEPS`) distils the pruned text decoder from
the unpruned model on the calibration text continued by that model (see `recovery`), or, given a
data folder of questions (finetune's format), on the model's own questions with their media rows
(see `questions`).

Example:
    >>> from edgemfm.pruners.prune import PruneConfig, prune
    >>> prune("models/llava", "models/llava-mlp20", PruneConfig(mlp=0.2))   # doctest: +SKIP
    PosixPath('models/llava-mlp20')
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgemfm import bundle
from edgemfm.errors import InputError, UnsupportedModelError
from edgemfm.exporters.family import Prunable
from edgemfm.progress import Progress, counter, say
from edgemfm.pruners import importance
from edgemfm.pruners.checkpoint import TRANSFORMERS
from edgemfm.pruners.data import cross_text_calls, media_calls, text_calls
from edgemfm.pruners.questions import check_answers, holds_questions, question_sequences
from edgemfm.pruners.recovery import RecoveryConfig, distil
from edgemfm.pruners.structure import (
    COMPONENTS,
    Stack,
    count_parameters,
    drop_blocks,
    find_stack,
    keep_channels,
    keep_kv_groups,
)
from edgemfm.records import from_dict, to_dict
from edgemfm.report import ChannelScores, Parameters, PruneCalibration, PruneStage, Pruning, Share

REPORT = "pruning.json"
WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".index.json")  # never copied: rewritten
UNIFORM = "same count removed in every layer: a transformers config holds one head count and one MLP width per model"


@dataclass(frozen=True)
class PruneConfig:
    """What to remove from one component. Zero means: leave that granularity alone."""

    version: int = 1
    blocks: int = 0  # whole blocks to remove
    heads: float = 0.0  # fraction of KV groups (with their query heads) to remove in every layer
    mlp: float = 0.0  # fraction of MLP intermediate channels to remove in every layer
    component: str = "text_decoder"  # text_decoder, vision_encoder or audio_encoder

    def __post_init__(self) -> None:
        if self.component not in COMPONENTS:
            raise InputError(f"component {self.component!r} cannot be pruned; allowed: {', '.join(COMPONENTS)}")
        if self.blocks < 0:
            raise InputError(f"--blocks {self.blocks}: the number of blocks to remove must be 1 or more")
        for flag, value in (("--heads", self.heads), ("--mlp", self.mlp)):
            if value != 0 and not 0 < value < 1:
                raise InputError(f"{flag} {value:g} is outside (0, 1); give the fraction to remove, e.g. 0.2")
        if not (self.blocks or self.heads or self.mlp):
            raise InputError("nothing to prune; pass --blocks N, --heads F or --mlp F")


def parse_spec(spec: str) -> PruneConfig:
    """`[COMPONENT:]KEY=VALUE[,KEY=VALUE...]` (keys blocks, heads, mlp) -> a PruneConfig.

    Example:
        >>> parse_spec("vision_encoder:mlp=0.2,blocks=1")
        PruneConfig(version=1, blocks=1, heads=0.0, mlp=0.2, component='vision_encoder')
    """
    component, _, body = spec.rpartition(":")
    values: dict[str, Any] = {"component": component or "text_decoder"}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        kind = {"blocks": int, "heads": float, "mlp": float}.get(key.strip())
        try:
            values[key.strip()] = kind(value)  # type: ignore[misc]
        except (TypeError, ValueError):
            raise InputError(
                f"--prune {spec!r}: {item!r} is not KEY=VALUE with KEY one of blocks (a count), heads, mlp (fractions)"
            ) from None
    return PruneConfig(**values)


def _count(flag: str, fraction: float, total: int, unit: str) -> int:
    n = round(fraction * total)
    if not 1 <= n < total:
        raise InputError(
            f"{flag} {fraction:g} removes {n} of {total} {unit} per layer; allowed: fractions that remove 1 to {total - 1}"
        )
    return n


def _counts(config: PruneConfig, dec: Stack) -> dict[str, int]:
    """How many blocks / KV groups per layer / channels per layer to remove, checked before any work."""
    where = "" if dec.component == "text_decoder" else f" of the {dec.component}"
    candidates = len(dec.layers) - dec.protected_tail
    if config.blocks and config.blocks >= candidates:
        name = "decoder" if dec.component == "text_decoder" else dec.component
        why = f", the last {dec.protected_tail} protected ({_protected_why})" if dec.protected_tail else ""
        allowed = f"1 to {candidates - 1}" if candidates > 1 else "none"
        raise InputError(f"--blocks {config.blocks}: the {name} has {len(dec.layers)} blocks{why}; allowed: {allowed}")
    if config.heads and not dec.layout.heads:
        raise InputError(
            f"--heads on the {dec.component}: its attention derives head_dim from hidden_size / heads, so fewer heads would not load back; allowed there: --blocks, --mlp"
        )
    counts = {"blocks": config.blocks}
    counts["heads"] = _count("--heads", config.heads, dec.kv_heads, "KV head groups") if config.heads else 0
    counts["mlp"] = _count("--mlp", config.mlp, dec.width, f"MLP channels{where}") if config.mlp else 0
    return counts


_protected_why = "LLaVA reads the tower's hidden states at vision_feature_layer, counted from the end"


def _lowest(scores: Sequence[float] | torch.Tensor, n: int) -> list[int]:
    return sorted(torch.as_tensor(scores).argsort()[:n].tolist())


def _share(removed: Sequence[float], kept: Sequence[float]) -> Share:
    """Mean score of what went and of what stayed, and the share of the summed score that went."""
    total = sum(removed) + sum(kept)
    return Share(
        removed_mean=round(sum(removed) / len(removed), 6),
        kept_mean=round(sum(kept) / len(kept), 6),
        removed_share=round(sum(removed) / total, 6) if total else 0.0,
    )


def _blocks(dec: Stack, n: int, calls: list, advance: Callable[[], None]) -> PruneStage:
    scores = importance.block_scores(dec, calls, advance)
    candidates = len(scores) - dec.protected_tail
    remove = _lowest(scores[:candidates], n)
    drop_blocks(dec, remove)
    return PruneStage(
        granularity="blocks",
        count=n,
        removed=tuple(remove),
        scores=tuple(round(s, 6) for s in scores),
        summary=_share([scores[i] for i in remove], [s for i, s in enumerate(scores) if i not in remove]),
        why="lowest 1 - cos(block input, block output) on the calibration data: these blocks change the residual stream least"
        + (f"; the last {dec.protected_tail} kept ({_protected_why})" if dec.protected_tail else ""),
    )


def _heads(dec: Stack, n: int, calls: list, advance: Callable[[], None]) -> PruneStage:
    scores = importance.kv_group_scores(dec, calls, advance)
    removed = {i: _lowest(s, n) for i, s in enumerate(scores)}
    keep_kv_groups(dec, {i: sorted(set(range(len(s))) - set(removed[i])) for i, s in enumerate(scores)})
    flat = [(v, j in removed[i]) for i, s in enumerate(scores) for j, v in enumerate(s)]
    return PruneStage(
        granularity="heads",
        count=n,
        removed={str(i): tuple(r) for i, r in removed.items()},
        scores={str(i): tuple(round(v, 6) for v in s) for i, s in enumerate(scores)},
        summary=_share([v for v, r in flat if r], [v for v, r in flat if not r]),
        why="lowest mean norm of what a KV group's query heads write through o_proj; a KV head goes with all its query heads (grouped-query attention)",
    )


def _mlp(dec: Stack, n: int, calls: list, advance: Callable[[], None]) -> PruneStage:
    scores = importance.channel_scores(dec, calls, advance)
    removed = {i: _lowest(s, n) for i, s in enumerate(scores)}
    kept = {i: sorted(set(range(len(s))) - set(removed[i])) for i, s in enumerate(scores)}
    keep_channels(dec, kept)
    return PruneStage(
        granularity="mlp",
        count=n,
        removed={str(i): tuple(r) for i, r in removed.items()},
        # every removed channel's score, and the weakest kept one: the margin of the cut
        scores={
            str(i): ChannelScores(
                removed=tuple(round(float(s[j]), 6) for j in removed[i]),
                lowest_kept=round(float(s.sort().values[n]), 6),
            )
            for i, s in enumerate(scores)
        },
        summary=_share(
            torch.cat([s[removed[i]] for i, s in enumerate(scores)]).tolist(),
            torch.cat([s[kept[i]] for i, s in enumerate(scores)]).tolist(),
        ),
        why="lowest |W_out[:, j]| x mean |activation_j| (activation-aware magnitude) on the calibration data",
    )


STAGES = {"blocks": _blocks, "heads": _heads, "mlp": _mlp}  # in the order they run


def _calls(
    dec: Stack, tokenizer: Any, texts: Sequence[str], model_dir: Path | None, media: str | Path | None
) -> tuple[list, str]:
    if dec.component == "text_decoder" and not getattr(dec.model.config, "is_encoder_decoder", False):
        return text_calls(dec.model, tokenizer, texts), f"{len(texts)} texts"
    assert model_dir is not None, (
        "encoders (and an encoder-decoder's text decoder) are scored through their family's split, found from the checkpoint directory"
    )
    if dec.component == "text_decoder":
        return cross_text_calls(dec.model, model_dir, tokenizer, texts, media)
    return media_calls(dec.model, model_dir, dec.component, media)


def prune_model(
    model: Any,
    tokenizer: Any,
    config: PruneConfig | Sequence[PruneConfig],
    texts: Sequence[str],
    progress: Progress | None = None,
    model_dir: Path | None = None,
    media: str | Path | None = None,
    calls: Sequence[Any] | None = None,
    find: Callable[[Any, str], Stack] = find_stack,
) -> Pruning:
    """Prune a loaded model in place on calibration `texts` (and, for encoders, the images or audio
    under `media`, fed through the family's export units found from `model_dir`); returns the report.
    `calls` replaces the text decoder's calibration: callables that each run `model` on one sample
    (a multimodal model's questions with their media rows spliced in, say). `find` gives a
    component's stack in `model` (a family's `prunable.stack`; by default found by shape).

    Example:
        >>> report = prune_model(model, tokenizer, PruneConfig(mlp=0.3), ["Some English text."])  # doctest: +SKIP
        >>> report.parameters.after < report.parameters.before                                 # doctest: +SKIP
        True
    """
    configs = [config] if isinstance(config, PruneConfig) else list(config)
    if len({c.component for c in configs}) < len(configs):
        raise InputError(f"one prune setting per component; got {', '.join(c.component for c in configs)}")
    plan = [(c, find(model, c.component)) for c in configs]
    plan = [(c, dec, _counts(c, dec)) for c, dec in plan]  # every count checked before any work
    before = count_parameters(model)
    stages, calibration = [], {}
    for c, dec, counts in plan:
        component_before = count_parameters(dec.body)
        if calls is not None and c.component == "text_decoder":
            stage_calls, calibration[c.component] = list(calls), f"{len(calls)} samples given by the caller"
        else:
            stage_calls, calibration[c.component] = _calls(dec, tokenizer, texts, model_dir, media)
        for name, stage in STAGES.items():
            if not counts[name]:
                continue
            step = counter(progress, f"scoring {c.component} {name}", len(stage_calls))
            done = stage(dec, counts[name], stage_calls, step)
            stages.append(
                dataclasses.replace(
                    done, component=c.component, parameters_removed=component_before - count_parameters(dec.body)
                )
            )
            component_before = count_parameters(dec.body)
    after = count_parameters(model)
    return Pruning(
        version=1,
        architecture=type(model).__name__,
        config=tuple(dataclasses.asdict(c) for c in configs),
        calibration=PruneCalibration(
            samples=len(texts),
            tokens=sum(len(tokenizer(t)["input_ids"][: importance.MAX_TOKENS]) for t in texts),
            items=calibration,
        ),
        uniform=UNIFORM,
        parameters=Parameters(before=before, after=after, removed=before - after),
        stages=tuple(stages),
    )


def read_report(model_dir: Path) -> Pruning | None:
    """The `pruning.json` beside a pruned checkpoint (None if it has none).

    Example:
        >>> read_report(Path("models/llava-mlp20")).parameters.removed  # doctest: +SKIP
        48216
    """
    path = model_dir / REPORT
    return from_dict(Pruning, json.loads(path.read_text()), where=str(path)) if path.is_file() else None


def bundle_report(model_dir: Path) -> Pruning | None:
    """What `prune` removed from a checkpoint, for the report of a bundle exported from it (None if unpruned):
    `pruning.json` without the scores and the pruner's own settings.

    Example:
        >>> bundle_report(Path("models/llava-mlp20")).parameters.removed  # doctest: +SKIP
        48216
    """
    r = read_report(model_dir)
    if r is None:
        return None
    stages = tuple(dataclasses.replace(s, scores=None) for s in r.stages)
    return dataclasses.replace(r, stages=stages, version=None, architecture=None, config=())


def _copy_side_files(source: Path, stage: Path) -> None:
    """Tokenizer, processor and chat-template files: everything but weights and what save_pretrained wrote."""
    for f in sorted(source.iterdir()):
        if f.is_file() and not f.name.endswith(WEIGHTS) and f.name != REPORT and not (stage / f.name).exists():
            shutil.copyfile(f, stage / f.name)


def _verifier(load: Callable[[Path], Any], parameters: int) -> Callable[[Path], None]:
    def verify(stage: Path) -> None:
        reloaded = load(stage)  # a config that disagrees with a weight's shape fails here
        assert count_parameters(reloaded) == parameters, "the saved checkpoint lost or gained parameters"

    return verify


def _check_source(
    source: Path, config: PruneConfig | Sequence[PruneConfig], recover: int, continuation: int
) -> tuple[list[PruneConfig], Any]:
    if not (source / "config.json").is_file():
        raise InputError(
            f"model directory {str(source)!r} has no config.json; expected a Hugging Face checkpoint directory"
        )
    configs = [config] if isinstance(config, PruneConfig) else list(config)
    if not configs:
        raise InputError("nothing to prune; pass --blocks N, --heads F or --mlp F")
    if recover and json.loads((source / "config.json").read_text()).get("is_encoder_decoder"):
        # distil continues calibration text with the teacher alone; this decoder reads the encoder's states too
        raise InputError(
            f"--recover {recover}: {source.name} is an encoder-decoder (Whisper) whose decoder reads audio; recovery distils decoders that read text alone; allowed: --recover 0"
        )
    return configs, RecoveryConfig(steps=recover, continuation=continuation) if recover else None


def prunable_of(source: Path, configs: Sequence[PruneConfig]) -> Prunable:
    """The checkpoint's family's `prunable` capability, its components checked against `configs`;
    a checkpoint of no registered family is tried as a transformers one (stacks checked by shape).

    Example:
        >>> prunable_of(Path("models/tiny-llama"), [PruneConfig(mlp=0.2)]).components   # doctest: +SKIP
        ('text_decoder', 'vision_encoder', 'audio_encoder')
    """
    from edgemfm.exporters import capability, find_family

    try:
        family = find_family(json.loads((source / "config.json").read_text()))
    except UnsupportedModelError:
        return TRANSFORMERS
    cap = capability(family, "prunable")
    for c in configs:
        if c.component not in cap.components:
            raise InputError(
                f"component {c.component!r} of {family.name} cannot be pruned; allowed: {', '.join(cap.components)}"
            )
    return cap


def _questions(
    source: Path, teacher: Any, data: str | Path | None, recovery: Any, progress: Any, answers: str | Path | None
) -> tuple[list[Any] | None, str | None]:
    """With a data folder of questions: the text decoder's calibration and recovery sequences (the
    questions with their media rows, continued by the unpruned model or the `answers` bundle) and what they
    are; else (None, None)."""
    if not holds_questions(data):
        return None, None
    config = recovery or RecoveryConfig()
    count = max(importance.MAX_SAMPLES, config.steps if recovery else 0)
    return question_sequences(source, teacher, Path(data), config, count, progress, answers)


def _calls_on(model: Any, sequences: Sequence[Any]) -> list[Callable[[], Any]]:
    """One forward of `model` per embedded sequence, the first MAX_SAMPLES (calibration's count)."""
    return [lambda x=x: model(inputs_embeds=x, use_cache=False) for x in sequences[: importance.MAX_SAMPLES]]


def _data_used(data: str | Path | None, texts: Sequence[str]) -> str:
    if data:
        return str(Path(data).resolve())
    return "built-in" + (f" English ({importance.BUILTIN_TEXT.name})" if texts else "")


def prune(
    model: str | Path,
    out: str | Path,
    config: PruneConfig | Sequence[PruneConfig],
    data: str | Path | None = None,
    force: bool = False,
    progress: Progress | None = None,
    recover: int = 0,
    revision: str | None = None,
    answers: str | Path | None = None,
    continuation: int = RecoveryConfig.continuation,
) -> Path:
    """Prune the checkpoint directory or Hub id `model` (at `revision`) into `out` (refused if it exists, unless `force`).

    `data`: a folder whose .txt lines calibrate the text decoder and whose images / WAV files
    calibrate the encoders (default: built-in English, drawings, synthetic clips); a data folder
    of questions (finetune's train.jsonl) calibrates and recovers the decoder on those questions
    with their media rows instead (`questions`). `recover`:
    steps of distillation from the unpruned model afterwards (0: none), on texts or questions each continued by
    `continuation` tokens: the unpruned model's, or with `answers` (a bundle of this model; with questions only)
    that bundle's greedy answers, what a speculative draft for it is scored on. `progress` hears each
    step (see `edgemfm.progress`); without it nothing is printed.

    Example:
        >>> prune("models/tiny-llama", "models/tiny-llama-b1", PruneConfig(blocks=1))  # doctest: +SKIP
        PosixPath('models/tiny-llama-b1')
    """
    from edgemfm.model_source import resolve_model
    from edgemfm.toolchain import quiet, require

    source = resolve_model(model, revision).path
    configs, recovery = _check_source(source, config, recover, continuation)
    if answers is not None and not (recovery and holds_questions(data)):
        raise InputError(
            f"--answers {answers}: a bundle's answers continue the questions of a data folder (finetune's "
            "train.jsonl) for recovery; allowed with --data QUESTIONS and --recover STEPS"
        )
    if answers is not None:
        check_answers(answers)
    bundle.check_output(out, force, inputs=(source, data))
    text_needed = recovery is not None or any(c.component == "text_decoder" for c in configs)
    texts = importance.read_texts(data) if text_needed and not holds_questions(data) else []
    require("onnx")  # torch + transformers, what pruning needs too
    cap = prunable_of(source, configs)
    with quiet():
        say(progress, f"loading {source.name}")
        pruned = cap.load(source)
        tokenizer = cap.tokenizer(source)
        teacher = cap.stack(cap.load(source), "text_decoder").model if recovery or holds_questions(data) else None
        sequences, used = _questions(source, teacher, data, recovery, progress, answers)
        report = prune_model(
            pruned,
            tokenizer,
            configs,
            texts,
            progress,
            model_dir=source,
            media=data,
            find=cap.stack,
            calls=_calls_on(cap.stack(pruned, "text_decoder").model, sequences) if sequences else None,
        )
        report = dataclasses.replace(
            report,
            source=str(source.resolve()),
            calibration=dataclasses.replace(report.calibration, data=used or _data_used(data, texts)),
            recovery=(
                distil(
                    cap.stack(pruned, "text_decoder").model,  # the causal LM that holds the decoder
                    teacher,
                    tokenizer,
                    texts,
                    recovery,
                    sequences=sequences,
                    progress=progress,
                )
                if recovery is not None
                else f"not run; pass --recover STEPS to distil from {source.name}"
            ),
        )
        say(progress, "saving")
        with bundle.staging(
            out, force, verify=_verifier(cap.load, report.parameters.after), inputs=(source, data)
        ) as stage:
            cap.save(pruned, stage)
            _copy_side_files(source, stage)
            (stage / REPORT).write_text(json.dumps(to_dict(report), indent=1) + "\n")
    return Path(out)
