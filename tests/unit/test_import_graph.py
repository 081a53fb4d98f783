"""The layers hold: agent/'s import graph has no circle and no engine imports an operations module.

Every `import` counts, wherever it is written: at module level, inside a function (a lazy import is
still an arrow between layers, it only runs later) and inside `if TYPE_CHECKING:` (a module that needs
another's types depends on it: mypy follows the arrow, and issue 13's circle closes through one,
state -> runner). `importlib.import_module("agent....")` with a literal name counts too. Importing
`agent.a.b` is an arrow to `agent.a.b` only, not to the package `agent.a` that Python also runs: the
engine registry in `agent/engines/__init__.py` imports every engine, so each engine would otherwise
form a circle with its own registry.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parents[2] / "agent"

ENGINES = "agent.engines"
# what runs, observes, stores or reports backups: an engine must know none of them
OPERATIONS = frozenset(
    f"agent.{name}"
    for name in (
        *("runner", "observed", "events", "daemon", "status", "metrics", "verify", "restore", "drill", "doctor"),
        *("prune", "budget", "retention", "cli", "hooks", "notify", "state", "records", "catalog", "writer"),
    )
)

# Arrows allowed to close a circle while one is being removed (issue 13, item 2, removed the last:
# runner -> events -> metrics -> status -> state -> runner). This list may only shrink: a test below
# fails once an entry no longer closes a circle, so whoever removes the arrow removes its entry too.
KNOWN_CIRCLE_ARROWS: frozenset[tuple[str, str]] = frozenset()
# Engines importing an operations module today (issue 13, item 1): none. Same rule: it may only shrink.
KNOWN_ENGINE_ARROWS: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True, slots=True)
class Arrow:
    """One import: `source` imports `target` at `path:line`."""

    source: str
    target: str
    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} ({self.path.name}:{self.line})"


def module_names(package: Path) -> dict[str, Path]:
    """Every module of the package by dotted name (a package's `__init__.py` under the package's name)."""
    names: dict[str, Path] = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _imported_names(node: ast.AST, module: str, is_package: bool) -> Iterator[tuple[str, list[str]]]:
    """(module, names imported from it) for one import statement or literal import_module call."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name, []
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - node.level + 1]
            yield ".".join([*base, *([node.module] if node.module else [])]), [alias.name for alias in node.names]
        else:
            yield node.module or "", [alias.name for alias in node.names]
    elif (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute | ast.Name)
        and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        yield node.args[0].value, []


def import_arrows(package: Path) -> list[Arrow]:
    """Every arrow between the package's own modules, from anywhere in each module's source."""
    modules = module_names(package)
    arrows: dict[tuple[str, str], Arrow] = {}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            for imported, names in _imported_names(node, module, path.name == "__init__.py"):
                targets = [f"{imported}.{name}" for name in names if f"{imported}.{name}" in modules]
                if len(targets) < len(names) or not names:
                    targets.append(imported)  # names that are not submodules come from the module itself
                for target in targets:
                    if target in modules and target != module:
                        arrow = Arrow(module, target, path, getattr(node, "lineno", 0))
                        known = arrows.get((module, target))
                        if known is None or arrow.line < known.line:
                            arrows[(module, target)] = arrow
    return sorted(arrows.values(), key=lambda arrow: (arrow.source, arrow.target))


def _graph(arrows: list[Arrow]) -> dict[str, list[Arrow]]:
    graph: dict[str, list[Arrow]] = {}
    for arrow in arrows:
        graph.setdefault(arrow.source, []).append(arrow)
    return graph


def find_circle(arrows: list[Arrow]) -> list[Arrow]:
    """One circle of arrows (depth-first, deterministic), or [] when the graph has none."""
    graph = _graph(arrows)
    finished: set[str] = set()
    path: list[Arrow] = []
    on_path: dict[str, int] = {}

    def visit(module: str) -> list[Arrow]:
        on_path[module] = len(path)
        for arrow in graph.get(module, []):
            if arrow.target in on_path:
                return [*path[on_path[arrow.target] :], arrow]
            if arrow.target not in finished:
                path.append(arrow)
                circle = visit(arrow.target)
                if circle:
                    return circle
                path.pop()
        del on_path[module]
        finished.add(module)
        return []

    for start in sorted(graph):
        if start not in finished:
            circle = visit(start)
            if circle:
                return circle
    return []


