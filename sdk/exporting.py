"""`export`: a model checkpoint + a device profile -> a verified bundle directory.

Example:
    >>> import edgemfm
    >>> path = edgemfm.export(edgemfm.ExportConfig(device="jetson", out="bundles/default-jetson"))  # doctest: +SKIP
    >>> sorted(p.name for p in path.iterdir())                                                     # doctest: +SKIP
    ['manifest.json', 'text_decoder.onnx', 'token_embedding.onnx', 'tokenizer.json', 'vision_encoder.onnx']
"""

from __future__ import annotations

import importlib
import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgemfm import bundle, leftovers
from edgemfm.configs import ExportConfig, QuantizeConfig
from edgemfm.errors import InputError
from edgemfm.manifest import BUNDLE_KIND, SCHEMA_VERSION, Manifest, StreamingSettings
from edgemfm.model_source import cached_model, load_checkpoint, model_id, resolve_model
from edgemfm.profiles import DeviceProfile, load_profile
from edgemfm.progress import Progress, say
from edgemfm.quantizers import presets
from edgemfm.recipe import FLOAT32
from edgemfm.report import Report
from edgemfm.toolchain import quiet, require

# Bundle format -> its writer module (a `write_units` function); the profile lists what its device runs.
WRITERS = {"onnx": "edgemfm.exporters.onnx", "pte": "edgemfm.exporters.executorch"}


def _model_id(model: str | None) -> str:
    """The model id a bundle records (`model_source.model_id`); the built-in demo model's when `model` is None."""
    if model is None:
        from edgemfm.exporters import demo_sources

        return demo_sources.MODEL_ID
    return model_id(model)


def _check_model(model: str | None, revision: str | None) -> None:
    """A missing folder, or a Hub id not in the cache offline, fails before the slow part; nothing is
    fetched here (`--dry-run` stops after this), a Hub id not cached is fetched when the export starts."""
    if model is None and revision is not None:
        raise InputError(f"--revision {revision!r} needs --model (a Hugging Face Hub id)")
    if model is not None:
        cached_model(model, revision)


def _model_dir(model: str | None, scratch: Path, revision: str | None) -> Path:
    """The checkpoint directory (a Hub id's snapshot in the Hugging Face cache); the built-in demo
    model, built under `scratch`, when `model` is None."""
    if model is None:
        from edgemfm.exporters import demo_sources

        return demo_sources.build_default(scratch / demo_sources.MODEL_ID)
    return resolve_model(model, revision).path


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


def _check_options(profile: DeviceProfile, config: ExportConfig) -> int:
    """Check the options against the profile; returns the max sequence length to build for."""
    formats = [f for f in WRITERS if f in profile.formats]
    if config.format not in formats:
        raise InputError(f"format {config.format!r} is not available for {profile.name}; allowed: {', '.join(formats)}")
    if config.format == "pte":  # quantized in PyTorch before capture (exporters/pte_quantize.py), not as graphs
        from edgemfm.exporters.pte_quantize import check_precision

        check_precision(profile, config.precision)  # refuses a precision the pte preset cannot run, naming those it can
    elif config.precision != "auto":
        presets.recipe_for(profile, config.precision)  # refuses an unknown precision or one without kernels here
    if config.calibration is not None and not Path(config.calibration).is_dir():
        raise InputError(f"calibration folder {config.calibration!r} does not exist")
    if config.kv_cache == "int8":
        _check_int8_cache(profile, config)
    if config.kernels == "edgemfm":
        _check_kernels(profile, config)
    limit, asked = profile.streaming.max_seq_len, config.max_seq_len
    if asked is not None and not 1 <= asked <= limit:
        raise InputError(f"max sequence length {asked} is out of range for {profile.name}; allowed: 1 to {limit}")
    return limit if asked is None else asked


def _check_int8_cache(profile: DeviceProfile, config: ExportConfig) -> None:
    """--kv-cache int8: for onnx, ONNX Runtime's GroupQueryAttention cache (fused, run on the CPU); for pte,
    ExecuTorch's per-token int8 cache (exporters/llm_ops.py), which the decoder refuses where it cannot run."""
    from edgemfm.quantizers.kv_cache import check_device

    if config.format == "pte":
        return
    if not config.fuse:
        raise InputError("--kv-cache int8 needs the fused GroupQueryAttention; allowed: without --no-fuse")
    check_device(profile)


def _check_kernels(profile: DeviceProfile, config: ExportConfig) -> None:
    """--kernels edgemfm: an onnx bundle for a device whose providers are the CPU's (they are CPU custom ops: beside
    CUDA or NNAPI they would pull the decoder's matmuls and attention back to the CPU). Every precision such a device
    runs (fp32, int8, int4, auto) has matmuls for the kernels, with or without the fused attention."""
    from edgemfm.profiles import require_cpu

    if config.format != "onnx":
        raise InputError(f"--kernels edgemfm with format {config.format!r} is not supported; allowed: onnx")
    require_cpu(profile, "--kernels edgemfm are CPU kernels run by the edgemfm runtime", "--kernels ort")


