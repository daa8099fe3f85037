"""The architecture holds: the core imports no IO, and the package's modules import each other one way.

Each core module is imported in a fresh interpreter and must not load a network, database, Slack,
SMTP, logging or scheduler library, nor an edge of the package. The import graph is read from the
source with `ast`, every import counted wherever it sits (module level, inside a function, under
`if TYPE_CHECKING:`), and must have no cycle but the few listed below, which are on their way out.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "alerter"

CORE = [
    "alerter.models",
    "alerter.diff",
    "alerter.durations",
    "alerter.errors",
    "alerter.matchers",
    "alerter.regexes",
    "alerter.routes",
    "alerter.grouping",
    "alerter.digests",
    "alerter.summary",
    "alerter.reminders",
    "alerter.rulefile",
    "alerter.receivers",
    "alerter.templates",
    "alerter.render.slack",
    "alerter.render.email",
    "alerter.render.webhook",
    "alerter.render.console",
    "alerter.render.samples",
    "alerter.render.slack_blocks",
    "alerter.yamlload",
]

FORBIDDEN = [
    "aiohttp",
    "asyncpg",
    "aiosqlite",
    "sqlite3",
    "slack_sdk",
    "aiosmtplib",
    "structlog",
    "apscheduler",
    "alerter.store",
    "alerter.notifiers",
    "alerter.service",
    "alerter.source",
    "alerter.sim",
    "alerter.delivery",
    "alerter.web",
    "alerter.config",
]

_PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(sys.modules)))
"""


@pytest.mark.parametrize("module", CORE)
def test_a_core_module_loads_no_io(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, module], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout))
    assert module in loaded
    found = sorted({f for f in FORBIDDEN for name in loaded if name == f or name.startswith(f + ".")})
    assert found == [], f"importing {module} loads {found}"


def import_graph(package: Path) -> dict[str, set[str]]:
    """module -> the modules of the package it imports, anywhere in its source.

    `from a import b` counts as importing `a.b` when that is a module, else `a` (as import-linter
    reads it); importing a submodule does not count as importing its parent package's `__init__`.
    """
    modules: dict[str, Path] = {}
    packages: set[str] = set()
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
            packages.add(".".join(parts))
        modules[".".join(parts)] = path

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        here = module if module in packages else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                found = known(target)
                if found is not None and found != module:
                    graph[module].add(found)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_package_has_no_import_cycle() -> None:
    assert cycles(import_graph(PACKAGE)) == []


def test_the_cycle_check_sees_imports_inside_functions_and_type_checking(tmp_path: Path) -> None:
    pkg = tmp_path / "alerter"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "def f():\n    from alerter import b\n",
        "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from alerter.a import f\n",
        "c.py": "import alerter.sub.d\n",
        "sub/__init__.py": "",
        "sub/d.py": "from ..c import x\n",
        "e.py": "from alerter.sub import d\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph = import_graph(pkg)
    assert graph["alerter.e"] == {"alerter.sub.d"}
    assert cycles(graph) == [["alerter.a", "alerter.b"], ["alerter.c", "alerter.sub.d"]]