def reaches(arrows: list[Arrow], start: str, goal: str) -> bool:
    graph: Mapping[str, list[Arrow]] = _graph(arrows)
    seen, waiting = {start}, [start]
    while waiting:
        for arrow in graph.get(waiting.pop(), []):
            if arrow.target == goal:
                return True
            if arrow.target not in seen:
                seen.add(arrow.target)
                waiting.append(arrow.target)
    return False


def is_engine(module: str) -> bool:
    return module == ENGINES or module.startswith(ENGINES + ".")


def is_operation(module: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in OPERATIONS)


def engine_arrows_up(arrows: list[Arrow]) -> list[Arrow]:
    return [arrow for arrow in arrows if is_engine(arrow.source) and is_operation(arrow.target)]


@pytest.fixture(scope="module")
def arrows() -> list[Arrow]:
    return import_arrows(AGENT)


def test_agent_has_no_import_circle(arrows: list[Arrow]) -> None:
    circle = find_circle([arrow for arrow in arrows if (arrow.source, arrow.target) not in KNOWN_CIRCLE_ARROWS])
    assert circle == [], "import circle: " + "; ".join(map(str, circle))


def test_no_engine_imports_an_operations_module(arrows: list[Arrow]) -> None:
    found = [arrow for arrow in engine_arrows_up(arrows) if (arrow.source, arrow.target) not in KNOWN_ENGINE_ARROWS]
    assert found == [], "engines must know nothing of operations: " + "; ".join(map(str, found))


def test_the_allow_lists_only_shrink(arrows: list[Arrow]) -> None:
    present = {(arrow.source, arrow.target) for arrow in arrows}
    stale_circle = sorted(
        (source, target)
        for source, target in KNOWN_CIRCLE_ARROWS
        if (source, target) not in present or not reaches(arrows, target, source)
    )
    stale_engine = sorted(KNOWN_ENGINE_ARROWS - {(a.source, a.target) for a in engine_arrows_up(arrows)})
    assert stale_circle == [], f"no longer closes a circle, remove from KNOWN_CIRCLE_ARROWS: {stale_circle}"
    assert stale_engine == [], f"no longer imported, remove from KNOWN_ENGINE_ARROWS: {stale_engine}"


def _write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root / "agent"


def test_lazy_type_checking_and_relative_imports_are_arrows(tmp_path: Path) -> None:
    package = _write_package(
        tmp_path,
        {
            "agent/__init__.py": "",
            "agent/runner.py": "def run():\n    from agent import status\n",
            "agent/status.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .state import State\n",
            "agent/state.py": "import importlib\nimportlib.import_module('agent.runner')\n",
            "agent/engines/__init__.py": "",
            "agent/engines/base.py": "from ..writer import write\n",
            "agent/engines/pg/__init__.py": "from . import dump\n",
            "agent/engines/pg/dump.py": "from agent.engines.base import Engine\nfrom agent import __version__\n",
            "agent/writer.py": "",
        },
    )
    found = {(arrow.source, arrow.target) for arrow in import_arrows(package)}
    assert found == {
        ("agent.runner", "agent.status"),
        ("agent.status", "agent.state"),
        ("agent.state", "agent.runner"),
        ("agent.engines.base", "agent.writer"),
        ("agent.engines.pg", "agent.engines.pg.dump"),
        ("agent.engines.pg.dump", "agent.engines.base"),
        ("agent.engines.pg.dump", "agent"),
    }
    circle = find_circle(import_arrows(package))
    assert {arrow.source for arrow in circle} == {"agent.runner", "agent.status", "agent.state"}
    assert [(arrow.source, arrow.target) for arrow in engine_arrows_up(import_arrows(package))] == [
        ("agent.engines.base", "agent.writer")
    ]


def test_a_graph_without_a_circle_has_none(tmp_path: Path) -> None:
    package = _write_package(
        tmp_path,
        {
            "agent/__init__.py": "",
            "agent/cli.py": "from agent import runner\n",
            "agent/runner.py": "import agent.cli\n",
        },
    )
    arrows = import_arrows(package)
    assert len(find_circle(arrows)) == 2
    assert find_circle([arrow for arrow in arrows if arrow.source != "agent.runner"]) == []
