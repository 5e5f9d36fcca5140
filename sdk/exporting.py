"""`export`: a model checkpoint + a device profile -> a verified bundle directory.

Example:
    >>> import edgemfm
    >>> path = edgemfm.export(device="jetson", out="bundles/default-jetson")  # doctest: +SKIP
    >>> sorted(p.name for p in path.iterdir())                               # doctest: +SKIP
    ['manifest.json', 'text_decoder.onnx', 'token_embedding.onnx', 'tokenizer.json', 'vision_encoder.onnx']
"""

from __future__ import annotations

import importlib
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from edgemfm import arguments, bundle, leftovers
from edgemfm.errors import InputError
from edgemfm.manifest import BUNDLE_KIND, SCHEMA_VERSION, Manifest, StreamingSettings
from edgemfm.profiles import DeviceProfile, load_profile
from edgemfm.quantizers import presets
from edgemfm.recipe import FLOAT32
from edgemfm.toolchain import quiet, require

# Bundle format -> its writer module (a `write_units` function); the profile lists what its device runs.
WRITERS = {"onnx": "edgemfm.exporters.onnx", "pte": "edgemfm.exporters.executorch"}


def _check_model(model: str | Path | None) -> None:
    if model is None:
        return
    path = Path(model)
    if not path.is_dir():
        raise InputError(f"model directory {str(path)!r} does not exist")
    if not (path / "config.json").is_file():
        raise InputError(f"{str(path)!r} has no config.json; expected a Hugging Face checkpoint directory")


def _model_id(model: str | Path | None) -> str:
    if model is None:
        from edgemfm.exporters import demo_sources

        return demo_sources.MODEL_ID
    return Path(model).resolve().name


def _model_dir(model: str | Path | None, scratch: Path) -> tuple[Path, str]:
    """The checkpoint directory and model id; the built-in demo model when `model` is None."""
    if model is None:
        from edgemfm.exporters import demo_sources

        return demo_sources.build_default(scratch / demo_sources.MODEL_ID), demo_sources.MODEL_ID
    _check_model(model)
    return Path(model), _model_id(model)


def _load(family, model_dir: Path):
    """The family's model from `model_dir`; a checkpoint without its weights is the user's mistake, named."""
    try:
        return family.load(model_dir)
    except OSError as e:  # transformers: "no file named model.safetensors ..."
        reason = str(e).splitlines()[0][:300]
        raise InputError(
            f"cannot load the checkpoint in {str(model_dir)!r} ({reason}); allowed: a checkpoint folder with its weights"
        ) from None


def _read_config(model_dir: Path) -> dict:
    """config.json as a dict, or an InputError naming the file (invalid JSON, a list, unreadable)."""
    path = model_dir / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{str(path)!r} is not valid JSON ({e}); allowed: a Hugging Face config object") from None
    if not isinstance(config, dict):
        raise InputError(
            f"{str(path)!r} holds a {type(config).__name__}; allowed: a JSON object (a Hugging Face config)"
        )
    return config


def _streaming(profile: StreamingSettings, max_seq_len: int) -> StreamingSettings:
    """The profile's streaming settings for a bundle of `max_seq_len` positions: a smaller
    --max-seq-len shrinks the sink tokens and prefill chunk with it, so the bundle loads."""
    sinks = min(profile.sink_tokens, max_seq_len - 1)
    chunk = min(profile.prefill_chunk, max_seq_len - sinks)
    return StreamingSettings(
        **{**vars(profile), "max_seq_len": max_seq_len, "sink_tokens": sinks, "prefill_chunk": chunk}
    )


def _check_options(
    profile: DeviceProfile,
    format: str,
    precision: str,
    calibration: str | Path | None,
    memory_budget_mb: float | None,
    max_seq_len: int | None,
) -> int:
    """Check the options against the profile; returns the max sequence length to build for."""
    formats = [f for f in WRITERS if f in profile.formats]
    if format not in formats:
        raise InputError(f"format {format!r} is not available for {profile.name}; allowed: {', '.join(formats)}")
    if format == "pte" and precision != "fp32":  # the quantizers rewrite ONNX graphs
        raise InputError(f"precision {precision!r} is not available for --format pte yet; allowed: fp32")
    if precision != "auto":
        presets.recipe_for(profile, precision)  # refuses an unknown precision or one without kernels here
    if calibration is not None and not Path(calibration).is_dir():
        raise InputError(f"calibration folder {str(calibration)!r} does not exist")
    if memory_budget_mb is not None:
        arguments.number("memory budget (MB)", memory_budget_mb, low=0, above=True)
    limit = profile.streaming.max_seq_len
    if max_seq_len is not None and not 1 <= max_seq_len <= limit:
        raise InputError(f"max sequence length {max_seq_len} is out of range for {profile.name}; allowed: 1 to {limit}")
    return limit if max_seq_len is None else max_seq_len


