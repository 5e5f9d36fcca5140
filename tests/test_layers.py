"""The import contract between edgemfm's layers, read from every module's source with `ast`.

Bottom to top:
- CORE: the leaf records and what is computed from them alone. `cost` is here: it is arithmetic
  over a Manifest and a DeviceProfile (a roofline) and imports nothing else, so the CLI and tune
  read it without running anything. A new module in sdk/ joins CORE or VERBS below.
- RUNTIMES (edgemfm.runtimes): what a device runs. It may import the core, never the host-side
  packages (HOST: exporters, quantizers, pruners) nor a verb.
- HOST: the toolchain the verbs call (it reuses the runtime's pre-processing); it calls no verb.
- VERBS: exporting, finetune, tune/, bench, cli and `measure` (it runs bundles through the
  runtime and reads graphs with onnx, the way `bench` does), free to import everything below.
The facade, edgemfm/__init__.py, names the verbs lazily. Both `import` statements at module level
and those inside functions count, except for the runtime path (RUNTIME_ENTRIES): what `import edgemfm` and
`edgemfm run` on an ONNX bundle load must not import torch, transformers or onnx at module level
(tests/test_cli.py::test_import_and_run_stay_free_of_torch checks the same at run time).
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Callable
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CORE = (
    "edgemfm.errors",
    "edgemfm.records",
    "edgemfm.recipe",
    "edgemfm.profiles",
    "edgemfm.manifest",
    "edgemfm.report",  # the typed reports a manifest holds
    "edgemfm.configs",  # the verbs' configs: plain records, so the CLI builds them before anything heavy loads
    "edgemfm.progress",  # the progress callback type the verbs take
    "edgemfm.arguments",  # checks of user values, shared by argparse types and the API
    "edgemfm.validate",  # a manifest's meaning, checked at load
    "edgemfm.leftovers",  # dead runs' folders, SIGTERM unwinding
    "edgemfm.bundle",
    "edgemfm.signing",  # Ed25519 over the manifest (cryptography, the [sign] extra, imported inside)
    "edgemfm.toolchain",
    "edgemfm.cost",
    "edgemfm.model_source",  # where --model comes from (a folder or a Hub id): the verbs and the pruners ask it
    "edgemfm.jobs",  # independent jobs on a process pool or Ray: tune's scoring and the fleet's devices
)
VERBS = (
    "edgemfm.exporting",
    "edgemfm.fleet",  # export and tune for many devices: one job per device on the pool or Ray
    "edgemfm.finetune",
    "edgemfm.lookahead",  # `edgemfm lookahead`: a draft head trained on a bundle's answers
    "edgemfm.lora",  # low-rank adapters finetune trains and merges
    "edgemfm.tune",
    "edgemfm.bench",
    "edgemfm.cascade_bench",  # `edgemfm bench --cascade`: a cascade's time and memory per held-out question
    "edgemfm.measure",
    "edgemfm.speech",  # `edgemfm run` on speech: long-form, transcript files, live PCM from stdin
    "edgemfm.cli",
)
PACKAGE = "edgemfm"  # the facade, edgemfm/__init__.py; every module is under it
RUNTIMES = ("edgemfm.runtimes",)
HOST = ("edgemfm.exporters", "edgemfm.quantizers", "edgemfm.pruners")
# `import edgemfm`, `edgemfm run` (the CLI, a pipeline or a cascade on onnxruntime) and what they import at module level
RUNTIME_ENTRIES = ("edgemfm", "edgemfm.cli", "edgemfm.runtimes.cascade", "edgemfm.runtimes.onnxruntime")
HEAVY = ("torch", "transformers", "onnx")
# within a group each module imports only those before it: a cascade is built on a pipeline, tune's
# search on its parts and their quality, the host check and the renderings on the search
ORDERED = (
    ("edgemfm.runtimes.pipeline", "edgemfm.runtimes.cascade"),
    ("edgemfm.tune.parts", "edgemfm.tune.quality", "edgemfm.tune.search", "edgemfm.tune.host", "edgemfm.tune.render"),
)


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@cache
def modules() -> dict[str, Path]:
    """Every edgemfm module name -> its file, from pyproject's package-dir (sdk/ is edgemfm ...)."""
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    roots = {ROOT / folder: package for package, folder in package_dir.items()}
    out = {}
    for folder, package in roots.items():
        for path in folder.rglob("*.py"):
            # a folder mapped to a package of its own (exporters/ inside no other) is read from its own row
            owner = max((f for f in roots if path.is_relative_to(f)), key=lambda f: len(f.parts))
            if owner != folder:
                continue
            parts = path.relative_to(folder).with_suffix("").parts
            out[".".join((package, *parts[:-1], *([] if parts[-1] == "__init__" else parts[-1:])))] = path
    return out


