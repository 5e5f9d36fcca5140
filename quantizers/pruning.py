"""`prune`: a checkpoint + how much to remove -> a dense, smaller checkpoint with a consistent config.

Three granularities, applied in this order, each scored on calibration text against the model as
the previous stage left it (see `importance` for the scores, `structure` for the slicing):

- `blocks=N`:    remove the N decoder blocks that turn their input the least;
- `heads=F`:     remove the fraction F of KV groups (each with all its query heads) in every layer;
- `mlp=F`:       remove the fraction F of MLP intermediate channels in every layer.

Every layer loses the same count of heads and channels (the least important in *that* layer):
a transformers config holds one `num_key_value_heads` and one `intermediate_size` per model, so
per-layer sizes could not be loaded back. The output is written atomically with `pruning.json`
(what was removed, where, the scores and why) beside the weights and the tokenizer/processor files.

Recovery (a short fine-tune that wins back quality) is `edgemfm finetune` on the output
directory; pruning.json names the unpruned source to distil from.

Example:
    >>> from edgemfm.quantizers.pruning import PruneConfig, prune
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
from edgemfm.quantizers import importance
from edgemfm.quantizers.structure import (
    SUPPORTED,
    Decoder,
    count_parameters,
    drop_blocks,
    find_decoder,
    keep_channels,
    keep_kv_groups,
)

REPORT = "pruning.json"
WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".index.json")  # never copied: rewritten
UNIFORM = "same count removed in every layer: a transformers config holds one head count and one MLP width per model"


@dataclass(frozen=True)
class PruneConfig:
    """What to remove. Zero means: leave that granularity alone."""

    version: int = 1
    blocks: int = 0  # whole decoder blocks to remove
    heads: float = 0.0  # fraction of KV groups (with their query heads) to remove in every layer
    mlp: float = 0.0  # fraction of MLP intermediate channels to remove in every layer

    def __post_init__(self) -> None:
        if self.blocks < 0:
            raise InputError(f"--blocks {self.blocks}: the number of blocks to remove must be 1 or more")
        for flag, value in (("--heads", self.heads), ("--mlp", self.mlp)):
            if value != 0 and not 0 < value < 1:
                raise InputError(f"{flag} {value:g} is outside (0, 1); give the fraction to remove, e.g. 0.2")
        if not (self.blocks or self.heads or self.mlp):
            raise InputError("nothing to prune; pass --blocks N, --heads F or --mlp F")


def _count(flag: str, fraction: float, total: int, unit: str) -> int:
    n = round(fraction * total)
    if not 1 <= n < total:
        raise InputError(f"{flag} {fraction:g} removes {n} of {total} {unit} per layer; allowed: fractions that remove 1 to {total - 1}")
    return n


def _counts(config: PruneConfig, dec: Decoder) -> dict[str, int]:
    """How many blocks / KV groups per layer / channels per layer to remove, checked before any work."""
    layers = len(dec.layers)
    if config.blocks and config.blocks >= layers:
        raise InputError(f"--blocks {config.blocks}: the decoder has {layers} blocks; allowed: 1 to {layers - 1}")
    counts = {"blocks": config.blocks}
    counts["heads"] = _count("--heads", config.heads, dec.kv_heads, "KV head groups") if config.heads else 0
    counts["mlp"] = _count("--mlp", config.mlp, dec.config.intermediate_size, "MLP channels") if config.mlp else 0
    return counts


def _lowest(scores: Sequence[float] | torch.Tensor, n: int) -> list[int]:
    return sorted(torch.as_tensor(scores).argsort()[:n].tolist())


def _blocks(dec: Decoder, n: int, samples: list, advance: Callable[[], None]) -> dict[str, Any]:
    scores = importance.block_scores(dec, samples, advance)
    remove = _lowest(scores, n)
    drop_blocks(dec, remove)
    return {
        "granularity": "blocks", "removed": remove, "scores": [round(s, 6) for s in scores],
        "why": "lowest 1 - cos(block input, block output) on the calibration tokens: these blocks change the residual stream least",
    }


def _heads(dec: Decoder, n: int, samples: list, advance: Callable[[], None]) -> dict[str, Any]:
    scores = importance.kv_group_scores(dec, samples, advance)
    removed = {i: _lowest(s, n) for i, s in enumerate(scores)}
    keep_kv_groups(dec, {i: sorted(set(range(len(s))) - set(removed[i])) for i, s in enumerate(scores)})
    return {
        "granularity": "heads", "removed": {str(i): r for i, r in removed.items()},
        "scores": {str(i): [round(v, 6) for v in s] for i, s in enumerate(scores)},
        "why": "lowest mean norm of what a KV group's query heads write through o_proj; a KV head goes with all its query heads (grouped-query attention)",
    }


def _mlp(dec: Decoder, n: int, samples: list, advance: Callable[[], None]) -> dict[str, Any]:
    scores = importance.channel_scores(dec, samples, advance)
    removed = {i: _lowest(s, n) for i, s in enumerate(scores)}
    keep_channels(dec, {i: sorted(set(range(len(s))) - set(removed[i])) for i, s in enumerate(scores)})
    return {
        "granularity": "mlp", "removed": {str(i): r for i, r in removed.items()},
        # every removed channel's score, and the weakest kept one: the margin of the cut
        "scores": {str(i): {"removed": [round(float(s[j]), 6) for j in removed[i]], "lowest_kept": round(float(s.sort().values[n]), 6)} for i, s in enumerate(scores)},
        "why": "lowest |W_down[:, j]| x mean |activation_j| (activation-aware magnitude) on the calibration tokens",
    }


STAGES = {"blocks": _blocks, "heads": _heads, "mlp": _mlp}  # in the order they run


def prune_model(model: Any, tokenizer: Any, config: PruneConfig, texts: Sequence[str], progress: Any = None) -> dict[str, Any]:
    """Prune a loaded model in place on calibration `texts`; returns the report.

    Example:
        >>> report = prune_model(model, tokenizer, PruneConfig(mlp=0.3), ["Some English text."])  # doctest: +SKIP
        >>> report["parameters"]["after"] < report["parameters"]["before"]                     # doctest: +SKIP
        True
    """
    dec = find_decoder(model)
    counts = _counts(config, dec)
    samples = importance.calibration_samples(tokenizer, texts)
    before = count_parameters(model)
    stages = []
    for name, stage in STAGES.items():
        if not counts[name]:
            continue
        task = progress.add_task(f"scoring {name}", total=len(samples)) if progress else None
        step = (lambda: progress.advance(task)) if progress else (lambda: None)
        stages.append({**stage(dec, counts[name], samples, step), "count": counts[name]})
    after = count_parameters(model)
    return {
        "version": 1,
        "architecture": type(model).__name__,
        "config": dataclasses.asdict(config),
        "calibration": {"samples": len(samples), "tokens": sum(s.shape[1] for s in samples)},
        "uniform": UNIFORM,
        "parameters": {"before": before, "after": after, "removed": before - after},
        "stages": stages,
    }


def bundle_report(model_dir: Path) -> dict[str, Any]:
    """What `prune` removed from a checkpoint, for the report of a bundle exported from it ({} if unpruned).

    Example:
        >>> bundle_report(Path("models/llava-mlp20"))["pruning"]["parameters"]["removed"]  # doctest: +SKIP
        48216
    """
    path = model_dir / REPORT
    if not path.is_file():
        return {}
    r = json.loads(path.read_text())
    stages = [{k: s[k] for k in ("granularity", "count", "removed", "why")} for s in r["stages"]]
    return {"pruning": {"source": r["source"], "parameters": r["parameters"], "uniform": r["uniform"], "stages": stages}}


def load_model(model_dir: Path) -> Any:
    """The checkpoint's own architecture class, loaded in its saved dtype; its decoder must be Llama-style."""
    import transformers

    config = json.loads((model_dir / "config.json").read_text())
    arch = (config.get("architectures") or [config.get("model_type", "<none>")])[0]
    cls = getattr(transformers, arch, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise UnsupportedModelError(arch, SUPPORTED)
    model = cls.from_pretrained(model_dir, dtype="auto").eval()
    find_decoder(model)  # fail on a model without Llama-style layers before anything else is read
    return model


def _copy_side_files(source: Path, stage: Path) -> None:
    """Tokenizer, processor and chat-template files: everything but weights and what save_pretrained wrote."""
    for f in sorted(source.iterdir()):
        if f.is_file() and not f.name.endswith(WEIGHTS) and f.name != REPORT and not (stage / f.name).exists():
            shutil.copyfile(f, stage / f.name)


def _verifier(cls: type, parameters: int) -> Callable[[Path], None]:
    def verify(stage: Path) -> None:
        reloaded = cls.from_pretrained(stage, dtype="auto")  # a config that disagrees with a weight's shape fails here
        assert count_parameters(reloaded) == parameters, "the saved checkpoint lost or gained parameters"

    return verify


def prune(model: str | Path, out: str | Path, config: PruneConfig, data: str | Path | None = None, force: bool = False, progress: bool = True) -> Path:
    """Prune the checkpoint directory `model` into `out` (refused if it exists, unless `force`).

    Example:
        >>> prune("models/tiny-llama", "models/tiny-llama-b1", PruneConfig(blocks=1))  # doctest: +SKIP
        PosixPath('models/tiny-llama-b1')
    """
    from rich.progress import Progress

    from edgemfm.toolchain import quiet, require

    source = Path(model)
    if not (source / "config.json").is_file():
        raise InputError(f"model directory {str(source)!r} has no config.json; expected a Hugging Face checkpoint directory")
    bundle.check_output(out, force)
    texts = importance.read_texts(data)
    require("onnx")  # torch + transformers, what pruning needs too
    with quiet(), Progress(transient=True, disable=not progress) as bar:
        from transformers import AutoTokenizer

        loading = bar.add_task(f"loading {source.name}", total=None)
        pruned = load_model(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
        bar.remove_task(loading)
        report = prune_model(pruned, tokenizer, config, texts, bar)
        report["source"] = str(source.resolve())
        report["calibration"]["data"] = str(Path(data).resolve()) if data else f"built-in English ({importance.BUILTIN_TEXT.name})"
        report["recovery"] = f"not run; recover with `edgemfm finetune` on this directory (LoRA, or distillation from {source.name})"
        bar.add_task("saving", total=None)
        with bundle.staging(out, force, verify=_verifier(type(pruned), report["parameters"]["after"])) as stage:
            pruned.save_pretrained(stage)
            _copy_side_files(source, stage)
            (stage / REPORT).write_text(json.dumps(report, indent=1) + "\n")
    return Path(out)
