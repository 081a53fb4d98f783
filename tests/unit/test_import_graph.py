"""The layers hold: agent/'s import graph has no circle and no engine imports an operations module.

An arrow is any `import` of one of agent's modules, wherever it is written: at module level, inside a
function (a lazy import is still an arrow between layers, it only runs later), inside
`if TYPE_CHECKING:`, or `importlib.import_module("agent....")` with a literal name.

- Layering counts every arrow, TYPE_CHECKING ones too: an engine that needs an operations module's
  types knows that layer.
- Circles count the arrows that run (module level and lazy) and leave out TYPE_CHECKING-only ones:
  those never import anything, and a helper annotating its owner (`builtin_dump` typing `MongoEngine`,
  an engine's options reader typing config's `ConfigTable`) is how a callback is typed, not a circle
  of behaviour. Issue 13's circle runner -> events -> runner ran (a lazy import), so it is caught.

Importing `agent.a.b` is an arrow to `agent.a.b` only, not to the package `agent.a` that Python also
runs: the engine registry in `agent/engines/__init__.py` finds every engine, so each engine would
otherwise form a circle with its own registry.
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
        *("catalog_index", "verified"),
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
    """One import: `source` imports `target` at `path:line`; `type_only` when only under TYPE_CHECKING."""

    source: str
    target: str
    path: Path
    line: int
    type_only: bool = False

    def __str__(self) -> str:
        return (
            f"{self.source} -> {self.target} ({self.path.name}:{self.line}{', types only' if self.type_only else ''})"
        )


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


def _type_checking_imports(tree: ast.AST) -> set[ast.AST]:
    """The import statements inside `if TYPE_CHECKING:` (or `if typing.TYPE_CHECKING:`) bodies."""
    found: set[ast.AST] = set()
    for node in ast.walk(tree):
        test = node.test if isinstance(node, ast.If) else None
        name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else None
        if isinstance(node, ast.If) and name == "TYPE_CHECKING":
            for statement in node.body:
                found.update(inner for inner in ast.walk(statement) if isinstance(inner, ast.Import | ast.ImportFrom))
    return found


def import_arrows(package: Path) -> list[Arrow]:
    """Every arrow between the package's own modules, from anywhere in each module's source."""
    modules = module_names(package)
    arrows: dict[tuple[str, str], Arrow] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        type_only = _type_checking_imports(tree)
        for node in ast.walk(tree):
            for imported, names in _imported_names(node, module, path.name == "__init__.py"):
                targets = [f"{imported}.{name}" for name in names if f"{imported}.{name}" in modules]
                if len(targets) < len(names) or not names:
                    targets.append(imported)  # names that are not submodules come from the module itself
                for target in targets:
                    if target in modules and target != module:
                        arrow = Arrow(module, target, path, getattr(node, "lineno", 0), node in type_only)
                        known = arrows.get((module, target))
                        # one arrow per pair: one that runs beats a type-only one, then the first line
                        if known is None or (arrow.type_only, arrow.line) < (known.type_only, known.line):
                            arrows[(module, target)] = arrow
    return sorted(arrows.values(), key=lambda arrow: (arrow.source, arrow.target))


def running(arrows: list[Arrow]) -> list[Arrow]:
    """The arrows that import something when the code runs (no TYPE_CHECKING-only ones)."""
    return [arrow for arrow in arrows if not arrow.type_only]


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
    circle = find_circle(
        [arrow for arrow in running(arrows) if (arrow.source, arrow.target) not in KNOWN_CIRCLE_ARROWS]
    )
    assert circle == [], "import circle: " + "; ".join(map(str, circle))


def test_no_engine_imports_an_operations_module(arrows: list[Arrow]) -> None:
    found = [arrow for arrow in engine_arrows_up(arrows) if (arrow.source, arrow.target) not in KNOWN_ENGINE_ARROWS]
    assert found == [], "engines must know nothing of operations: " + "; ".join(map(str, found))


def test_the_allow_lists_only_shrink(arrows: list[Arrow]) -> None:
    present = {(arrow.source, arrow.target) for arrow in running(arrows)}
    stale_circle = sorted(
        (source, target)
        for source, target in KNOWN_CIRCLE_ARROWS
        if (source, target) not in present or not reaches(running(arrows), target, source)
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
            "agent/status.py": "import typing\nif typing.TYPE_CHECKING:\n    from .state import State\n",
            "agent/state.py": "import importlib\nimportlib.import_module('agent.runner')\n",
            "agent/engines/__init__.py": "",
            "agent/engines/base.py": "import typing as t\nif t.TYPE_CHECKING:\n    from ..writer import W\n",
            "agent/engines/pg/__init__.py": "from . import dump\n",
            "agent/engines/pg/dump.py": "from agent.engines.base import Engine\nfrom agent import __version__\n",
            "agent/writer.py": "",
        },
    )
    arrows = import_arrows(package)
    assert {(arrow.source, arrow.target, arrow.type_only) for arrow in arrows} == {
        ("agent.runner", "agent.status", False),
        ("agent.status", "agent.state", True),
        ("agent.state", "agent.runner", False),
        ("agent.engines.base", "agent.writer", True),
        ("agent.engines.pg", "agent.engines.pg.dump", False),
        ("agent.engines.pg.dump", "agent.engines.base", False),
        ("agent.engines.pg.dump", "agent", False),
    }
    # a type-only arrow is an arrow up for layering, but closes no circle
    assert [(arrow.source, arrow.target) for arrow in engine_arrows_up(arrows)] == [
        ("agent.engines.base", "agent.writer")
    ]
    assert find_circle(running(arrows)) == []
    assert {arrow.source for arrow in find_circle(arrows)} == {"agent.runner", "agent.status", "agent.state"}


def test_a_lazy_import_closes_a_circle(tmp_path: Path) -> None:
    package = _write_package(
        tmp_path,
        {
            "agent/__init__.py": "",
            "agent/cli.py": "from agent import runner\n",
            "agent/runner.py": "def observe():\n    import agent.cli\n",
        },
    )
    arrows = running(import_arrows(package))
    assert [str(arrow) for arrow in find_circle(arrows)] == [
        "agent.cli -> agent.runner (cli.py:1)",
        "agent.runner -> agent.cli (runner.py:2)",
    ]
    assert find_circle([arrow for arrow in arrows if arrow.source != "agent.runner"]) == []
