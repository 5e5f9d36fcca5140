"""`--precision auto`: choose bits per layer from measured sensitivity, within a memory budget.

1. Sensitivity, down the hierarchy component -> block -> layer, measured on calibration data as
   the noise a quantization adds to its component's output:
   - every block (`text_decoder/layers.3`) alone at int4, and every unit outside a block
     (`text_decoder/lm_head`, `token_embedding/embed_tokens`) alone at int4;
   - every layer role (`mlp.down_proj`) at int4 in all blocks of its component at once;
   - a layer's int4 noise is then its block's, shared out among the block's layers in
     proportion to their roles' noise. Two measurements per block and role instead of one
     per layer (SmolLM2-135M: 38 runs of its decoder instead of 211), and it sees what a
     per-block plan cannot: in SmolLM2 one role at int4 (down_proj, a quarter of a block's
     weights) costs as much perplexity as the other six together (BENCHMARKS.md, result quantization-smollm2).
   int8's noise is predicted from int4's as 2^-8 (4 more bits, 24 dB), the uniform-quantizer model.
2. Plan: start every layer at the device's int4 and, while a component's predicted SQNR (signal
   over the sum of its layers' noise) is under the tolerance and the budget allows, move up one
   step (int4 -> int8 -> float) the layer that buys the most noise reduction (relative to its
   component's signal) per byte added.
3. The plan is then measured for real; for a component still under the tolerance its layers'
   noises are scaled to the measured sum and step 2 runs again (a few rounds). What the budget
   did not allow is written in the report.

fp16 is not mixed in: it is a whole-component choice (`--precision fp16`).

Example:
    >>> groups = sensitivity(float_dir, {"text_decoder": "text_decoder.onnx"}, judge.noise, int4, advance)  # doctest: +SKIP
    >>> choose(groups, signals, ladder, budget, fixed, 20.0, scheme_ok); recipe_of(groups, ladder)          # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgemfm.errors import InputError
from edgemfm.quantizers.units import Unit, weighted_units
from edgemfm.recipe import QuantSpec, Recipe, Rule
from edgemfm.report import PlanGroup

INT8_NOISE = 2.0**-8  # int8 noise power relative to int4's: 4 more bits, 24 dB
ROUNDS = 4  # measured re-planning rounds when the prediction was optimistic


def block_of(unit: str) -> str | None:
    """The block a unit belongs to (`component/block`), or None for a unit outside any block.

    Example:
        >>> block_of("text_decoder/layers.3/mlp.down_proj"), block_of("text_decoder/lm_head")
        ('text_decoder/layers.3', None)
    """
    parts = unit.split("/")
    return "/".join(parts[:2]) if len(parts) >= 3 else None


def role_of(unit: str) -> str:
    """What a layer is inside its block, the same in every block (`component/*/mlp.down_proj`).

    Example:
        >>> role_of("text_decoder/layers.3/mlp.down_proj")
        'text_decoder/*/mlp.down_proj'
    """
    parts = unit.split("/")
    return "/".join([parts[0], "*", *parts[2:]])


@dataclass
class Group:
    """What the plan gives one precision: a layer (or a unit outside any block)."""

    name: str
    component: str  # the component whose output judges it (the decoder for the token embedding)
    units: list[Unit]
    noise4: float = 0.0  # noise power on the component output with this group alone at int4
    level: int = 0  # index into the ladder
    estimated: bool = False  # noise4 is the block's measured noise times the role's share

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
    """Rules for every group, a block's layers folded into one rule where they all got the same spec; float for the rest."""
    by_block: dict[str, list[Group]] = {}
    for g in groups:
        by_block.setdefault(block_of(g.name) or g.name, []).append(g)
    rules = []
    for block, members in by_block.items():
        levels = {g.level for g in members}
        if len(levels) == 1:
            spec = ladder[levels.pop()]
            rules += [Rule(block, spec), Rule(f"{block}/*", spec)]
        else:
            rules += [Rule(g.name, ladder[g.level]) for g in members]
    return Recipe(rules=(*rules, Rule("*", None)))


def _predicted_sqnr(groups: list[Group], signal: float, ladder: list[QuantSpec | None]) -> float:
    noise = sum(g.noise_at(ladder[g.level]) for g in groups)
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


