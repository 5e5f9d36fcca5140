"""Recipes: what precision each part of a model gets, as ordered `pattern -> QuantSpec | None` rules.

Units are named hierarchically, `component/block/layer` (for example
`text_decoder/layers.3/mlp.down_proj`); a rule's pattern is an fnmatch glob over that name, the
first matching rule wins, and `None` keeps the unit in float. A recipe says what, never how a
backend packs it.

Example:
    >>> r = Recipe(rules=(Rule("vision_encoder/*", None), Rule("*", QuantSpec(bits=8))))
    >>> r.spec_for("vision_encoder/layers.0/fc1") is None, r.spec_for("text_decoder/lm_head").bits
    (True, 8)
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Literal

RECIPE_VERSION = 1


@dataclass(frozen=True)
class QuantSpec:
    bits: Literal[4, 8, 16]  # int4, int8, fp16: the kernels that exist
    group_size: int = 0  # 0 = per-channel; else the block size of block-wise int4
    symmetric: bool = True  # TensorRT and XNNPACK take symmetric int8 only
    method: str = "rtn"  # how the values are chosen: one a scheme registers (checked by quantizers.apply, not here:
    # the core records import no quantizer, and a device reading a bundle's recipe quantizes nothing)
    activation_bits: int = 0  # 0 = weight-only; 8 = int8 activations (static or dynamic)


@dataclass(frozen=True)
class Rule:
    pattern: str  # fnmatch glob over "component/block/layer"
    spec: QuantSpec | None  # None keeps the unit in float


@dataclass(frozen=True)
class Rotation:
    kind: Literal["hadamard", "orthogonal"]  # a randomized Hadamard (x a random orthogonal odd factor), or QR's
    seed: int  # R is regenerated from it (exporters/pte_rotation.matrix): the recipe holds no matrix
    # and each down_proj's input times a Hadamard at run time, its weight W H (QuaRot's R4:
    # exporters/pte_online_hadamard.py): the massive activations it reads, which R does not reach
    down_proj: bool = False


@dataclass(frozen=True)
class Recipe:
    rules: tuple[Rule, ...] = ()
    version: int = RECIPE_VERSION
    # the text decoder's residual stream rotated by this R before its linears were quantized (pte, 8da8w:
    # exporters/pte_rotation.py); a reference of the bundle rotates its own copy the same way
    rotation: Rotation | None = None

    def spec_for(self, unit: str) -> QuantSpec | None:
        """The spec of the first rule matching `unit`; None (float) when no rule matches."""
        return next((r.spec for r in self.rules if fnmatchcase(unit, r.pattern)), None)


FLOAT32 = Recipe(rules=(Rule("*", None),))
