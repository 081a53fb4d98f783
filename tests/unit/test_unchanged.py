"""The skip decision: only an equal token from the same server, engine, format and database skips."""

from __future__ import annotations

import msgspec

from agent.engines.base import DumpTarget
from agent.manifest import Manifest
from agent.unchanged import CHANGED, NO_BACKUP, NO_PREVIOUS_TOKEN, NO_TOKEN, OTHER_SOURCE, why_not_unchanged

TOKEN = {"tuples": "10/2/1", "server_started": "2026-12-01 10:00:00+00", "dump_settings": "ab"}
TARGET = DumpTarget("shop", format="postgresql-custom")
PREVIOUS = Manifest(
    job="main",
    engine="postgresql",
    kind="database",  # type: ignore[arg-type]
    database="shop",
    file="main.shop.20261201T100000Z.pgdump.zst",
    host="app1",
    server="127.0.0.1:5432",
    server_version="15.14",
    tool="pg_dump",
    tool_version="pg_dump (PostgreSQL) 15.14",
    format="postgresql-custom",
    compression="zstd",
    compression_level=3,
    started_at="2026-12-01T10:00:00+00:00",
    finished_at="2026-12-01T10:00:01+00:00",
    duration_seconds=1.0,
    raw_bytes=100,
    stored_bytes=50,
    sha256="0" * 64,
    run_id="abc",
    agent_version="1",
    change_token=dict(TOKEN),
)


def decide(token: dict[str, str] | None, previous: Manifest | None, server: str = "127.0.0.1:5432") -> str | None:
    return why_not_unchanged(token, previous, engine="postgresql", server=server, target=TARGET)


def test_only_an_equal_token_of_the_same_source_means_unchanged() -> None:
    assert decide(dict(TOKEN), PREVIOUS) is None
    assert decide(None, PREVIOUS) == NO_TOKEN
    assert decide(dict(TOKEN), None) == NO_BACKUP
    assert decide(dict(TOKEN), msgspec.structs.replace(PREVIOUS, change_token=None)) == NO_PREVIOUS_TOKEN
    assert decide({**TOKEN, "tuples": "11/2/1"}, PREVIOUS) == CHANGED
    assert decide({**TOKEN, "dump_settings": "cd"}, PREVIOUS) == CHANGED  # a new table scope, tool or argument
    assert decide({k: v for k, v in TOKEN.items() if k != "tuples"}, PREVIOUS) == CHANGED


def test_a_backup_of_another_server_engine_format_or_database_is_never_relied_on() -> None:
    assert decide(dict(TOKEN), PREVIOUS, server="10.0.0.2:5432") == OTHER_SOURCE
    for field, value in (("engine", "mysql"), ("format", "sql"), ("database", "crm"), ("kind", "globals")):
        assert decide(dict(TOKEN), msgspec.structs.replace(PREVIOUS, **{field: value})) == OTHER_SOURCE, field
