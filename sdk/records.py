"""Frozen, versioned records that round-trip through JSON/TOML dicts and reject unknown keys.

Every config of edgemfm (device profiles, recipes, manifests) is a frozen dataclass built with
`from_dict`, which names the unknown key and lists the known ones, and checks each field's type.

Records and reports are written to disk here too (`write_json`, `write_text`): through a temporary file
beside the target and `os.replace`, so a reader, or a run killed mid-write, sees the old file or the whole
new one, never a part.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Point:
    ...     x: int
    ...     y: int = 0
    >>> from_dict(Point, {"x": 1})
    Point(x=1, y=0)
    >>> to_dict(Point(1, 2))
    {'x': 1, 'y': 2}
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

from edgemfm.errors import ConfigError

T = TypeVar("T")


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build the dataclass `cls` from `data`, recursing into nested records, tuples and dicts.

    `where` names the place (a file, a key path) that an error message should point at.
    """
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table/object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; known: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}: missing key {name!r}")
            continue
        values[name] = _convert(hints[name], data[name], f"{where}.{name}")
    return cls(**values)


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: bad value {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table/object, got {value!r}")
        return {k: _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: bad value {value!r}; allowed: {', '.join(map(str, args))}")
        return value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def to_dict(record: Any) -> Any:
    """The plain JSON-ready form of a record (tuples become lists, None values are kept)."""
    if dataclasses.is_dataclass(record):
        return {f.name: to_dict(getattr(record, f.name)) for f in dataclasses.fields(record)}
    if isinstance(record, (list, tuple)):
        return [to_dict(v) for v in record]
    if isinstance(record, dict):
        return {k: to_dict(v) for k, v in record.items()}
    return record


def write_json(path: str | Path, record: Any, indent: int = 1) -> Path:
    """`record` (a record, or JSON-ready data) as JSON at `path`, atomically; returns the path.

    Example:
        >>> write_json("bench.json", report)  # doctest: +SKIP
        PosixPath('bench.json')
    """
    return _replace(path, lambda f: (json.dump(to_dict(record), f, indent=indent), f.write("\n")))


def write_text(path: str | Path, text: str, mode: int = 0o666) -> Path:
    """`text` at `path`, atomically (a transcript, a rendered report, a key: `mode` 0o600 keeps it its owner's from
    the first byte); returns the path.

    Example:
        >>> write_text("talk.srt", transcripts.render(segments, "srt"))  # doctest: +SKIP
        PosixPath('talk.srt')
    """
    return _replace(path, lambda f: f.write(text), mode)


def _replace(path: str | Path, write: Callable[[IO[str]], Any], mode: int = 0o666) -> Path:
    """Run `write` on a temporary file beside `path`, then move it over `path` (one rename: atomic on one file
    system); on any failure, the interrupt included, the temporary file goes and `path` is as it was."""
    path = Path(path)
    # a fresh name beside it, created with `mode` less the umask (an ordinary file by default, not mkstemp's
    # owner-only one)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "w", encoding="utf-8") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
