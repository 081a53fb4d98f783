"""A gentle dump slows while the database is busy (item 3 of issue 16), against real throwaway servers.

Sessions held busy (`pg_sleep`, `SELECT SLEEP()`) during a dump push the server over its
`busy_threshold`: the run logs `backup.paced reason=database_busy` once with the figures, still
completes, and the dump restores equal. The same dump on an idle server is never paced for that.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from agent_helpers import data_files, decompressed, events_named, password_file, run_cli, write_config
from psycopg import sql
from servers.mariadb import MariaDBServer
from servers.mongo import MongoServer
from servers.postgres import PostgresServer
from test_mongo import mongo_job
from test_mysql import drop_database as drop_mariadb_database
from test_mysql import execute, fingerprints, mariadb_client, mysql_job
from test_postgres import drop_database, pg_job, pg_restore_into, table_fingerprints

HELD = 3  # busy sessions, over a threshold of 2
THRESHOLD = 2
# slow storage so the dump streams for several seconds: long enough for the sampler and the pacer
STORAGE = {"compression": "none", "max_write_rate": "1MiB/s"}
ROWS = 20_000  # ~3 MB of rows


@contextmanager
def busy_sessions(hold: Callable[[threading.Event], None], count: int, wait_busy: Callable[[], bool]) -> Iterator[None]:
    """`count` threads each holding a session busy until the block ends."""
    release = threading.Event()
    threads = [threading.Thread(target=hold, args=(release,), daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while not wait_busy():
        assert time.monotonic() < deadline, "the busy sessions never became active"
        time.sleep(0.1)
    try:
        yield
    finally:
        release.set()
        for thread in threads:
            thread.join(timeout=60)


@pytest.fixture
def copy_name(mariadb_server: MariaDBServer) -> Iterator[str]:
    """A MariaDB database name to restore into; dropped afterwards."""
    name = f"t_busy_copy_{secrets.token_hex(4)}"
    yield name
    drop_mariadb_database(mariadb_server, name)


def paced_for_busy(directory: Path) -> list[dict[str, object]]:
    return [event for event in events_named(directory, "backup.paced") if event.get("reason") == "database_busy"]


# --------------------------------------------------------------------------------------------------
# PostgreSQL


def _fill_postgres(server: PostgresServer, database: str) -> None:
    server.psql(
        database,
        f"CREATE TABLE item (id int PRIMARY KEY, body text);"
        f"INSERT INTO item SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, {ROWS}) g;",
    )


def _postgres_active(server: PostgresServer) -> int:
    with server.connect_superuser() as connection:
        row = connection.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'SELECT pg_sleep%'"
        ).fetchone()
    return int(row[0]) if row else 0


def test_a_busy_postgresql_slows_the_dump_which_logs_it_once_and_still_restores_equal(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path
) -> None:
    _fill_postgres(pg_server, pg_database)
    before = table_fingerprints(pg_server, pg_database)
    job = pg_job(pg_server, tmp_path, [pg_database], include_globals=False, busy_threshold=THRESHOLD)
    config = write_config(tmp_path, {"main": job}, storage=STORAGE)

    def hold(release: threading.Event) -> None:
        with pg_server.connect() as connection:
            while not release.is_set():
                connection.execute("SELECT pg_sleep(0.5)")

    with busy_sessions(hold, HELD, lambda: _postgres_active(pg_server) >= HELD):
        assert run_cli(config, "backup", "--job", "main") == 0

    paced = paced_for_busy(tmp_path)
    assert len(paced) == 1, paced  # one episode: the load never went away during the dump
    assert paced[0]["signal"] == "active client backends"
    assert paced[0]["threshold"] == THRESHOLD
    assert paced[0]["busy"] == HELD  # pg_dump's backend and the sampler's own are not counted
    finished = events_named(tmp_path, "backup.finished")
    assert finished and float(finished[0]["paced_database_busy_seconds"]) > 0
    (dump,) = data_files(tmp_path / "storage")
    copy = f"{pg_database}_copy"
    try:
        pg_restore_into(pg_server, dump, copy)
        assert table_fingerprints(pg_server, copy) == before
    finally:
        drop_database(pg_server, copy)


def test_an_idle_postgresql_never_paces_the_dump_for_being_busy(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path
) -> None:
    _fill_postgres(pg_server, pg_database)
    job = pg_job(pg_server, tmp_path, [pg_database], include_globals=False, busy_threshold=THRESHOLD)
    config = write_config(tmp_path, {"main": job}, storage=STORAGE)
    assert run_cli(config, "backup", "--job", "main") == 0
    assert paced_for_busy(tmp_path) == []
    finished = events_named(tmp_path, "backup.finished")
    assert finished and "paced_database_busy_seconds" not in finished[0]


# --------------------------------------------------------------------------------------------------
# MariaDB


def _fill_mariadb(server: MariaDBServer, database: str) -> None:
    execute(
        server,
        database,
        "CREATE TABLE item (id INT PRIMARY KEY, body TEXT) ENGINE=InnoDB",
        f"INSERT INTO item SELECT seq, REPEAT(MD5(seq), 4) FROM seq_1_to_{ROWS}",
    )


def _mariadb_sleeping(server: MariaDBServer) -> int:
    with server.connect_root() as connection, connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT SLEEP%'")
        return int(cursor.fetchone()[0])


def test_a_busy_mariadb_slows_the_dump_which_logs_it_once_and_still_restores_equal(
    mariadb_server: MariaDBServer, mariadb_database: str, copy_name: str, tmp_path: Path
) -> None:
    _fill_mariadb(mariadb_server, mariadb_database)
    before = fingerprints(mariadb_server, mariadb_database)
    job = mysql_job(mariadb_server, tmp_path, [mariadb_database], busy_threshold=THRESHOLD)
    config = write_config(tmp_path, {"main": job}, storage=STORAGE)

    def hold(release: threading.Event) -> None:
        with mariadb_server.connect() as connection, connection.cursor() as cursor:
            while not release.is_set():
                cursor.execute("SELECT SLEEP(0.5)")

    with busy_sessions(hold, HELD, lambda: _mariadb_sleeping(mariadb_server) >= HELD):
        assert run_cli(config, "backup", "--job", "main") == 0

    paced = paced_for_busy(tmp_path)
    assert len(paced) == 1, paced
    assert paced[0]["signal"] == "running threads"
    assert paced[0]["threshold"] == THRESHOLD
    assert paced[0]["busy"] == HELD  # the held sessions, not the sampler's own thread or the dump's SELECT
    (dump,) = data_files(tmp_path / "storage")
    execute(mariadb_server, None, f"CREATE DATABASE `{copy_name}`")
    assert mariadb_client(mariadb_server, tmp_path, copy_name, decompressed(dump)).returncode == 0
    assert fingerprints(mariadb_server, copy_name) == before


def test_an_idle_mariadb_never_paces_the_dump_for_being_busy(
    mariadb_server: MariaDBServer, mariadb_database: str, tmp_path: Path
) -> None:
    _fill_mariadb(mariadb_server, mariadb_database)
    job = mysql_job(mariadb_server, tmp_path, [mariadb_database], busy_threshold=THRESHOLD)
    config = write_config(tmp_path, {"main": job}, storage=STORAGE)
    assert run_cli(config, "backup", "--job", "main") == 0
    assert paced_for_busy(tmp_path) == []


# --------------------------------------------------------------------------------------------------
# MongoDB (the SecantusDB stand-in)


def test_a_mongodb_server_without_a_lock_queue_figure_is_said_once_to_be_unsampled(
    mongo_server: MongoServer, mongo_database: str, tmp_path: Path
) -> None:
    with mongo_server.client() as client:
        client[mongo_database]["items"].insert_many([{"n": index} for index in range(50)])
    job = mongo_job(mongo_server, tmp_path, [mongo_database], tool="builtin")
    config = write_config(tmp_path, {"docs": job})
    assert run_cli(config, "backup", "--job", "docs") == 0
    (unsampled,) = events_named(tmp_path, "backup.busy_unavailable")
    assert unsampled["signal"] == "queued operations"
    assert unsampled["error"] == "cannot sample"  # its serverStatus answers, without globalLock.currentQueue
    assert paced_for_busy(tmp_path) == []


def test_doctor_warns_when_a_postgresql_role_cannot_see_other_sessions_for_the_busy_signal(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    role, password = f"reader_{secrets.token_hex(4)}", secrets.token_hex(12)
    with pg_server.connect(pg_database) as connection:
        connection.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE pg_read_all_data").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
    secret_folder = tmp_path / "role"
    secret_folder.mkdir()
    job = pg_job(pg_server, tmp_path, [pg_database], include_globals=False, user=role)
    job["password_file"] = str(password_file(secret_folder, password))
    config = write_config(tmp_path, {"main": job})

    def warnings() -> list[str]:
        capsys.readouterr()
        assert run_cli(config, "doctor") == 0  # a warning is not a problem
        return [line for line in capsys.readouterr().out.splitlines() if line.startswith("WARNING")]

    try:
        (warning,) = warnings()
        assert "busy_threshold" in warning and f"GRANT pg_read_all_stats TO {role}" in warning
        with pg_server.connect(pg_database) as connection:
            connection.execute(sql.SQL("GRANT pg_read_all_stats TO {}").format(sql.Identifier(role)))
        assert warnings() == []
    finally:
        with pg_server.connect(pg_database) as connection:
            connection.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_postgresql_counts_statements_and_busy_transactions_but_not_a_transaction_left_open(
    pg_server: PostgresServer,
) -> None:
    from agent.engines.postgres.busy import ActiveBackends

    with pg_server.connect() as sampler, pg_server.connect() as left_open, pg_server.connect() as sleeping:
        probe = ActiveBackends(sampler, threshold=2)
        baseline = probe.sample()
        assert baseline is not None
        left_open.execute("BEGIN")
        left_open.execute("SELECT 1")
        time.sleep(2.5)  # idle in transaction for longer than a busy client's round trip
        assert probe.sample() == baseline
        worker = threading.Thread(target=lambda: sleeping.execute("SELECT pg_sleep(2)"))
        worker.start()
        time.sleep(0.5)
        assert probe.sample() == baseline + 1
        worker.join()
        left_open.execute("ROLLBACK")
