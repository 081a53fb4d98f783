"""Load the real sample databases (Pagila, Sakila) from the shared fixtures into a test database.

The fixtures live outside the repository, in ``<repo>/../shared/fixtures``, or in
``$BACKUP_AGENT_SHARED/fixtures`` when that variable names the shared directory. Real schemas catch
what hand-written tables miss: partitions, triggers, routines, views, full-text indexes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from servers.common import skip_or_fail

from .mariadb import MariaDBServer
from .postgres import PostgresServer

__all__ = ["load_pagila", "load_sakila", "shared_fixtures_dir"]

SHARED_VARIABLE = "BACKUP_AGENT_SHARED"
PAGILA_RENTALS = 16044
SAKILA_RENTALS = 16044
SAKILA_SOURCE_DATABASE = "sakila_dojo"

_SAKILA_CREATE = re.compile(
    rf"^\s*create\s+(?:schema|database)\s+(?:if\s+not\s+exists\s+)?`?{SAKILA_SOURCE_DATABASE}`?", re.I
)
_SAKILA_USE = re.compile(rf"^\s*use\s+`?{SAKILA_SOURCE_DATABASE}`?\s*;", re.I)


def shared_fixtures_dir() -> Path:
    """The shared fixtures directory; skips (or fails in CI) when it is missing."""
    configured = os.environ.get(SHARED_VARIABLE)
    shared = Path(configured) if configured else Path(__file__).resolve().parents[2].parent / "shared"
    fixtures = shared / "fixtures"
    if not fixtures.is_dir():
        message = f"sample databases not found at {fixtures} (set {SHARED_VARIABLE} to the shared directory)"
        skip_or_fail(message)
    return fixtures


def load_pagila(server: PostgresServer, database: str) -> list[str]:
    """Load Pagila into an empty ``database``; return psql's ERROR lines (two are expected on PG 15).

    The dump targets PostgreSQL 17, so psql does not stop on error; the row count afterwards is what
    says whether the load worked.
    """
    pagila = shared_fixtures_dir() / "pagila"
    errors: list[str] = []
    for name in ("pagila-schema.sql", "pagila-data.sql"):
        completed = server.psql_file(database, pagila / name, stop_on_error=False)
        errors += [line for line in completed.stderr.splitlines() if "ERROR:" in line]
    rentals = int(server.psql(database, "SELECT count(*) FROM public.rental").strip())
    if rentals != PAGILA_RENTALS:
        raise AssertionError(
            f"Pagila loaded {rentals} rentals, expected {PAGILA_RENTALS}; psql errors:\n" + "\n".join(errors)
        )
    return errors


def _retarget_sakila(path: Path, database: str, rewritten: list[str]) -> Iterator[str]:
    """Sakila's lines with its own ``sakila_dojo`` create/use pointed at ``database`` instead."""
    quoted = "`" + database.replace("`", "``") + "`"
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if _SAKILA_CREATE.match(line):
                rewritten.append(line)
                yield f"CREATE DATABASE IF NOT EXISTS {quoted};\n"
            elif _SAKILA_USE.match(line):
                rewritten.append(line)
                yield f"USE {quoted};\n"
            else:
                yield line


def load_sakila(server: MariaDBServer, database: str) -> None:
    """Load Sakila into ``database`` (streamed, so the 3.5 MB script is never held in memory)."""
    sakila = shared_fixtures_dir() / "sakila" / "sakila.sql"
    rewritten: list[str] = []
    server.mysql_lines(None, _retarget_sakila(sakila, database, rewritten))
    if len(rewritten) < 2:
        raise AssertionError(f"{sakila} no longer has the create/use lines for {SAKILA_SOURCE_DATABASE}")
    rentals = int(server.mysql(database, "SELECT count(*) FROM rental").strip())
    if rentals != SAKILA_RENTALS:
        raise AssertionError(f"Sakila loaded {rentals} rentals, expected {SAKILA_RENTALS}")
