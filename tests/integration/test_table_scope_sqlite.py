"""Table scope on SQLite: the dump is a filtered copy, so a left-out table's rows are nowhere in the file,
a schema-only table keeps its indexes and triggers, and the source file is never touched."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from agent_helpers import data_files, decompressed, run_cli, write_config

from agent.manifest import manifest_path, read_manifest

SECRET = "card-4111-1111-1111-1111"
SCHEMA = f"""
CREATE TABLE account (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT);
CREATE TABLE payment_card (id INTEGER PRIMARY KEY, account_id INTEGER REFERENCES account(id), number TEXT);
CREATE TABLE session (id INTEGER PRIMARY KEY, account_id INTEGER REFERENCES account(id) ON DELETE CASCADE, token TEXT);
CREATE INDEX session_token ON session(token);
CREATE TABLE audit (what TEXT);
CREATE TRIGGER session_gone AFTER DELETE ON session BEGIN INSERT INTO audit VALUES ('session ' || old.id); END;
CREATE VIEW named_sessions AS SELECT account.name, session.token FROM session JOIN account ON account.id = account_id;
INSERT INTO account (name) VALUES ('ann'), ('bob');
INSERT INTO payment_card VALUES (1, 1, '{SECRET}');
INSERT INTO session VALUES (1, 1, 'token-a'), (2, 2, 'token-b');
INSERT INTO audit VALUES ('created');
"""


def test_a_sqlite_dump_drops_excluded_tables_and_empties_schema_only_ones_in_its_copy_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = tmp_path / "app.db"
    with sqlite3.connect(database) as connection:
        connection.executescript(SCHEMA)
    connection.close()
    source_hash = hashlib.sha256(database.read_bytes()).hexdigest()
    job = {
        "engine": "sqlite",
        "databases": [str(database)],
        "exclude_tables": ["payment_*", "nothing_like_this"],
        "schema_only_tables": ["session"],
    }
    config = write_config(tmp_path, {"app": job})

    assert run_cli(config, "backup") == 0
    (dump,) = data_files(tmp_path / "storage")
    manifest = read_manifest(manifest_path(dump))
    assert manifest.scope is not None
    assert (manifest.scope.dumped, manifest.scope.schema_only) == (["account", "audit"], ["session"])
    assert manifest.scope.excluded == ["payment_card"]
    assert manifest.counts == {"account": 2, "audit": 1, "session": 0}
    assert any('exclude_tables: "nothing_like_this" matches no table' in warning for warning in manifest.warnings)
    assert SECRET.encode() not in decompressed(dump) and b"token-a" not in decompressed(dump)
    assert hashlib.sha256(database.read_bytes()).hexdigest() == source_hash

    restored = tmp_path / "restored.db"
    assert run_cli(config, "restore", "--job", "app", "--database", str(database), "--to-file", str(restored)) == 0
    with sqlite3.connect(restored) as copy:
        objects = {(kind, name) for kind, name in copy.execute("SELECT type, name FROM sqlite_master")}
        assert ("table", "payment_card") not in objects
        assert {("index", "session_token"), ("trigger", "session_gone"), ("view", "named_sessions")} <= objects
        assert copy.execute("SELECT count(*) FROM session").fetchone() == (0,)
        assert copy.execute("SELECT what FROM audit").fetchall() == [("created",)]  # no trigger fired
        assert copy.execute("SELECT name FROM account ORDER BY id").fetchall() == [("ann",), ("bob",)]
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    copy.close()
    capsys.readouterr()
    assert run_cli(config, "check-config") == 0
    assert (
        f"warning: database '{database}': exclude_tables: \"nothing_like_this\" matches no table"
        in capsys.readouterr().out
    )


def test_a_per_file_scope_replaces_the_jobs(tmp_path: Path) -> None:
    first, second = tmp_path / "one.db", tmp_path / "two.db"
    for path in (first, second):
        with sqlite3.connect(path) as connection:
            connection.executescript(SCHEMA)
        connection.close()
    job = {"engine": "sqlite", "databases": [str(first), str(second)], "exclude_tables": ["payment_card"]}
    config = write_config(tmp_path, {"app": job})
    with config.open("a", encoding="utf-8") as handle:
        handle.write(f'\n[jobs.app.scope."{second}"]\ntables = ["account"]\n')

    assert run_cli(config, "backup") == 0
    counts = {
        read_manifest(manifest_path(dump)).database: read_manifest(manifest_path(dump)).counts
        for dump in data_files(tmp_path / "storage")
    }
    assert counts[str(first)] == {"account": 2, "audit": 1, "session": 2}
    assert counts[str(second)] == {"account": 2}