@cache
def imports(module: str) -> tuple[tuple[str, int, bool], ...]:
    """(imported name, line, at module level) for every import in `module`; `from a import b` gives a and a.b."""
    path = modules()[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top = set()

    def visit_top(body: list[ast.stmt]) -> None:  # module level: the body, its if/try blocks, not `if TYPE_CHECKING:`
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                top.add(node)
            elif isinstance(node, ast.If) and not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                visit_top(node.body + node.orelse)
            elif isinstance(node, ast.Try):
                visit_top(node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body])

    visit_top(tree.body)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno, node in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            out += [(base, node.lineno, node in top)] + [
                (f"{base}.{a.name}", node.lineno, node in top) for a in node.names
            ]
    return tuple(out)


def layer(prefixes: tuple[str, ...]) -> list[str]:
    """The modules under any of `prefixes`."""
    return [m for m in modules() if _under(m, prefixes)]


def violations(sources: list[str], forbidden: Callable[[str], bool], module_level_only: bool = False) -> list[str]:
    """'module (file:line) imports name' for each import by a module of `sources` that `forbidden` refuses."""
    found = []
    for module in sources:
        for name, line, top in imports(module):
            if forbidden(name) and not _under(name, (module,)) and (top or not module_level_only):
                found.append((module, line, name))
    # `from a import b` names a and a.b: say only the longer
    found = [
        (m, line, n)
        for m, line, n in found
        if not any(o.startswith(n + ".") for k, j, o in found if (k, j) == (m, line))
    ]
    return sorted({f"{m} ({modules()[m].relative_to(ROOT)}:{line}) imports {n}" for m, line, n in found})


def runtime_path() -> list[str]:
    """The modules RUNTIME_ENTRIES load: their module-level edgemfm imports, followed, with each one's packages."""
    known, todo, seen = modules(), list(RUNTIME_ENTRIES), set()
    while todo:
        module = todo.pop()
        if module in seen or module not in known:
            continue
        seen.add(module)
        todo += [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)]
        todo += [name for name, _, top in imports(module) if top and _under(name, (PACKAGE,))]
    return sorted(seen)


def test_every_sdk_module_has_a_layer():
    sdk = ROOT / tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]["edgemfm"]
    lost = [
        m for m, path in modules().items() if path.is_relative_to(sdk) and not _under(m, CORE + VERBS) and m != PACKAGE
    ]
    assert not lost, f"{', '.join(lost)} in no layer: add it to CORE or VERBS in tests/test_layers.py"


def test_runtimes_import_neither_the_host_side_nor_a_verb():
    bad = violations(layer(RUNTIMES), lambda name: _under(name, HOST + VERBS))
    assert not bad, "the runtime must run without the host toolchain:\n" + "\n".join(bad)


def test_the_host_side_imports_no_verb():
    bad = violations(layer(HOST), lambda name: _under(name, VERBS))
    assert not bad, "exporters, quantizers and pruners serve the verbs, never call them:\n" + "\n".join(bad)


def test_the_core_imports_only_the_core():
    # `from edgemfm import bundle` names the package itself too: that is no import of a layer above
    bad = violations(layer(CORE), lambda name: name.startswith(PACKAGE + ".") and not _under(name, CORE))
    assert not bad, "a leaf record imports a layer above it:\n" + "\n".join(bad)


def test_the_runtime_path_imports_no_torch_transformers_or_onnx_at_module_level():
    path = runtime_path()
    assert {"edgemfm.runtimes.pipeline", "edgemfm.bundle", "edgemfm.manifest"} <= set(path)  # the walk found it
    bad = violations(path, lambda name: _under(name, HEAVY), module_level_only=True)
    assert not bad, "import these inside the functions that need them:\n" + "\n".join(bad)


def test_each_ordered_group_imports_only_backwards():
    bad = []
    for group in ORDERED:
        for i, module in enumerate(group):
            bad += violations([module], lambda name, later=group[i + 1 :]: _under(name, later))
    assert not bad, "an import against the order of ORDERED:\n" + "\n".join(bad)
