"""`quantize`: a float bundle being staged -> its components quantized per device, with a report.

    float graphs ─► calibration feeds (runtime pre-processing) ─► float reference outputs
        │ precision int8/int4/fp16: presets.recipe_for(profile)      auto: planner.plan(...)
        ▼ apply.quantize_component per component ─► SQNR / cosine vs float ─► manifest report

Example:
    >>> manifest = quantize(stage, manifest, load_profile("pi5"), "int4", scratch=Path("/tmp/q"))  # doctest: +SKIP
    >>> manifest.report["quantization"]["text_decoder"]["quantized_nodes"]                        # doctest: +SKIP
    {'MatMulNBits': 29}
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgemfm.manifest import Manifest
from edgemfm.profiles import DeviceProfile
from edgemfm.quantizers import planner, presets
from edgemfm.quantizers.apply import quantize_component, scheme_of
from edgemfm.quantizers.calibration import component_feeds
from edgemfm.quantizers.context import Context
from edgemfm.quantizers.judge import Judge
from edgemfm.recipe import Recipe
from edgemfm.toolchain import quiet_quantizers

log = logging.getLogger("edgemfm")
DEFAULT_TOLERANCE_DB = 20.0  # least SQNR of each component's output under auto: ~3.3 bits of agreement
# Values of input the plan and the report measure each component on (~1,800 tokens of SmolLM2, 7
# images at 224x224): the planner runs a component once per group, so thousands of calibration
# tokens (which GPTQ needs) would cost minutes per group; the schemes still calibrate on them all.
MEASURE_VALUES = 2**20


def quantize(
    stage: Path,
    manifest: Manifest,
    profile: DeviceProfile,
    precision: str,
    scratch: Path,
    calibration: str | Path | None = None,
    memory_budget_mb: float | None = None,
    accuracy_tolerance_db: float = DEFAULT_TOLERANCE_DB,
    bar: Any = None,
    recipe: Recipe | None = None,
) -> Manifest:
    """Quantize the component graphs in `stage` in place; the manifest with recipe, sizes and report.

    `recipe`, when given, replaces the preset of `precision` (which then only labels the report).
    """
    if precision == "fp32" and recipe is None:
        return manifest
    with quiet_quantizers():
        return _quantize(
            stage,
            manifest,
            profile,
            precision,
            scratch,
            calibration,
            memory_budget_mb,
            accuracy_tolerance_db,
            bar,
            recipe,
        )


def _quantize(
    stage: Path,
    manifest: Manifest,
    profile: DeviceProfile,
    precision: str,
    scratch: Path,
    calibration: str | Path | None,
    memory_budget_mb: float | None,
    accuracy_tolerance_db: float,
    bar: Any,
    recipe: Recipe | None,
) -> Manifest:
    if recipe is None and precision != "auto":
        recipe = presets.recipe_for(profile, precision)
    float_dir = scratch / "float"
    float_dir.mkdir(parents=True, exist_ok=True)
    for c in manifest.components.values():
        shutil.copyfile(stage / c.file, float_dir / c.file)
    shutil.copyfile(stage / manifest.tokenizer.file, float_dir / manifest.tokenizer.file)
    task = bar.add_task("calibrating", total=None) if bar else None
    calibrate = component_feeds(float_dir, manifest, calibration)  # what the schemes calibrate on
    cross = manifest.components[manifest.generation.decoder].cross_attention
    attended = set(cross.outputs) if cross else set()  # one clip's keys/values, computed once: not the decoder's work
    feeds = {
        name: measured_subset(f, attended) for name, f in calibrate.items()
    }  # what the plan and the report measure on
    first = {name: c.outputs[0].name for name, c in manifest.components.items()}
    group = presets.group_size(profile) if 4 in profile.weight_bits else 32
    ctx = {name: Context(calibrate.get(name, []), profile, scratch) for name in manifest.components}

    def probe(component: str, r: Recipe) -> Path:
        out = scratch / f"probe-{component}.onnx"
        quantize_component(float_dir / manifest.components[component].file, out, component, r, ctx[component], group)
        return out

    # Components no calibration item reaches (an audio encoder without clips) are quantized unmeasured.
    judge = Judge(float_dir, manifest, feeds, probe)
    plan_report: dict[str, Any] = {}
    if recipe is None:
        files = {n: c.file for n, c in manifest.components.items() if n in judge.feeds}
        recipe, plan_report = auto_recipe(
            float_dir, files, profile, judge, memory_budget_mb, accuracy_tolerance_db, bar, task
        )
    report, components = {}, dict(manifest.components)
    for name, c in manifest.components.items():
        if bar:
            bar.update(task, description=f"quantizing {name}", total=None)
        entry = quantize_component(float_dir / c.file, stage / c.file, name, recipe, ctx[name], group)
        entry.update(judge.report(name, stage / c.file) if name in judge.feeds else {"sqnr_db": None, "cosine": None})
        entry["output"] = first[name]
        report[name] = entry
        components[name] = replace(c, weight_bytes=entry["weight_bytes"])
    shutil.rmtree(float_dir)
    float_units = {u: why for e in report.values() for u, why in e["float_units"].items()}
    extra = {"plan": plan_report} if plan_report else {}
    return replace(
        manifest,
        recipe=recipe,
        components=components,
        report={**manifest.report, "precision": precision, "float_units": float_units, "quantization": report, **extra},
    )


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
    bar: Any = None,
    task: Any = None,
) -> tuple[Recipe, dict[str, Any]]:
    """The auto plan: sensitivity per layer, then bits per layer under budget and tolerance.

    `files`: component -> its float graph in `float_dir`; `judge`: each component's noise under a
    recipe, on the output that judges it (the decoder's next-token distribution for the decoder and
    the token embedding, else the component's own output).

    Example:
        >>> recipe, report = auto_recipe(d, {"vision_encoder": "v.onnx"}, load_profile("pi5"), judge, None, 20.0)  # doctest: +SKIP
    """
    available = presets.specs(profile)
    ladder = [available[b] for b in (4, 8) if b in available] + [None]
    if bar:
        bar.update(task, description="measuring sensitivity", total=None, completed=0)
    groups = planner.sensitivity(
        float_dir, files, judge.noise, ladder[0], lambda: bar and bar.advance(task), judge.judged_by
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
    return recipe, {
        "tolerance_db": tolerance_db,
        "memory_budget_mb": budget / 2**20,
        "tolerance_met": met,
        "measured_sqnr_db": sqnr,
        "judged_by": {x: judge.judged_by(x) for x in files},
        "groups": planner.report_of(groups, signals, ladder, ok),
    }


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
