"""skip_unchanged against real servers: an unchanged database is skipped (journaled), and one
changed row, one DDL change, a sequence step, reset counters or a server restart are never skipped.
Where nothing can be proved (MariaDB without a binary log, a MongoDB standalone), every run dumps.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import data_files, events_named, password_file, run_cli, write_config
from servers.mariadb import MariaDBServer, running_mariadb
from servers.mongo import MongoServer, running_secantus
from servers.postgres import PostgresServer

from agent import journal
from agent.doctor import diagnose
from agent.manifest import manifest_path, read_manifest

KEEP_ALL = {"keep_last": 100, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0}


def _skips(storage: Path) -> int:
    entries, problems = journal.read_entries(storage)
    assert problems == []
    return sum(1 for entry in entries if entry.event == journal.Event.SKIPPED)


class Runs:
    """One job's backups, counted: dumped (a new file) or skipped (a journal line)."""

    def __init__(self, tmp_path: Path, job: dict[str, Any]) -> None:
        self.directory = tmp_path
        self.storage = tmp_path / "storage"
        self.config = write_config(tmp_path, {"main": {**job, "skip_unchanged": True, "retention": KEEP_ALL}})

    def backup(self) -> str:
        """'dumped' or 'skipped', checked against the files and the journal; the reason as logged."""
        files, skips = len(data_files(self.storage)), _skips(self.storage)
        assert run_cli(self.config, "backup") == 0
        dumped = len(data_files(self.storage)) - files
        skipped = _skips(self.storage) - skips
        assert (dumped, skipped) in ((1, 0), (0, 1))
        if skipped:
            (event,) = events_named(self.directory, "backup.skipped")[-1:]
            assert event["reason"] == "unchanged"
            return "skipped"
        return "dumped " + str(events_named(self.directory, "backup.change_check")[-1]["reason"])


# --------------------------------------------------------------------------------------------------
# PostgreSQL


def _pg_job(server: PostgresServer, tmp_path: Path, database: str) -> dict[str, Any]:
    return {
        "engine": "postgresql",
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "password_file": str(password_file(tmp_path, server.password)),
        "databases": [database],
        "include_globals": False,
    }


