"""Typed errors for a user's mistakes.

Every error names the bad value and what is allowed; the CLI prints it in one line without a
traceback and exits with code 2. Our own bugs are plain assertions, never these.

Example:
    >>> from edgemfm.errors import UnknownDeviceError
    >>> str(UnknownDeviceError("pi9", ["jetson", "pi5"]))
    "unknown device 'pi9'; known: jetson, pi5"
"""

from __future__ import annotations

from collections.abc import Iterable


class EdgemfmError(Exception):
    """Base class of every error caused by input the user gave."""

    def __reduce__(self):
        # pickled by its message, not its __init__ arguments: a spawned worker (bench, jobs) that raises one
        # sends it back through pickle, and `cls(message)` would fail for the subclasses taking (name, known)
        return _rebuilt, (type(self), self.args)


def _rebuilt(cls: type[EdgemfmError], args: tuple) -> EdgemfmError:
    error = cls.__new__(cls)
    error.args = args
    return error


def _known(values: Iterable[str]) -> str:
    return ", ".join(sorted(values))


class UnknownDeviceError(EdgemfmError):
    def __init__(self, name: str, known: Iterable[str]):
        super().__init__(f"unknown device {name!r}; known: {_known(known)}")


class ProfileError(EdgemfmError):
    """A device profile file is malformed (the file and the key are named)."""


class ConfigError(EdgemfmError):
    """A config, recipe or manifest dict has unknown keys or bad values."""


class UnsupportedModelError(EdgemfmError):
    def __init__(self, what: str, known: Iterable[str], verb: str | None = None):
        for_verb = f" for {verb}" if verb else ""  # a family the verb has no capability of
        super().__init__(f"unsupported architecture {what!r}{for_verb}; supported: {_known(known)}")


class BundleError(EdgemfmError):
    """A bundle is missing, tampered with, truncated, foreign or of another schema version."""


class InputError(EdgemfmError):
    """A file or value given to export/run is missing or of the wrong kind."""


class MissingExtraError(EdgemfmError):
    def __init__(self, module: str, extra: str = "export"):
        what = {"export": "the export toolchain", "sign": "signing and verifying bundles"}.get(extra, extra)
        super().__init__(f"{module!r} is not installed; {what} needs: pip install 'edgemfm[{extra}]'")


class MemoryBudgetError(EdgemfmError):
    """A bundle cannot run within the memory budget; the message gives needed and allowed bytes."""


class ExportError(EdgemfmError):
    """A component of the model cannot be captured for the chosen format (the component and torch's reason are named)."""
