"""Every module under benchmarks/ imports: a refactor that moves or renames what a script imports fails here, not weeks later.

Nothing is run. A third-party package that only some benchmarks need (an extra this environment
lacks) skips that module; a missing `edgemfm` or `benchmarks` module fails it.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
MODULES = sorted(
    ["benchmarks"]
    + [m.name for m in pkgutil.walk_packages([str(ROOT / "benchmarks")], prefix="benchmarks.")]  # packages too
)


def test_every_subject_folder_is_found():
    assert {"benchmarks.render", "benchmarks.record", "benchmarks.side_by_side.run"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_benchmark_module_imports(name, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # `benchmarks` is a folder of the repository, not an installed package
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] in ("edgemfm", "benchmarks"):
            raise
        pytest.skip(f"{name} needs {e.name}, not installed here")
