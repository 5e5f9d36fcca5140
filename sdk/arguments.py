"""Checks of the values a user passes, shared by the command line (argparse types) and the Python API.

Each refuses in one line naming the value and the allowed range: NaN, infinities, negative or
zero numbers where they mean nothing, non-integers, empty names, text that is not UTF-8.

Example:
    >>> number("seed", 7, low=0, high=2**32 - 1, integer=True)
    7
    >>> number("seed", -1, low=0, high=2**32 - 1, integer=True)
    Traceback (most recent call last):
    edgemfm.errors.InputError: seed -1 is not allowed; allowed: an integer from 0 to 4294967295
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from edgemfm.errors import InputError

SEED_MAX = 2**32 - 1  # numpy's default_rng takes any non-negative int; one 32-bit word is reproducible everywhere
THREADS_MAX = 1024  # more intra-op threads than any edge device has cores


def _allowed(low: float | None, high: float | None, integer: bool, above: bool) -> str:
    kind = "an integer" if integer else "a finite number"
    lo, hi = (f"{v:d}" if isinstance(v, int) else f"{v:g}" for v in (low or 0, high or 0))
    if low is not None and high is not None:
        return f"{kind} from {lo} to {hi}" if not above else f"{kind} above {lo}, at most {hi}"
    if low is not None:
        return f"{kind} {'above' if above else 'of at least'} {lo}"
    return kind


def number(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    integer: bool = False,
    above: bool = False,
) -> Any:
    """`value` if it is a finite number (an int when `integer`) within [low, high] (or above `low`).

    Example:
        >>> number("memory budget", 0.5, low=0, above=True)
        0.5
    """
    allowed = _allowed(low, high, integer, above)
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(value):
        raise InputError(f"{name} {value!r} is not allowed; allowed: {allowed}")
    if (low is not None and (value <= low if above else value < low)) or (high is not None and value > high):
        raise InputError(f"{name} {value!r} is not allowed; allowed: {allowed}")
    return value


def text(name: str, value: Any) -> str:
    """`value` if it is a non-empty str that encodes as UTF-8 (argv bytes that were not UTF-8 arrive
    as lone surrogates, which the tokenizer cannot take).

    Example:
        >>> text("device", "pi5")
        'pi5'
    """
    if not isinstance(value, str):
        raise InputError(f"{name} {value!r} is a {type(value).__name__}; allowed: a str")
    utf8(name, value)
    if not value.strip():
        raise InputError(f"{name} {value!r} is empty; allowed: a non-empty name")
    return value


def utf8(name: str, value: str) -> str:
    """`value` if it is valid Unicode text (no lone surrogates from undecodable bytes)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(
            f"{name} is not valid UTF-8 text (byte {e.object[e.start].encode('utf-8', 'surrogateescape')!r} "
            f"at {e.start}); allowed: UTF-8 text"
        ) from None
    return value


def arg(check: Callable[..., Any], parse: Callable[[str], Any] = float, **limits: Any) -> Callable[[str], Any]:
    """An argparse `type` parsing with `parse`, then applying `check` (refusals become argparse errors).

    Example:
        >>> arg(number, int, low=0)("3")
        3
    """

    def convert(raw: str) -> Any:
        try:
            value = parse(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{raw!r} is not {'an integer' if parse is int else 'a number'}; allowed: "
                + _allowed(limits.get("low"), limits.get("high"), parse is int, limits.get("above", False))
            ) from None
        try:
            return check("value", value, **({"integer": True} if parse is int else {}), **limits)
        except InputError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix("value ")) from None

    convert.__name__ = parse.__name__  # argparse names the type in its own messages
    return convert


def name(raw: str) -> str:
    """An argparse `type` for names and paths: non-empty UTF-8 text."""
    try:
        return text("value", raw)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("value ")) from None


# The command line's typed options, one per meaning.
POSITIVE = arg(number, float, low=0, above=True)
FINITE = arg(number, float)
NON_NEGATIVE = arg(number, float, low=0)
PROBABILITY = arg(number, float, low=0, high=1, above=True)  # top-p
FRACTION = arg(number, float, low=0, high=1)  # a share of the questions (a cascade's tolerance)
COUNT = arg(number, int, low=0)
AT_LEAST_ONE = arg(number, int, low=1)
THREADS = arg(number, int, low=0, high=THREADS_MAX)
SEED = arg(number, int, low=0, high=SEED_MAX)
