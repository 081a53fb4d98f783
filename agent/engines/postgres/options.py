"""The PostgreSQL keys of a job beyond the common ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.engines.base import EngineOptions

if TYPE_CHECKING:
    from agent.config import ConfigTable


@dataclass(frozen=True, slots=True)
class PostgresOptions(EngineOptions):
    include_globals: bool = True  # roles and tablespaces (pg_dumpall --globals-only), once per run


def read_options(table: ConfigTable) -> PostgresOptions:
    return PostgresOptions(include_globals=table.flag("include_globals", True))
