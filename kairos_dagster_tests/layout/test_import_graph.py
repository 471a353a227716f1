"""The package's import graph, read from the source: the pure core never imports dagster or the shell,
no arrow runs from a lower floor to a higher one, and no two modules import each other (directly or
through others), counting imports inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "kairos_dagster"
# Floors, lowest first: a module may import its own floor and the floors below.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("constants", "settings", "calendar"),
    ("warehouse",),
    ("sources",),
    ("features",),
    ("ml",),
    ("portfolio",),
    ("backtest",),
    ("broker",),
    ("resources",),  # the shell starts here
    ("defs",),
    ("instance",),
    ("definitions",),
    ("cli",),
)
SHELL = {"resources", "defs", "instance", "definitions", "cli"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(path: Path, name: str) -> set[str]:
    """Every module (or package) `path` imports, at any depth of its code."""
    found = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return found


MODULES = _modules()
GRAPH = {name: {m for m in _imports(path, name) if m in MODULES and m != name} for name, path in MODULES.items()}


def _top(name: str) -> str:
    return name.split(".")[1] if "." in name else ""


def _floor(name: str) -> int:
    top = _top(name)
    for i, floor in enumerate(FLOORS):
        if top in floor:
            return i
    raise AssertionError(f"module {name} is in no floor of the layout: add its package to FLOORS")


def test_every_module_has_a_floor():
    for name in MODULES:
        if name != "kairos_dagster":
            _floor(name)


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n != "kairos_dagster" and _top(n) not in SHELL))
def test_the_core_imports_no_dagster(name):
    dagster = sorted(m for m in _imports(MODULES[name], name) if m == "dagster" or m.startswith(("dagster.", "dagster_")))
    assert not dagster, f"{name} (core) imports {dagster}: Dagster belongs to the shell ({', '.join(sorted(SHELL))})"


def test_no_arrow_runs_up_a_floor():
    upward = [f"{a} -> {b}" for a, targets in GRAPH.items() if a != "kairos_dagster"
              for b in targets if b != "kairos_dagster" and _floor(b) > _floor(a)]
    assert not upward, "imports from a lower floor to a higher one:\n" + "\n".join(sorted(upward))


def test_no_import_cycle():
    # Tarjan's strongly connected components over module -> imported module (packages count as modules).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            # a package and its own submodules are one unit (`from pkg import sub` names both)
            if len({c for c in comp if not any(o.startswith(c + ".") for o in comp)}) > 1:
                cycles.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_layout_test_sees_violations():
    """The checks above are not vacuous: the graph has the shell's arrows to the core and dagster in the shell."""
    assert "kairos_dagster.portfolio.weekly" in GRAPH["kairos_dagster.defs.rebalance.assets"]
    assert "dagster" in _imports(MODULES["kairos_dagster.definitions"], "kairos_dagster.definitions")
    assert _floor("kairos_dagster.cli.main") > _floor("kairos_dagster.defs.rebalance.assets") > _floor(
        "kairos_dagster.portfolio.weekly")


def test_nothing_reads_the_environment_at_import_time():
    """Every module imports with settings that cannot load: only building the definitions reads them."""
    import os
    import subprocess
    import sys

    names = sorted(n for n in MODULES if n != "kairos_dagster")
    code = ("import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\n"
            "from kairos_dagster.definitions import build_definitions\n"
            "try:\n    build_definitions()\nexcept Exception as exc:\n    print('BUILD', type(exc).__name__, exc)\n")
    env = {**os.environ, "KAIROS_START_DATE": "not-a-date"}
    out = subprocess.run([sys.executable, "-c", code, *names], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    # ...and the same settings do fail once the definitions are built: the probe is not vacuous.
    assert "BUILD SettingsError" in out.stdout and "KAIROS_START_DATE" in out.stdout, out.stdout
