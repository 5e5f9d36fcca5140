"""`--precision auto`: choose bits per block from measured sensitivity, within a memory budget.

1. Sensitivity: for every group (a component's block, `text_decoder/layers.3`, or a top-level
   module, `text_decoder/lm_head`) quantize that group alone to int4 and measure the noise it adds
   to its component's output on calibration data. int8's noise is predicted from it as 2^-8 of
   int4's (4 more bits, 24 dB), the uniform-quantizer model.
2. Plan: start everything at the device's int4 and, while a component's predicted SQNR (signal
   over the sum of its groups' noise) is under the tolerance and the budget allows, move up one
   step (int4 -> int8 -> float) the group that buys the most noise reduction (relative to its
   component's signal) per byte added.
3. The plan is then measured for real; a component still under the tolerance gets its noisiest
   group raised again (a few rounds). What the budget did not allow is written in the report.

fp16 is not mixed in: it is a whole-component choice (`--precision fp16`).

Example:
    >>> recipe, report = plan(float_dir, manifest, profile, feeds, refs, budget, 20.0, scratch)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgemfm.errors import InputError
from edgemfm.quantizers.units import Unit, weighted_units
from edgemfm.recipe import QuantSpec, Recipe, Rule

INT8_NOISE = 2.0**-8  # int8 noise power relative to int4's: 4 more bits, 24 dB
ROUNDS = 4  # measured re-planning rounds when the prediction was optimistic


def group_of(unit: str) -> str:
    """The planning group of a unit: component/block when it has a block, else the unit itself."""
    parts = unit.split("/")
    return "/".join(parts[:2]) if len(parts) >= 3 else unit


@dataclass
class Group:
    name: str
    component: str
    units: list[Unit]
    noise4: float = 0.0  # noise power on the component output with this group alone at int4
    level: int = 0  # index into the ladder

    def bytes_at(self, spec: QuantSpec | None, scheme_ok: Callable[[Unit, QuantSpec], bool]) -> float:
        total = 0.0
        for u in self.units:
            if spec is None or not scheme_ok(u, spec):
                total += u.params * 4
            else:  # packed weights plus one fp32 scale (and a 4-bit zero point) per block or channel
                per = spec.group_size or u.shape[-1 if u.op == "MatMul" else 0]
                total += u.params * spec.bits / 8 + u.params / max(per, 1) * 4.5
        return total

    def noise_at(self, spec: QuantSpec | None) -> float:
        return 0.0 if spec is None else self.noise4 * (INT8_NOISE if spec.bits == 8 else 1.0)


def recipe_of(groups: list[Group], ladder: list[QuantSpec | None]) -> Recipe:
    """Rules for every group (the group itself and everything under it), float for the rest."""
    rules = [r for g in groups for r in (Rule(g.name, ladder[g.level]), Rule(f"{g.name}/*", ladder[g.level]))]
    return Recipe(rules=(*rules, Rule("*", None)))


def _predicted_sqnr(groups: list[Group], signal: float, ladder: list[QuantSpec | None]) -> float:
    noise = sum(g.noise_at(ladder[g.level]) for g in groups)
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


def choose(groups: list[Group], signals: dict[str, float], ladder: list[QuantSpec | None], budget: float,
           fixed_bytes: float, tolerance_db: float, scheme_ok: Callable[[Unit, QuantSpec], bool]) -> None:
    """Raise groups' levels (in place) until every component meets the tolerance or the budget stops it."""
    def total() -> float:
        return fixed_bytes + sum(g.bytes_at(ladder[g.level], scheme_ok) for g in groups)

    if total() > budget:
        raise InputError(
            f"memory budget {budget / 2**20:.1f} MiB is too small: the smallest plan needs {total() / 2**20:.1f} MiB"
        )
    while True:
        short = [c for c in signals if _predicted_sqnr([g for g in groups if g.component == c], signals[c], ladder) < tolerance_db]
        best, best_gain = None, 0.0
        for g in (g for g in groups if g.component in short and g.level + 1 < len(ladder)):
            extra = g.bytes_at(ladder[g.level + 1], scheme_ok) - g.bytes_at(ladder[g.level], scheme_ok)
            if total() + extra > budget:
                continue
            # relative to its component's signal: embeddings and logits differ by orders of magnitude
            gain = (g.noise_at(ladder[g.level]) - g.noise_at(ladder[g.level + 1])) / signals[g.component] / max(extra, 1.0)
            if gain > best_gain:
                best, best_gain = g, gain
        if best is None:
            return
        best.level += 1


def sensitivity(float_dir: Path, components: dict[str, str], refs: dict[str, np.ndarray], measure: Callable[[str, Recipe], np.ndarray],
                int4: QuantSpec, advance: Callable[[], None]) -> list[Group]:
    """Every group with its int4 noise power, measured by quantizing that group alone."""
    import onnx

    groups: dict[str, Group] = {}
    for component, file in components.items():
        units, _ = weighted_units(onnx.load(str(float_dir / file), load_external_data=False), component)
        for u in units:
            groups.setdefault(group_of(u.name), Group(group_of(u.name), component, [])).units.append(u)
    for g in groups.values():
        got = measure(g.component, Recipe(rules=(Rule(g.name, int4), Rule(f"{g.name}/*", int4), Rule("*", None))))
        g.noise4 = float(np.sum((refs[g.component] - got) ** 2))
        advance()
    return list(groups.values())


def report_of(groups: list[Group], signals: dict[str, float], ladder: list[QuantSpec | None],
              scheme_ok: Callable[[Unit, QuantSpec], bool]) -> dict[str, Any]:
    """Per group: bits it got and its int4 sensitivity (SQNR of its component with it alone at int4)."""
    out = {}
    for g in groups:
        spec = ladder[g.level]
        spec = spec if spec and any(scheme_ok(u, spec) for u in g.units) else None
        sqnr4 = 200.0 if g.noise4 == 0 else round(10 * math.log10(signals[g.component] / g.noise4), 2)
        out[g.name] = {"bits": spec.bits if spec else 32, "int4_alone_sqnr_db": sqnr4, "params": sum(u.params for u in g.units)}
    return out
