"""A toy engine that lives entirely outside agent/: the proof that an engine is one folder plus one
registry line. Its "server" is a folder (the `root` option); each database is a subfolder holding one
JSON file per table (a list of rows). Tests register it at runtime:

    monkeypatch.setitem(engines.REGISTRY, "toyfile", Registration("toy_engine", aliases=("toy",)))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from agent.engines.base import EngineFamily, EngineOptions

if TYPE_CHECKING:
    from agent.config import ConfigTable
    from agent.engines.base import Engine


@dataclass(frozen=True, slots=True)
class ToyOptions(EngineOptions):
    root: Path = Path("/nonexistent")  # the folder holding one subfolder per database


class ToyFamily(EngineFamily):
    options_type = ToyOptions
    connects = False
    refused_arguments = MappingProxyType({"--output": "the agent writes the dump file itself"})

    def engine_class(self) -> type[Engine]:
        from toy_engine.engine import ToyEngine

        return ToyEngine

    def read_options(self, table: ConfigTable) -> ToyOptions:
        if not table.has("root"):
            table.missing("root", 'say which folder holds the databases, e.g. root = "/srv/toy"')
        return ToyOptions(root=table.path_value("root", Path("/nonexistent")))


FAMILY = ToyFamily()