def resolve(config: ExportConfig) -> ExportConfig:
    """`config` checked against its device profile, with what depends on it filled in (the
    profile's own name for an alias, the output directory, the sequence length): what
    `edgemfm export --dry-run` prints.

    Example:
        >>> resolve(ExportConfig(device="pi5")).out  # doctest: +SKIP
        'edgemfm-demo-raspberry-pi-5-8gb'
    """
    profile = load_profile(config.device)
    max_seq_len = _check_options(profile, config)
    _check_model(config.model, config.revision)
    out = config.out if config.out is not None else f"{_model_id(config.model)}-{profile.name}"
    return replace(config, device=profile.name, out=out, max_seq_len=max_seq_len)


def export(config: ExportConfig, progress: Progress | None = None) -> Path:
    """Export a checkpoint directory or Hub id (or the built-in default model) into a bundle for `config.device`.

    A Hub id (`"HuggingFaceTB/SmolVLM-256M-Instruct"`) is fetched into, or read from, the Hugging
    Face cache (`HF_HOME`, `HF_HUB_OFFLINE`); `config.revision` picks a branch, tag or commit.

    `config.precision` is fp32, fp16, int8, int4 or auto (bits per layer chosen under
    `memory_budget_mb` and `accuracy_tolerance_db`, the least SQNR of each component's output);
    `calibration` is a folder of images and prompt .txt files (default: a built-in set).
    `max_seq_len` (default: the profile's `streaming.max_seq_len`, and at most that) sizes the
    static KV cache of a pte program (the prompt, its media rows and the answer must fit in it) and
    an onnx decoder's rotary table (a bundle loads with a cache of at most that many positions).
    `prune` (specs like "mlp=0.2" or "vision_encoder:blocks=1,mlp=0.3", see `edgemfm prune`)
    prunes the checkpoint first, calibrated on `calibration`, then distils it for `recover` steps;
    the report's "pruning" says what went, where and why. `kv_cache` "int8" gives the onnx decoder's
    GroupQueryAttention an int8 cache with static scales calibrated on `calibration` (quantizers/kv_cache.py),
    and a pte decoder an int8 cache with a scale per token and head (exporters/llm_ops.py). `kernels` "edgemfm"
    moves an onnx bundle's int4, int8 and fp32 matmuls and its decoder's attention to edgemfm's own kernels
    (runtimes/kernels/, built on the device by the edgemfm runtime; docs/quantization.md).
    `progress` hears what is happening
    (see `edgemfm.progress`); without it nothing is printed.

    Example:
        >>> config = ExportConfig(model="models/llava-tiny", device="pi5", out="llava-pi5", precision="int4")
        >>> edgemfm.export(config)  # doctest: +SKIP
        PosixPath('llava-pi5')
    """
    config = resolve(config)
    profile = load_profile(config.device)
    require(config.format)
    from edgemfm.pruners.prune import parse_spec

    prune_configs = [parse_spec(spec) for spec in config.prune]  # a bad spec fails before the slow part
    if config.lookahead is not None and not Path(config.lookahead).is_file():
        raise InputError(f"--lookahead {config.lookahead}: no such file; allowed: a head `edgemfm lookahead` wrote")
    inputs = (config.model, config.calibration)
    out = bundle.check_output(config.out, config.force, inputs)  # before the slow part, and before anything is touched
    leftovers.sweep_for(out)
    with (
        leftovers.terminating_unwinds(),
        tempfile.TemporaryDirectory(prefix=leftovers.owned(leftovers.SCRATCH_PREFIX)) as scratch,
        quiet(),
    ):
        from edgemfm.exporters import find_family
        from edgemfm.exporters.visual_tokens import budget

        model_dir = _model_dir(config.model, Path(scratch), config.revision)
        if prune_configs:
            from edgemfm.pruners.prune import prune as prune_checkpoint

            model_dir = prune_checkpoint(
                model_dir,
                Path(scratch) / "pruned",
                prune_configs,
                config.calibration,
                progress=progress,
                recover=config.recover,
            )
        family = find_family(_read_config(model_dir))
        with bundle.staging(out, config.force, inputs=inputs) as stage:
            say(progress, f"loading {_model_id(config.model)}")
            import torch

            with torch.random.fork_rng(devices=[]):
                # example inputs (tracing, parity) drawn from a fixed seed: the same export reports the same parity
                # whatever ran before it in the process; the caller's RNG state is left as it was
                torch.manual_seed(0)
                split = family.split(load_checkpoint(family.load, model_dir), model_dir)
                if config.visual_tokens is not None:  # before export: calibration and parity see the cut graph
                    split = budget(family, split, config.visual_tokens)
                if config.lookahead is not None:
                    split = _with_lookahead(split, config.lookahead)
            manifest = _write_float(config, profile, family, split, model_dir, stage, progress, Path(scratch))
            from edgemfm.quantizers.quantize import quantize

            quantize_config = QuantizeConfig(
                precision=config.precision,
                calibration=config.calibration,
                memory_budget_mb=config.memory_budget_mb,
                accuracy_tolerance_db=config.accuracy_tolerance_db,
            )
            if config.format != "pte":  # a pte program was quantized as it was written
                manifest = quantize(stage, manifest, profile, quantize_config, Path(scratch) / "quantize", progress)
            if config.format != "pte" and config.precision == "fp32":
                from edgemfm.quantizers.tied_table import share_float

                manifest = share_float(stage, manifest)  # quantized graphs share theirs in quantize
            if config.kv_cache == "int8" and config.format == "onnx":  # calibrated on the finished decoder's weights
                from edgemfm.quantizers.kv_cache import quantize_kv_cache

                say(progress, "calibrating the int8 KV cache")
                manifest = quantize_kv_cache(stage, manifest, config.calibration)
            if config.draft_vocab is not None:
                from edgemfm.exporters.draft_vocab import restrict_head

                say(progress, f"cutting the head to {config.draft_vocab} tokens (a draft's)")
                manifest = restrict_head(stage, manifest, config.draft_vocab)
            if config.kernels == "edgemfm":  # last: the steps above read the graphs with stock ONNX Runtime
                from edgemfm.exporters import native_attention, native_matmul
                from edgemfm.quantizers import native_int4

                say(progress, "moving the int4, int8 and fp32 matmuls and the attention to edgemfm's kernels")
                manifest = native_int4.apply(stage, native_matmul.apply(stage, manifest))
                manifest = native_attention.apply(stage, manifest)
            bundle.seal(stage, manifest)
    return out


