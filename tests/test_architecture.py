"""The shape of the code, as a specification.

- Layers run one way: ``simulator`` ← ``planner`` ← ``opplan`` (the application).
  The simulator never imports the planner or the app; the planner never imports the app.
- No import cycles: no module imports (at module level or inside a function) a module
  that imports it back, directly or through others.
- Every module imports on its own, in a fresh interpreter state, in any order.
- No function is longer than :data:`MAX_FUNCTION_LINES` lines (``def`` to last line,
  docstring included); generated data tables would be named in :data:`LONG_ALLOWED`.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("simulator", "planner", "opplan")
#: Which layers each package may import (besides itself).
MAY_IMPORT = {"simulator": set(), "planner": {"simulator"}, "opplan": {"simulator", "planner"}}
MAX_FUNCTION_LINES = 60
#: ``"path::function"`` of generated data tables allowed past the limit (none today).
LONG_ALLOWED: frozenset[str] = frozenset()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py")) if p.name != "__main__.py"}


def _imported(node: ast.AST, module: str, is_package: bool, known: set[str]) -> list[str]:
    """Project modules that one import statement names (``from a import b`` → ``a.b`` when that is a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] in PACKAGES]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    if base.split(".")[0] not in PACKAGES:
        return []
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]


@functools.cache
def import_graph() -> nx.DiGraph:
    modules = _modules()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            for target in _imported(node, name, path.name == "__init__.py", set(modules)):
                if target != name:
                    graph.add_edge(name, target)
    return graph


def test_layers_run_one_way():
    wrong = [
        f"{a} imports {b}"
        for a, b in import_graph().edges
        if b.split(".")[0] != a.split(".")[0] and b.split(".")[0] not in MAY_IMPORT[a.split(".")[0]]
    ]
    assert wrong == []


def test_no_module_imports_one_that_imports_it_back():
    graph = import_graph()
    # A package's __init__ re-exporting its submodules is not a cycle of logic: a submodule
    # importing a sibling goes through the package only because Python loads it first.
    cycles = [c for c in nx.simple_cycles(graph) if len(c) > 1]
    assert cycles == []


#: Optional extras (``pip install opplan[profile]``): a module may need them to import.
OPTIONAL_DEPENDENCIES = {"torch"}


def test_every_module_imports_on_its_own():
    # Two interpreters, each importing half the modules one by one (the machine has two cores).
    halves = [sorted(_modules())[part::2] for part in (0, 1)]
    runs = [subprocess.Popen([sys.executable, "-c", _isolated_imports(names)], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for names in halves]
    for run in runs:
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        assert out.strip() == ""


def _isolated_imports(names: list[str]) -> str:
    """A script importing each of ``names`` after forgetting every project module imported before."""
    return (
        "import importlib, sys\n"
        f"names = {names!r}\n"
        f"OPTIONAL = {sorted(OPTIONAL_DEPENDENCIES)!r}\n"
        "failed = []\n"
        "for name in names:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] in ('simulator', 'planner', 'opplan')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError as exc:\n"
        "        if exc.name not in OPTIONAL:\n"
        "            failed.append(f'{name}: {type(exc).__name__}: {exc}')\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{name}: {type(exc).__name__}: {exc}')\n"
        "print('\\n'.join(failed))\n"
    )


def _long_functions() -> list[str]:
    out = []
    for folder in (*PACKAGES, "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = node.end_lineno - node.lineno + 1
                    where = f"{path.relative_to(ROOT)}::{node.name}"
                    if lines > MAX_FUNCTION_LINES and where not in LONG_ALLOWED:
                        out.append(f"{where} ({lines} lines)")
    return out


@pytest.mark.parametrize("limit", [MAX_FUNCTION_LINES])
def test_no_function_is_longer_than_the_limit(limit):
    assert _long_functions() == [], f"functions over {limit} lines"
