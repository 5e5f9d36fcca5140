"""Every module's docstring examples run (the ones not marked +SKIP): an example that no longer runs misleads.

STYLE.md asks for an example on every public function; examples that need a bundle, a model or a device say
`# doctest: +SKIP`, and the rest are checked here, as `python -m doctest` would check them.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

# the packages pyproject.toml maps from their own folders (walk_packages does not find them under edgemfm's)
PACKAGES = ("edgemfm", "edgemfm.exporters", "edgemfm.quantizers", "edgemfm.pruners", "edgemfm.runtimes")


def _modules() -> list[str]:
    found = set(PACKAGES)
    for package in PACKAGES:
        path = importlib.import_module(package).__path__
        found |= {m.name for m in pkgutil.walk_packages(path, f"{package}.") if not m.name.endswith("__main__")}
    return sorted(found)


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (printed above)"