def _with_lookahead(split: Any, path: str) -> Any:
    """The split with the lookahead head at `path` in its text decoder (exporters/lookahead.py)."""
    from edgemfm.exporters.lookahead import read_head, with_lookahead

    name = split.generation.decoder
    if name not in split.units:
        raise InputError(f"--lookahead {path}: this model has no text decoder; allowed: models with one")
    unit = split.units[name]
    head = read_head(path, unit.module)
    return replace(split, units={**split.units, name: with_lookahead(unit, head)})


def _write_float(
    config: ExportConfig,
    profile: DeviceProfile,
    family: Any,
    split: Any,
    model_dir: Path,
    stage: Path,
    progress: Progress | None,
    scratch: Path,
) -> Manifest:
    """Write the float graphs and the tokenizer into `stage`; the float bundle's manifest."""
    from edgemfm.pruners.prune import bundle_report

    writer = importlib.import_module(WRITERS[config.format])
    advance = lambda step: say(progress, step)  # noqa: E731
    recipe, quantization, floats, plan = FLOAT32, {}, {}, None
    if config.format == "pte":  # a pte program is quantized as it is written (the ONNX graphs after, by quantize)
        from edgemfm.exporters import pte_decoders
        from edgemfm.exporters.pte_encoders import ENCODERS, encoder_inputs, with_float_convs
        from edgemfm.exporters.pte_quantize import pte_recipe

        planned = None
        if config.precision == "auto":
            planned, plan = _plan_pte(config, profile, family, split, model_dir, scratch, progress)
        recipe = pte_recipe(profile, config.precision, planned)
        calibration: dict = {}
        if any(recipe.spec_for(f"{n}/*") for n in ENCODERS if n in split.units):
            calibration, floats = encoder_inputs(split, config.calibration)
        decoder_feeds = {}
        if calibration and recipe is not FLOAT32:
            say(progress, "decoding the calibration clips in float (teacher-forced feeds for the int8 decoder's judge)")
            decoder_feeds = pte_decoders.decoder_inputs(split, calibration, config.max_seq_len)
        rotation, rotated = _rotate_pte(config, profile, family, split, model_dir, scratch, progress, recipe)
        components, parity, delegation, quantization = writer.write_program(
            split.units,
            stage,
            family.tolerance,
            advance,
            max_seq_len=config.max_seq_len,
            recipe=recipe,
            calibration=calibration,
            kv_cache=config.kv_cache,
            decoder_feeds=decoder_feeds,
        )
        recipe = pte_decoders.with_float_linears(with_float_convs(recipe, quantization), quantization)
        recipe = replace(recipe, rotation=rotation)
        for name, notes in rotated.items():
            quantization[name] = replace(quantization[name], notes={**quantization[name].notes, **notes})
    else:
        components, parity, delegation = writer.write_units(
            split.units, stage, family.tolerance, advance, max_seq_len=config.max_seq_len, fuse=config.fuse
        )
    shutil.copyfile(split.tokenizer_file, stage / split.tokenizer.file)
    return Manifest(
        schema_version=SCHEMA_VERSION,
        kind=BUNDLE_KIND,
        model_id=_model_id(config.model),
        family=family.name,
        profile=profile.name,
        recipe=recipe,
        components=components,
        files={},
        tokenizer=split.tokenizer,
        prompt=split.prompt,
        preprocess=split.preprocess,
        generation=split.generation,
        streaming=_streaming(profile.streaming, config.max_seq_len),
        report=Report(
            precision=config.precision,
            parity=parity,
            float_units={n: floats.get(n, "fp32 export") for n in components if n not in quantization},
            quantization=quantization,
            delegation=delegation,
            notes=split.report.notes,
            pruning=bundle_report(model_dir),
            plan=plan,
        ),
    )


