"""`quantize`: a float bundle being staged -> its components quantized per device, with a report.

    float graphs ─► calibration feeds (runtime pre-processing) ─► float reference outputs
        │ precision int8/int4/fp16: presets.recipe_for(profile)      auto: planner.plan(...)
        ▼ apply.quantize_component per component ─► SQNR / cosine vs float ─► manifest report

Example:
    >>> config = QuantizeConfig(precision="int4")
    >>> manifest = quantize(stage, manifest, load_profile("pi5"), config, scratch=Path("/tmp/q"))  # doctest: +SKIP
    >>> manifest.report.quantization["text_decoder"].quantized_nodes                             # doctest: +SKIP
    {'MatMulNBits': 29}
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgemfm.configs import QuantizeConfig
from edgemfm.manifest import Manifest
from edgemfm.profiles import DeviceProfile
from edgemfm.progress import Progress, say
from edgemfm.quantizers import planner, presets, tied_table
from edgemfm.quantizers.apply import check_calibrated, plan_passes, quantize_component, scheme_of
from edgemfm.quantizers.calibration import component_feeds, made_up
from edgemfm.quantizers.context import Context
from edgemfm.quantizers.judge import Judge
from edgemfm.quantizers.registry import check_method
from edgemfm.quantizers.units import weighted_units
from edgemfm.recipe import Recipe
from edgemfm.report import Plan
from edgemfm.toolchain import quiet_quantizers

SYNTHETIC_NOTE = (
    "measured on synthetic clips, fitted to none (no smoothing or searched scales): "
    "--calibration with WAVs of speech fits it to real audio"
)

log = logging.getLogger("edgemfm")
# Values of input the plan and the report measure each component on (~1,800 tokens of SmolLM2, 7
# images at 224x224): the planner runs a component once per group, so thousands of calibration
# tokens (which GPTQ needs) would cost minutes per group; the schemes still calibrate on them all.
MEASURE_VALUES = 2**20


def quantize(
    stage: Path,
    manifest: Manifest,
    profile: DeviceProfile,
    config: QuantizeConfig,
    scratch: Path,
    progress: Progress | None = None,
) -> Manifest:
    """Quantize the component graphs in `stage` in place; the manifest with recipe, sizes and report.

    `config.recipe`, when given, replaces the preset of `config.precision` (which then only labels
    the report). `progress` hears each step (see `edgemfm.progress`).

    Example:
        >>> quantize(stage, manifest, load_profile("pi5"), QuantizeConfig(precision="int8"), Path("/tmp/q"))  # doctest: +SKIP
    """
    if config.precision == "fp32" and config.recipe is None:
        return manifest
    for rule in config.recipe.rules if config.recipe else ():
        if rule.spec is not None:
            check_method(rule.spec.method)  # a recipe's unknown method fails before calibration starts
    with quiet_quantizers():
        return _quantize(stage, manifest, profile, config, scratch, progress)


def _quantize(
    stage: Path,
    manifest: Manifest,
    profile: DeviceProfile,
    config: QuantizeConfig,
    scratch: Path,
    progress: Progress | None,
) -> Manifest:
    recipe, precision = config.recipe, config.precision
    if recipe is None and precision != "auto":
        recipe = presets.recipe_for(profile, precision)
    float_dir = scratch / "float"
    float_dir.mkdir(parents=True, exist_ok=True)
    external = set()  # an fp32 bundle's shared table and weights files: the quantized graphs hold their own
    for c in manifest.components.values():
        external |= tied_table.standalone(stage / c.file, float_dir / c.file)
    for name in external:
        (stage / name).unlink()
    shutil.copyfile(stage / manifest.tokenizer.file, float_dir / manifest.tokenizer.file)
    say(progress, "calibrating")
    calibrate = component_feeds(float_dir, manifest, config.calibration)  # what the schemes calibrate on
    cross = manifest.components[manifest.generation.decoder].cross_attention
    attended = set(cross.outputs) if cross else set()  # one clip's keys/values, computed once: not the decoder's work
    feeds = {name: measured_subset(f, attended) for name, f in calibrate.items()}  # what the plan and report measure on
    first = {name: c.outputs[0].name for name, c in manifest.components.items()}
    group = presets.group_size(profile) if 4 in profile.weight_bits else 32
    synthetic = made_up(manifest, config.calibration)  # measured on, never fitted to
    ctx = {
        name: Context([] if name in synthetic else calibrate.get(name, []), profile, scratch)
        for name in manifest.components
    }

    def probe(component: str, r: Recipe) -> Path:
        out = scratch / f"probe-{component}.onnx"
        quantize_component(float_dir / manifest.components[component].file, out, component, r, ctx[component], group)
        return out

    # Components no calibration item reaches (an audio encoder without clips) are quantized unmeasured.
    judge = Judge(float_dir, manifest, feeds, probe)
    plan_report = None
    if recipe is None:
        files = {n: c.file for n, c in manifest.components.items() if n in judge.feeds}
        recipe, plan_report = auto_recipe(
            float_dir, files, profile, judge, config.memory_budget_mb, config.accuracy_tolerance_db, progress
        )
    _check_calibrated(float_dir, manifest, recipe, calibrate, group)  # before the long part: refusals first
    report, components = {}, dict(manifest.components)
    for i, (name, c) in enumerate(manifest.components.items()):
        say(progress, f"quantizing {name}", i / len(manifest.components))
        entry = quantize_component(float_dir / c.file, stage / c.file, name, recipe, ctx[name], group)
        figures = judge.report(name, stage / c.file) if name in judge.feeds else {}  # unmeasured: None stays
        if name in synthetic:
            entry = replace(entry, notes={**entry.notes, name: SYNTHETIC_NOTE})
        report[name] = replace(entry, **figures, output=first[name])
        components[name] = replace(c, weight_bytes=entry.weight_bytes)
    if note := tied_table.share(float_dir, stage, manifest):
        name = manifest.generation.embedding  # the lookup changed: its figures are measured again
        figures = judge.report(name, stage / components[name].file) if name in judge.feeds else {}
        report[name] = replace(report[name], **figures, notes={**report[name].notes, name: note})
    shutil.rmtree(float_dir)
    float_units = {u: why for e in report.values() for u, why in e.float_units.items()}
    plan = plan_report or manifest.report.plan
    quantized = replace(manifest.report, precision=precision, float_units=float_units, quantization=report, plan=plan)
    return replace(manifest, recipe=recipe, components=components, report=quantized)


def plan(
    float_dir: Path,
    manifest: Manifest,
    profile: DeviceProfile,
    config: QuantizeConfig,
    scratch: Path,
    components: set[str],
    progress: Progress | None = None,
) -> tuple[Recipe, Plan]:
    """The auto plan of `components` of the float bundle in `float_dir`, nothing quantized: the same
    calibration, judge and planner as `quantize`, for a writer that quantizes on its own (a pte program,
    exporters/pte_quantize.py).

    Example:
        >>> recipe, report = plan(float_dir, manifest, load_profile("host"), QuantizeConfig(precision="auto"),
        ...                       Path("/tmp/q"), {"text_decoder", "token_embedding"})  # doctest: +SKIP
    """
    scratch.mkdir(parents=True, exist_ok=True)  # the probes' graphs
    with quiet_quantizers():
        say(progress, "calibrating")
        calibrate = component_feeds(float_dir, manifest, config.calibration)
        cross = manifest.components[manifest.generation.decoder].cross_attention
        feeds = {n: measured_subset(f, set(cross.outputs) if cross else set()) for n, f in calibrate.items()}
        group = presets.group_size(profile) if 4 in profile.weight_bits else 32
        ctx = {n: Context(calibrate.get(n, []), profile, scratch) for n in manifest.components}

        def probe(component: str, r: Recipe) -> Path:
            out = scratch / f"probe-{component}.onnx"
            quantize_component(
                float_dir / manifest.components[component].file, out, component, r, ctx[component], group
            )
            return out

        judge = Judge(float_dir, manifest, {n: f for n, f in feeds.items() if n in components}, probe)
        files = {n: c.file for n, c in manifest.components.items() if n in judge.feeds}
        return auto_recipe(
            float_dir, files, profile, judge, config.memory_budget_mb, config.accuracy_tolerance_db, progress
        )


def _check_calibrated(
    float_dir: Path, manifest: Manifest, recipe: Recipe, calibrate: dict[str, list], group: int
) -> None:
    """Refuse a component no calibration item reaches whose recipe needs calibration (static int8)."""
    import onnx

    kinds = {m.encoder: kind for kind, m in manifest.prompt.media.items()}
    cross = manifest.components[manifest.generation.decoder].cross_attention
    if cross is not None:
        kinds[cross.encoder] = cross.media
    wording = {"image": "images", "audio": "audio clips"}
    for name, c in manifest.components.items():
        if calibrate.get(name):
            continue
        model = onnx.load(str(float_dir / c.file), load_external_data=False)  # the weights' shapes are enough
        passes, _ = plan_passes(weighted_units(model, name)[0], recipe, group)
        check_calibrated(name, passes, [], wording.get(kinds.get(name, ""), "prompts"))


def measured_subset(
    feeds: list[dict[str, np.ndarray]], uncounted: set[str] = frozenset()
) -> list[dict[str, np.ndarray]]:
    """The first feeds, up to MEASURE_VALUES float input values (at least one feed), not counting
    the inputs named in `uncounted` (Whisper's cross-attention keys/values, the same for every window).

    Example:
        >>> len(measured_subset([{"x": np.zeros((1, 600, 1024), np.float32)}] * 4))
        2
    """
    total, out = 0, []
    for f in feeds:
        if out and total >= MEASURE_VALUES:
            break
        out.append(f)
        total += sum(v.size for k, v in f.items() if v.dtype == np.float32 and k not in uncounted)
    return out


def auto_recipe(
    float_dir: Path,
    files: dict[str, str],
    profile: DeviceProfile,
    judge: Judge,
    memory_budget_mb: float | None,
    tolerance_db: float,
    progress: Progress | None = None,
) -> tuple[Recipe, Plan]:
    """The auto plan: sensitivity per layer, then bits per layer under budget and tolerance.

    `files`: component -> its float graph in `float_dir`; `judge`: each component's noise under a
    recipe, on the output that judges it (the decoder's next-token distribution for the decoder and
    the token embedding, else the component's own output).

    Example:
        >>> recipe, report = auto_recipe(d, {"vision_encoder": "v.onnx"}, load_profile("pi5"), judge, None, 20.0)  # doctest: +SKIP
    """
    available = presets.specs(profile)
    ladder = [available[b] for b in (4, 8) if b in available] + [None]
    say(progress, "measuring sensitivity")
    groups = planner.sensitivity(
        float_dir, files, judge.noise, ladder[0], lambda: say(progress, "measuring sensitivity"), judge.judged_by
    )
    judged = {c: [x for x in files if judge.judged_by(x) == c] for c in {judge.judged_by(x) for x in files}}
    signals = {c: judge.signal(c) for c in judged}
    budget = (memory_budget_mb or profile.default_memory_budget_mb) * 2**20
    grouped = {u.weight for g in groups for u in g.units}
    fixed = _other_weight_bytes(float_dir, files, grouped)

    def ok(unit: Any, spec: Any) -> bool:
        return not isinstance(scheme_of(unit, spec), str)

    planner.choose(groups, signals, ladder, budget, fixed, tolerance_db, ok)
    for round_ in range(planner.ROUNDS + 1):
        recipe = planner.recipe_of(groups, ladder)
        measured = {c: sum(judge.noise(x, recipe) for x in members) for c, members in judged.items()}
        sqnr = {
            c: 200.0 if measured[c] == 0 else round(float(10 * np.log10(signals[c] / measured[c])), 2) for c in judged
        }
        short = [c for c in judged if sqnr[c] < tolerance_db]
        if not short or round_ == planner.ROUNDS:
            break
        levels = [g.level for g in groups]
        for c in short:  # the layers' noises add up to more than the sum predicted: scale them to what was measured
            planner.rescale([g for g in groups if g.component == c], measured[c], ladder)
        planner.choose(groups, signals, ladder, budget, fixed, tolerance_db, ok)
        if levels == [g.level for g in groups]:
            break  # the budget allows no more
    met = not short
    if not met:
        log.warning(
            "edgemfm: accuracy tolerance %.1f dB not met for %s within the memory budget",
            tolerance_db,
            ", ".join(short),
        )
    return recipe, Plan(
        tolerance_db=tolerance_db,
        memory_budget_mb=budget / 2**20,
        tolerance_met=met,
        measured_sqnr_db=sqnr,
        judged_by={x: judge.judged_by(x) for x in files},
        groups=planner.report_of(groups, signals, ladder, ok),
    )


def _other_weight_bytes(float_dir: Path, files: dict[str, str], grouped: set[str]) -> int:
    """Bytes of the initializers no plan group covers (norms, biases, small tables): they stay float."""
    import onnx
    from onnx import numpy_helper

    total = 0
    for file in files.values():
        for init in onnx.load(str(float_dir / file)).graph.initializer:
            if init.name not in grouped:
                total += numpy_helper.to_array(init).nbytes
    return total