def export(
    model: str | Path | None = None,
    device: str = "host",
    out: str | Path | None = None,
    format: str = "onnx",
    precision: str = "fp32",
    force: bool = False,
    progress: bool = True,
    calibration: str | Path | None = None,
    memory_budget_mb: float | None = None,
    accuracy_tolerance_db: float | None = None,
    max_seq_len: int | None = None,
    fuse: bool = True,
    prune: Sequence[str] = (),
    recover: int = 0,
) -> Path:
    """Export a checkpoint directory (or the built-in default model) into a bundle for `device`.

    `precision` is fp32, fp16, int8, int4 or auto (bits per layer chosen under `memory_budget_mb`
    and `accuracy_tolerance_db`, the least SQNR of each component's output); `calibration` is a
    folder of images and prompt .txt files (default: a built-in set).

    Example:
        >>> edgemfm.export("models/llava-tiny", device="pi5", out="llava-pi5", precision="int4")  # doctest: +SKIP
        PosixPath('llava-pi5')

    `max_seq_len` (default: the profile's `streaming.max_seq_len`, and at most that) sizes the
    static KV cache of a pte program: the prompt, its media rows and the answer must fit in it.

    `prune` (specs like "mlp=0.2" or "vision_encoder:blocks=1,mlp=0.3", see `edgemfm prune`)
    prunes the checkpoint first, calibrated on `calibration`, then distils it for `recover` steps;
    the report's "pruning" says what went, where and why.
    """
    profile = load_profile(device)
    if accuracy_tolerance_db is not None:
        arguments.number("accuracy tolerance (dB)", accuracy_tolerance_db)
    max_seq_len = _check_options(profile, format, precision, calibration, memory_budget_mb, max_seq_len)
    require(format)
    from edgemfm.quantizers.pruning import parse_spec

    prune_configs = [parse_spec(spec) for spec in prune]  # a bad spec fails before the slow part
    from rich.progress import Progress

    _check_model(model)
    out = Path(out) if out is not None else Path(f"{_model_id(model)}-{profile.name}")
    inputs = (model, calibration)
    bundle.check_output(out, force, inputs)  # before the slow part, and before anything is touched
    leftovers.sweep_for(out)
    with (
        leftovers.terminating_unwinds(),
        tempfile.TemporaryDirectory(prefix=leftovers.owned(leftovers.SCRATCH_PREFIX)) as scratch,
        quiet(),
    ):
        from edgemfm.exporters import find_family
        from edgemfm.quantizers.pruning import bundle_report

        model_dir, model_id = _model_dir(model, Path(scratch))
        if prune_configs:
            from edgemfm.quantizers.pruning import prune as prune_checkpoint

            model_dir = prune_checkpoint(
                model_dir, Path(scratch) / "pruned", prune_configs, calibration, progress=progress, recover=recover
            )
        family = find_family(_read_config(model_dir))
        with bundle.staging(out, force, inputs=inputs) as stage, Progress(transient=True, disable=not progress) as bar:
            task = bar.add_task(f"loading {model_id}", total=None)
            split = family.split(_load(family, model_dir), model_dir)
            bar.update(task, total=None, completed=0)
            writer = importlib.import_module(WRITERS[format])
            components, parity, written = writer.write_units(
                split.units,
                stage,
                family.tolerance,
                lambda step: bar.update(task, description=step),
                max_seq_len=max_seq_len,
                fuse=fuse,
            )
            shutil.copyfile(split.tokenizer_file, stage / split.tokenizer.file)
            manifest = Manifest(
                schema_version=SCHEMA_VERSION,
                kind=BUNDLE_KIND,
                model_id=model_id,
                family=family.name,
                profile=profile.name,
                recipe=FLOAT32,
                components=components,
                files={},
                tokenizer=split.tokenizer,
                prompt=split.prompt,
                preprocess=split.preprocess,
                generation=split.generation,
                streaming=_streaming(profile.streaming, max_seq_len),
                report={
                    "precision": precision,
                    "parity": parity,
                    "float_units": {n: "fp32 export" for n in components},
                    **written,
                    **split.report,
                    **bundle_report(model_dir),
                },
            )
            from edgemfm.quantizers.quantize import DEFAULT_TOLERANCE_DB, quantize

            manifest = quantize(
                stage,
                manifest,
                profile,
                precision,
                Path(scratch) / "quantize",
                calibration,
                memory_budget_mb,
                DEFAULT_TOLERANCE_DB if accuracy_tolerance_db is None else accuracy_tolerance_db,
                bar,
            )
            bundle.seal(stage, manifest)
    return out
