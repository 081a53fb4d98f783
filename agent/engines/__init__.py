"""The engine registry: each engine's name and aliases, once, and where its package is.

An engine is one package (or module) under agent/engines/ defining `FAMILY`, an EngineFamily that
knows the engine's options and rules without importing its driver; the engine class (and so the
driver) is imported only when a job runs. Adding an engine is its folder plus one line here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.errors import UsageError

if TYPE_CHECKING:
    from agent.engines.base import Engine, EngineFamily


@dataclass(frozen=True, slots=True)
class Registration:
    module: str  # the package (or module) that defines FAMILY
    aliases: tuple[str, ...] = ()  # other names a config may use


REGISTRY: dict[str, Registration] = {
    "postgresql": Registration("agent.engines.postgres", aliases=("postgres",)),
    "mysql": Registration("agent.engines.mysql", aliases=("mariadb",)),
    "mongodb": Registration("agent.engines.mongo", aliases=("mongo",)),
    "sqlite": Registration("agent.engines.sqlite"),
    "redis": Registration("agent.engines.redis"),
}


def engine_names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def alias_names() -> tuple[str, ...]:
    return tuple(alias for registration in REGISTRY.values() for alias in registration.aliases)


def canonical_name(written: str) -> str | None:
    """The engine a config's `engine = "..."` means (any case, name or alias), or None."""
    wanted = written.lower()
    for name, registration in REGISTRY.items():
        if wanted == name or wanted in registration.aliases:
            return name
    return None


def family(name: str) -> EngineFamily:
    """The engine's family (options, refused arguments, restore facts); its driver is not imported."""
    try:
        registration = REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown engine {name!r}") from None
    found: EngineFamily = importlib.import_module(registration.module).FAMILY
    return found


def engine_class(name: str) -> type[Engine]:
    try:
        return family(name).engine_class()
    except ModuleNotFoundError as error:
        raise UsageError(f"engine {name} is not available in this build: {error}") from None