def _quiet(server: PostgresServer, database: str) -> None:
    """Until no backend is connected to `database` (a closed session's counts are then published)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with server.connect_superuser() as connection:
            (others,) = connection.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,)
            ).fetchone() or (1,)
        if others == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"sessions of {database} did not end")


def _pg(server: PostgresServer, database: str, *statements: str) -> None:
    with server.connect(database) as connection:
        for statement in statements:
            connection.execute(statement)


def test_postgres_skips_an_unchanged_database_and_dumps_every_change(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path
) -> None:
    _pg(
        pg_server,
        pg_database,
        "CREATE TABLE item (id int PRIMARY KEY, body text)",
        "INSERT INTO item SELECT g, 'row ' || g FROM generate_series(1, 500) g",
        "CREATE SEQUENCE invoice",
    )
    owner = f"owner_{pg_database[-8:]}"
    _pg(
        pg_server,
        pg_database,
        f'CREATE ROLE "{owner}"',
        "CREATE TABLE owned (x int)",
        f'ALTER TABLE owned OWNER TO "{owner}"',
    )
    runs = Runs(tmp_path, _pg_job(pg_server, tmp_path, pg_database))
    settled = lambda: _quiet(pg_server, pg_database)  # noqa: E731 - read as a step below
    settled()
    assert runs.backup() == "dumped no_backup"
    assert read_manifest(manifest_path(data_files(runs.storage)[0])).change_token is not None
    settled()
    assert runs.backup() == "skipped"
    assert runs.backup() == "skipped"  # reads of its own (the skip's checks, pg_dump's) are no change

    changes: list[tuple[str, Callable[[], None]]] = [
        ("one changed row", lambda: _pg(pg_server, pg_database, "UPDATE item SET body = 'x' WHERE id = 7")),
        ("one deleted row", lambda: _pg(pg_server, pg_database, "DELETE FROM item WHERE id = 8")),
        ("one DDL change", lambda: _pg(pg_server, pg_database, "ALTER TABLE item ADD COLUMN note text")),
        ("a comment", lambda: _pg(pg_server, pg_database, "COMMENT ON TABLE item IS 'the items'")),
        ("a truncate", lambda: _pg(pg_server, pg_database, "CREATE TABLE scratch (x int)", "TRUNCATE scratch")),
        ("a sequence step", lambda: _pg(pg_server, pg_database, "SELECT nextval('invoice')")),
        ("a database setting", lambda: _pg(pg_server, "postgres", f'ALTER DATABASE "{pg_database}" SET work_mem = 8192')),  # noqa: E501
        ("a renamed owner (a shared catalog only)", lambda: _pg(pg_server, "postgres", f'ALTER ROLE "{owner}" RENAME TO "{owner}_2"')),  # noqa: E501
    ]  # fmt: skip
    try:
        for what, change in changes:
            change()
            settled()
            assert runs.backup() == "dumped changed", what
            settled()
            assert runs.backup() == "skipped", what
    finally:
        _pg(
            pg_server,
            pg_database,
            "DROP TABLE owned",
            f'DROP ROLE IF EXISTS "{owner}"',
            f'DROP ROLE IF EXISTS "{owner}_2"',
        )


def test_postgres_dumps_a_row_changed_right_before_the_backup_by_a_session_still_open(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path
) -> None:
    _pg(pg_server, pg_database, "CREATE TABLE item (id int PRIMARY KEY, body text)", "INSERT INTO item VALUES (1, 'a')")
    runs = Runs(tmp_path, _pg_job(pg_server, tmp_path, pg_database))
    _quiet(pg_server, pg_database)
    assert runs.backup() == "dumped no_backup"
    _quiet(pg_server, pg_database)
    with pg_server.connect(pg_database) as application:  # its counts may not be published yet
        for attempt in range(3):
            application.execute("UPDATE item SET body = %s WHERE id = 1", (f"b{attempt}",))
            assert runs.backup() == "dumped no_token"
    _quiet(pg_server, pg_database)
    assert runs.backup() == "dumped no_previous_token"  # the one before proved nothing: one more dump
    _quiet(pg_server, pg_database)
    assert runs.backup() == "skipped"
    for attempt in range(3):  # a session that wrote and closed a moment ago: still there, or published
        _pg(pg_server, pg_database, f"UPDATE item SET body = 'c{attempt}' WHERE id = 1")
        assert runs.backup().startswith("dumped")


def test_postgres_reset_counters_or_a_restart_are_never_skipped(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path
) -> None:
    _pg(pg_server, pg_database, "CREATE TABLE item (id int)", "INSERT INTO item VALUES (1)")
    runs = Runs(tmp_path, _pg_job(pg_server, tmp_path, pg_database))
    _quiet(pg_server, pg_database)
    assert runs.backup() == "dumped no_backup"
    _quiet(pg_server, pg_database)
    assert runs.backup() == "skipped"

    _pg(pg_server, pg_database, "SELECT pg_stat_reset()")  # the counters start again from zero
    _quiet(pg_server, pg_database)
    assert runs.backup() == "dumped changed"
    _quiet(pg_server, pg_database)

    process = pg_server._process  # a crash: immediate shutdown, so the server starts with reset counters
    process.stop_signal = signal.SIGQUIT
    try:
        pg_server.stop()
    finally:
        process.stop_signal = signal.SIGINT
    pg_server.start()
    _quiet(pg_server, pg_database)
    assert runs.backup() == "dumped changed"
    _quiet(pg_server, pg_database)
    assert runs.backup() == "skipped"

    pg_server.stop()  # a clean restart keeps the counters; the server's start time still differs
    pg_server.start()
    _quiet(pg_server, pg_database)
    assert runs.backup() == "dumped changed"


def test_postgres_globals_are_always_dumped(pg_server: PostgresServer, pg_database: str, tmp_path: Path) -> None:
    job = {**_pg_job(pg_server, tmp_path, pg_database), "include_globals": True}
    runs = Runs(tmp_path, job)
    _quiet(pg_server, pg_database)
    assert run_cli(runs.config, "backup") == 0
    _quiet(pg_server, pg_database)
    assert run_cli(runs.config, "backup") == 0
    folders = sorted(path.parent.name for path in data_files(runs.storage))
    assert folders == ["_globals", "_globals", pg_database]
    assert _skips(runs.storage) == 1  # the database was skipped, its globals file never


# --------------------------------------------------------------------------------------------------
# MariaDB: the binary log


@pytest.fixture(scope="module")
def mariadb_binary_log() -> Iterator[MariaDBServer]:
    """A second throwaway MariaDB, this one with its binary log on."""
    with running_mariadb(binary_log=True) as server:
        yield server


def _mariadb_job(server: MariaDBServer, tmp_path: Path, database: str) -> dict[str, Any]:
    return {
        "engine": "mariadb",
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "password_file": str(password_file(tmp_path, server.password)),
        "databases": [database],
        "include_grants": False,
    }


def _doctor_says(config: Path) -> str:
    """What `doctor` says of skip_unchanged (one line, a warning when nothing can be proved)."""
    (finding,) = [item for item in diagnose(config).findings if item.message.startswith("skip_unchanged")]
    assert finding.ok and finding.warning == ("cannot prove" in finding.message)
    return finding.message


def _sql(server: MariaDBServer, database: str | None, *statements: str) -> None:
    with server.connect(database) as connection, connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)


def test_mariadb_with_a_binary_log_skips_an_unchanged_database_and_dumps_every_change(
    mariadb_binary_log: MariaDBServer, tmp_path: Path
) -> None:
    server = mariadb_binary_log
    _sql(server, None, "CREATE DATABASE shop", "CREATE DATABASE other")
    _sql(
        server,
        "shop",
        "CREATE TABLE item (id INT PRIMARY KEY, body TEXT)",
        "INSERT INTO item VALUES (1, 'a'), (2, 'b')",
    )
    runs = Runs(tmp_path, _mariadb_job(server, tmp_path, "shop"))
    assert _doctor_says(runs.config) == "skip_unchanged: the server can prove 'shop' unchanged now"
    assert runs.backup() == "dumped no_backup"
    assert read_manifest(manifest_path(data_files(runs.storage)[0])).change_token is not None
    assert runs.backup() == "skipped"
    changes: list[tuple[str, Callable[[], None]]] = [
        ("one changed row", lambda: _sql(server, "shop", "UPDATE item SET body = 'x' WHERE id = 1")),
        ("one DDL change", lambda: _sql(server, "shop", "ALTER TABLE item ADD COLUMN note TEXT")),
        ("a view", lambda: _sql(server, "shop", "CREATE VIEW item_ids AS SELECT id FROM item")),
        ("a write in another database of the server", lambda: _sql(server, "other", "CREATE TABLE t (x INT)")),
        ("a restart", lambda: (server.stop(), server.start())),  # type: ignore[func-returns-value]
    ]
    for what, change in changes:
        change()
        assert runs.backup() == "dumped changed", what
        assert runs.backup() == "skipped", what


def test_mariadb_without_a_binary_log_proves_nothing_and_always_dumps(
    mariadb_server: MariaDBServer, mariadb_database: str, tmp_path: Path
) -> None:
    _sql(mariadb_server, mariadb_database, "CREATE TABLE item (id INT)", "INSERT INTO item VALUES (1)")
    runs = Runs(tmp_path, _mariadb_job(mariadb_server, tmp_path, mariadb_database))
    assert [runs.backup() for _ in range(3)] == ["dumped no_token"] * 3
    assert all(read_manifest(manifest_path(path)).change_token is None for path in data_files(runs.storage))
    assert _doctor_says(runs.config).startswith(f"skip_unchanged: the server cannot prove {mariadb_database!r}")


# --------------------------------------------------------------------------------------------------
# MongoDB: the replica set's oplog


@pytest.fixture(scope="module")
def mongo_standalone() -> Iterator[MongoServer]:
    """SecantusDB as a standalone server: no replica set, no oplog."""
    with running_secantus(auth=False, standalone=True) as server:
        yield server


def _mongo_job(server: MongoServer, database: str) -> dict[str, Any]:
    return {"engine": "mongodb", "uri": server.uri(), "databases": [database], "tool": "builtin"}


def test_mongodb_replica_set_skips_an_unchanged_database_and_dumps_every_change(
    mongo_server_noauth: MongoServer, tmp_path: Path
) -> None:
    client = mongo_server_noauth.client()
    database = f"skip_{tmp_path.name[-12:]}"
    try:
        client[database].item.insert_many([{"_id": number, "body": f"row {number}"} for number in range(50)])
        runs = Runs(tmp_path, _mongo_job(mongo_server_noauth, database))
        assert runs.backup() == "dumped no_backup"
        assert runs.backup() == "skipped"
        changes: list[tuple[str, Callable[[], object]]] = [
            ("one changed document", lambda: client[database].item.update_one({"_id": 7}, {"$set": {"body": "x"}})),
            ("one new index", lambda: client[database].item.create_index("body")),
            ("one dropped collection", lambda: client[database].drop_collection("item")),
        ]
        for what, change in changes:
            change()
            assert runs.backup() == "dumped changed", what
            assert runs.backup() == "skipped", what
    finally:
        client.drop_database(database)
        client.close()


def test_mongodb_standalone_has_no_oplog_so_every_run_dumps(mongo_standalone: MongoServer, tmp_path: Path) -> None:
    client = mongo_standalone.client()
    try:
        assert "setName" not in client.admin.command("hello")
        client.shop.item.insert_one({"_id": 1})
        runs = Runs(tmp_path, _mongo_job(mongo_standalone, "shop"))
        assert [runs.backup() for _ in range(3)] == ["dumped no_token"] * 3
    finally:
        client.close()