def choose(
    groups: list[Group],
    signals: dict[str, float],
    ladder: list[QuantSpec | None],
    budget: float,
    fixed_bytes: float,
    tolerance_db: float,
    scheme_ok: Callable[[Unit, QuantSpec], bool],
) -> None:
    """Raise groups' levels (in place) until every component meets the tolerance or the budget stops it."""

    def total() -> float:
        return fixed_bytes + sum(g.bytes_at(ladder[g.level], scheme_ok) for g in groups)

    if total() > budget:
        raise InputError(
            f"memory budget {budget / 2**20:.1f} MiB is too small: the smallest plan needs {total() / 2**20:.1f} MiB"
        )
    while True:
        short = [
            c
            for c in signals
            if _predicted_sqnr([g for g in groups if g.component == c], signals[c], ladder) < tolerance_db
        ]
        best, best_gain = None, 0.0
        for g in (g for g in groups if g.component in short and g.level + 1 < len(ladder)):
            extra = g.bytes_at(ladder[g.level + 1], scheme_ok) - g.bytes_at(ladder[g.level], scheme_ok)
            if total() + extra > budget:
                continue
            # relative to its component's signal: embeddings and logits differ by orders of magnitude
            gain = (
                (g.noise_at(ladder[g.level]) - g.noise_at(ladder[g.level + 1])) / signals[g.component] / max(extra, 1.0)
            )
            if gain > best_gain:
                best, best_gain = g, gain
        if best is None:
            return
        best.level += 1


def rescale(groups: list[Group], measured_noise: float, ladder: list[QuantSpec | None]) -> None:
    """Scale one component's layer noises (in place) so that their predicted sum is the noise measured
    for the plan: quantized together, layers can add more noise than each alone (an untrained or
    deep model amplifies it)."""
    predicted = sum(g.noise_at(ladder[g.level]) for g in groups)
    if predicted > 0:
        for g in groups:
            g.noise4 *= measured_noise / predicted


def sensitivity(
    float_dir: Path,
    components: dict[str, str],
    noise_of: Callable[[str, Recipe], float],
    int4: QuantSpec,
    advance: Callable[[], None],
    judged_by: Callable[[str], str] = lambda c: c,
) -> list[Group]:
    """Every layer with its int4 noise power: blocks and roles measured, a block's layers estimated from both.

    `noise_of(component, recipe)`: the noise power `recipe` adds on the output that judges the
    component, `judged_by(component)` (its own, or the decoder's for the token embedding).
    """
    import onnx

    def noise(component: str, units: list[Unit]) -> float:
        got = noise_of(component, Recipe(rules=(*(Rule(u.name, int4) for u in units), Rule("*", None))))
        advance()
        return got

    groups: list[Group] = []
    for component, file in components.items():
        units, _ = weighted_units(onnx.load(str(float_dir / file), load_external_data=False), component)
        blocks: dict[str, list[Unit]] = {}
        for u in units:
            if block_of(u.name) is None:
                groups.append(Group(u.name, judged_by(component), [u], noise(component, [u])))
            else:
                blocks.setdefault(block_of(u.name), []).append(u)
        roles: dict[str, list[Unit]] = {}
        for u in (u for us in blocks.values() for u in us):
            roles.setdefault(role_of(u.name), []).append(u)
        # one role in every block (a CNN's single conv): the blocks' own measurements say it all
        role_noise = {r: noise(component, us) for r, us in roles.items()} if len(roles) > 1 else {}
        for us in blocks.values():
            block_noise = noise(component, us)
            shares = [role_noise.get(role_of(u.name), 1.0) for u in us]
            if not sum(shares):  # no role of this block moved the output: split by size
                shares = [u.params for u in us]
            groups += [
                Group(u.name, judged_by(component), [u], block_noise * s / sum(shares), estimated=len(us) > 1)
                for u, s in zip(us, shares)
            ]
    return groups


def report_of(
    groups: list[Group],
    signals: dict[str, float],
    ladder: list[QuantSpec | None],
    scheme_ok: Callable[[Unit, QuantSpec], bool],
) -> dict[str, PlanGroup]:
    """Per layer: the bits it got and its int4 sensitivity as the plan modelled it (SQNR of its component
    with it alone at int4; `estimated` when it is its block's measured noise shared out by role; scaled
    where `rescale` found the layers adding up to more)."""
    out = {}
    for g in groups:
        spec = ladder[g.level]
        spec = spec if spec and any(scheme_ok(u, spec) for u in g.units) else None
        sqnr4 = 200.0 if g.noise4 == 0 else round(10 * math.log10(signals[g.component] / g.noise4), 2)
        out[g.name] = PlanGroup(
            bits=spec.bits if spec else 32,
            int4_alone_sqnr_db=sqnr4,
            params=sum(u.params for u in g.units),
            estimated=g.estimated,
        )
    return out
