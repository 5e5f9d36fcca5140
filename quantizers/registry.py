"""The quantization schemes edgemfm knows, each declared as data by its own module.

A scheme module (`weight_only`, `clip_search`, ...) exports `SCHEME = Scheme(...)`: the
`QuantSpec.method` values it provides, the unit op types it takes, its place in the pass order and
its own refusals. `apply.scheme_of` routes every unit from these records alone, and `QuantSpec`
checks its method against `methods()`. Adding a method is one new module and its name in
`_collect`'s import line; `register` adds one at run time (a plugin, a test).

This module and the scheme modules import without onnx, onnxruntime or torch (their heavy imports
live inside their `apply`), so the core `recipe` can check a method where a bundle is read on a
device; a test proves it.

Example:
    >>> from edgemfm.quantizers.registry import methods
    >>> methods()[:4]
    ('dynamic', 'minmax', 'percentile', 'entropy')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgemfm.errors import ConfigError

if TYPE_CHECKING:
    from edgemfm.quantizers.context import Context
    from edgemfm.quantizers.units import Unit
    from edgemfm.recipe import QuantSpec


@dataclass(frozen=True)
class Scheme:
    name: str  # the module's name: how errors and tests refer to it
    family: str  # weight-only, dynamic, static, fp16: a unit no scheme takes is named by it in the report
    methods: tuple[str, ...]  # the QuantSpec.method values it provides; () = every method of its family
    ops: tuple[str, ...]  # the unit op types (units.WEIGHT_INPUT) it quantizes under those methods
    order: int  # its place in the pass order, lowest first: weight-only before calibration runs the graph
    apply: Callable[[Any, list[Unit], QuantSpec, Context], Any]  # (ModelProto, units, spec, ctx) -> the new model
    bits: tuple[int, ...] = (4, 8)  # the spec bits it answers to (fp16 takes 16; the others check theirs in apply)
    any_method_ops: tuple[str, ...] = ()  # op types it takes whatever the spec's method (an embedding lookup)
    refuse: Callable[[Unit, QuantSpec], str | None] | None = None  # why a unit it would take stays float
    respec: Callable[[QuantSpec, int], QuantSpec] | None = None  # the spec an any-method unit runs with (group)
    alone: bool = False  # a component it quantizes takes no other scheme (fp16: the casts cost more than they save)
    calibrated: bool = False  # needs calibration feeds: a component none reach is refused before any work


_REGISTERED: dict[str, Scheme] = {}


def register(scheme: Scheme) -> Scheme:
    """Add `scheme` to the table (after the built-in ones); returns it.

    Example:
        >>> register(Scheme("toy", "weight-only", ("toy",), ("MatMul",), 15, apply=lambda m, u, s, c: m))  # doctest: +SKIP
    """
    taken = {m: s.name for s in schemes() for m in s.methods if s.name != scheme.name}
    clash = [m for m in scheme.methods if m in taken]
    if clash:
        raise ConfigError(f"scheme {scheme.name!r}: method {clash[0]!r} is already provided by {taken[clash[0]]!r}")
    _REGISTERED[scheme.name] = scheme
    return scheme


def unregister(name: str) -> None:
    """Remove the scheme called `name` (one `register` added); unknown names are refused.

    Example:
        >>> unregister("toy")  # doctest: +SKIP
    """
    schemes()
    if name not in _REGISTERED:
        raise ConfigError(f"scheme {name!r} is not registered; registered: {', '.join(_REGISTERED)}")
    del _REGISTERED[name]


def schemes() -> tuple[Scheme, ...]:
    """Every registered scheme, in the order registered (the built-in ones first).

    Example:
        >>> [s.name for s in schemes()][:2]
        ['dynamic_int8', 'static_int8']
    """
    if not _REGISTERED:
        _collect()
    return tuple(_REGISTERED.values())


def methods() -> tuple[str, ...]:
    """Every `QuantSpec.method` a registered scheme provides, in registration order.

    Example:
        >>> "gptq_act_order" in methods()
        True
    """
    return tuple(m for s in schemes() for m in s.methods)


def check_method(method: str) -> None:
    """Refuse a method no registered scheme provides, naming the ones that exist.

    Example:
        >>> check_method("nope")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        edgemfm.errors.ConfigError: quantization method 'nope' is unknown; allowed: dynamic, minmax, ...
    """
    if method not in methods():
        raise ConfigError(f"quantization method {method!r} is unknown; allowed: {', '.join(methods())}")


def _collect() -> None:
    """Register the built-in schemes; imported here, not at the top, because each module imports `Scheme`."""
    # the one line a new scheme module is added to; this order is the order errors list the methods in
    from edgemfm.quantizers import clip_search, conv_weight_only, dynamic_int8, fp16, gptq, static_int8, weight_only

    for module in (dynamic_int8, static_int8, weight_only, clip_search, gptq, conv_weight_only, fp16):
        _REGISTERED[module.SCHEME.name] = module.SCHEME