def _measuring_graphs(
    config: ExportConfig,
    profile: DeviceProfile,
    family: Any,
    split: Any,
    model_dir: Path,
    onnx_dir: Path,
    progress: Progress | None,
) -> tuple[Path, Manifest]:
    """The float ONNX graphs a pte export measures on (its planner, its rotation), written into `onnx_dir` inside
    the export's scratch; that folder and their manifest. At the profile's positions, not the program's: the
    calibration prompts are longer than a small pte cache (--max-seq-len 64), and these graphs only feed them."""
    onnx_dir.mkdir()
    measuring = replace(config, format="onnx", precision="fp32", max_seq_len=profile.streaming.max_seq_len)
    return onnx_dir, _write_float(measuring, profile, family, split, model_dir, onnx_dir, progress, onnx_dir.parent)


def _rotate_pte(
    config: ExportConfig,
    profile: DeviceProfile,
    family: Any,
    split: Any,
    model_dir: Path,
    scratch: Path,
    progress: Progress | None,
    recipe: Any,
) -> tuple[Any, dict[str, dict[str, str]]]:
    """`--format pte` at a precision exporters/pte_rotation.py is measured to help: the decoder's residual stream
    rotated where that brings its 8da8w nearer float on the ONNX path's calibration feeds (the float ONNX graphs
    written to `scratch` only to make them). The rotation for the recipe (None: not rotated) and the decoder's note
    saying what was measured, for the report."""
    from edgemfm.exporters import pte_rotation
    from edgemfm.quantizers.calibration import component_feeds

    decoder = split.generation.decoder
    if config.precision not in pte_rotation.PRECISIONS:
        return None, {}
    reason = pte_rotation.rotatable(split.units[decoder].module)
    if reason is not None:
        return None, {decoder: {decoder: f"residual stream not rotated: {reason}"}}
    onnx_dir, manifest = _measuring_graphs(
        config, profile, family, split, model_dir, scratch / "rotate-float", progress
    )
    feeds = component_feeds(onnx_dir, manifest, config.calibration)[decoder]
    shutil.rmtree(onnx_dir)
    say(progress, f"rotating {decoder}'s residual stream (measured against float at int8)")
    rotation = pte_rotation.ROTATION
    measured = pte_rotation.rotate_where_it_helps(decoder, split.units[decoder], feeds, recipe, rotation)
    return measured.kept_rotation(rotation), {decoder: {decoder: measured.note(rotation)}}


def _plan_pte(
    config: ExportConfig,
    profile: DeviceProfile,
    family: Any,
    split: Any,
    model_dir: Path,
    scratch: Path,
    progress: Progress | None,
) -> tuple[Any, Any]:
    """`--format pte --precision auto`: the float ONNX graphs written to `scratch` only for the ONNX
    planner to measure and plan the decoder and the token table on (its judge, its plan); the recipe
    and the plan's report. The encoders are not planned: a pte program's are static int8 under every precision."""
    from edgemfm.quantizers.quantize import plan

    onnx_dir, manifest = _measuring_graphs(config, profile, family, split, model_dir, scratch / "plan-float", progress)
    g = manifest.generation
    settings = QuantizeConfig(
        precision="auto",
        calibration=config.calibration,
        memory_budget_mb=config.memory_budget_mb,
        accuracy_tolerance_db=config.accuracy_tolerance_db,
    )
    planned = plan(onnx_dir, manifest, profile, settings, scratch / "plan", {g.decoder, g.embedding}, progress)
    shutil.rmtree(onnx_dir)
    return planned
