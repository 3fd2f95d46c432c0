"""The package's shape, as DESIGN.md §3 asks for it: floors from the ground up, every import (at
module level or inside a function) pointing down or sideways, no import cycle, modules under ~400
lines, functions under ~60, and public names that cannot shadow a module."""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "diffmem"

# Bottom to top. A module sits on the floor of its longest matching prefix; it may import from its
# own floor (without a cycle) and from any floor below, never from one above.
FLOORS = [
    ("diffmem.errors", "diffmem.atomic", "diffmem.rng", "diffmem.progress"),
    ("diffmem.data",),
    ("diffmem.denoisers",),
    ("diffmem.sampling", "diffmem.losses", "diffmem.schedules", "diffmem.plots", "diffmem.pages"),
    ("diffmem.metrics",),
    ("diffmem.config", "diffmem.runs", "diffmem.tracking", "diffmem.training"),
    ("diffmem.studies", "diffmem.auditing"),
    ("diffmem.cli", "diffmem.__main__"),
]


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _files() -> dict[str, Path]:
    return {_module(p): p for p in PACKAGE.rglob("*.py")}


def _imports(module: str, path: Path, files) -> dict[str, int]:
    """diffmem modules that ``module`` imports anywhere in its file (module level, inside functions,
    relative or absolute), each with the line of its first import."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            while name not in files and "." in name:
                name = name.rpartition(".")[0]
            if name in files and name != module:
                found.setdefault(name, node.lineno)
    return found


def _graph() -> dict[str, dict[str, int]]:
    files = _files()
    graph = {m: _imports(m, p, files) for m, p in files.items()}
    # a package's __init__ importing its own submodules is not a cycle with them
    return {m: {i: line for i, line in deps.items() if not (i.startswith(m + ".") and files[m].name == "__init__.py")}
            for m, deps in graph.items()}


def floor_of(module: str) -> int | None:
    best, floor = -1, None
    for level, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, floor = len(prefix), level
    return floor


def find_cycle(graph: dict) -> list[str] | None:
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in graph[m]:
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state:
                cycle = visit(n)
                if cycle:
                    return cycle
        stack.pop()
        state[m] = "done"
        return None

    for m in graph:
        if m not in state:
            cycle = visit(m)
            if cycle:
                return cycle
    return None


def upward_arrows(graph: dict) -> list[str]:
    return [f"{m} (floor {floor_of(m)}) imports {n} (floor {floor_of(n)}) at line {line}"
            for m, deps in graph.items() for n, line in deps.items()
            if floor_of(m) is not None and floor_of(n) is not None and floor_of(n) > floor_of(m)]


def test_every_module_has_a_floor():
    assert [m for m in _files() if m != "diffmem" and floor_of(m) is None] == []


def test_no_import_cycles_counting_imports_inside_functions():
    cycle = find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_from_a_lower_floor_to_a_higher_one():
    assert upward_arrows(_graph()) == []


def test_the_checks_see_function_level_imports_cycles_and_upward_arrows(tmp_path):
    """The checks above can fail: a function-level import is seen, and a cycle or an arrow up is named."""
    src = tmp_path / "diffmem"
    (src / "metrics").mkdir(parents=True)
    (src / "__init__.py").write_text("")
    (src / "metrics" / "__init__.py").write_text("")
    (src / "training.py").write_text("def f():\n    from diffmem.metrics.a import g\n")
    (src / "metrics" / "a.py").write_text("def g():\n    from ..training import f\n")
    files = {_module_in(p, tmp_path): p for p in src.rglob("*.py")}
    graph = {m: _imports(m, p, files) for m, p in files.items()}
    assert graph["diffmem.training"] == {"diffmem.metrics.a": 2}
    assert graph["diffmem.metrics.a"] == {"diffmem.training": 2}
    assert find_cycle(graph) is not None
    assert upward_arrows(graph) == ["diffmem.metrics.a (floor 4) imports diffmem.training (floor 5) at line 2"]


def _module_in(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_modules_and_functions_stay_small():
    long_modules, long_functions = [], []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if len(text.splitlines()) > 420:
            long_modules.append(path.name)
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long_functions.append(f"{path.name}:{node.name}")
    assert long_modules == [] and long_functions == []


# ---------------------------------------------------------------------------------------------
# The public names.


def test_no_export_shadows_a_module():
    """``diffmem.NAME`` always means the exported object: no module or package is called NAME."""
    import diffmem

    modules = {m.split(".")[1] for m in _files() if m.count(".") >= 1}
    assert sorted(set(diffmem._EXPORTS) & modules) == []


def test_exports_keep_their_meaning_after_every_module_is_imported():
    code = ("import importlib, pathlib, diffmem\n"
            "root = pathlib.Path(diffmem.__file__).parent\n"
            "before = {n: getattr(diffmem, n) for n in diffmem._EXPORTS}\n"
            "for p in sorted(root.rglob('*.py')):\n"
            "    parts = p.relative_to(root.parent).with_suffix('').parts\n"
            "    name = '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)\n"
            "    if not name.endswith('__main__'):\n"
            "        importlib.import_module(name)\n"
            "changed = [n for n in diffmem._EXPORTS if getattr(diffmem, n) is not before[n]]\n"
            "assert not changed, changed\n")
    env_path = str(PACKAGE.parent)
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": env_path, "PATH": ""})


def test_dir_of_the_package_is_its_api():
    import diffmem

    import diffmem.studies.sweep  # noqa: F401 -- a loaded submodule is no public name either

    leaked = [n for n in dir(diffmem) if not n.startswith("__") and n not in diffmem._EXPORTS]
    assert leaked == []
    for name in ("annotations", "importlib"):
        assert name not in dir(diffmem)


@pytest.mark.parametrize("name", ["emm", "audit", "run_sweep", "make_report", "load_denoiser"])
def test_exports_resolve_to_functions(name):
    import diffmem

    value = getattr(importlib.import_module("diffmem"), name)
    assert callable(value) and not isinstance(value, type(diffmem))
