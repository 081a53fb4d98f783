"""The engine registry: engine name -> implementation, imported lazily so optional drivers stay optional."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from agent.errors import UsageError

if TYPE_CHECKING:
    from agent.engines.base import Engine

_REGISTRY = {
    "postgresql": ("agent.engines.postgres", "PostgresEngine"),
    "sqlite": ("agent.engines.sqlite", "SqliteEngine"),
    "mysql": ("agent.engines.mysql", "MysqlEngine"),
    "mongodb": ("agent.engines.mongo", "MongoEngine"),
}


def engine_class(name: str) -> type[Engine]:
    try:
        module_name, class_name = _REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown engine {name!r}") from None
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise UsageError(f"engine {name} is not available in this build: {error}") from None
    cls: type[Engine] = getattr(module, class_name)
    return cls
