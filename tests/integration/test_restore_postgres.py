"""`restore` and `drill` for PostgreSQL through the CLI: the newest good backup goes back in, proven."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from agent_helpers import data_files, events_named, run_cli, write_config
from psycopg import sql
from servers.postgres import PostgresServer, running_postgres
from test_postgres import SCHEMA, drop_database, pg_job, table_fingerprints

from agent import journal
from agent.drill import scratch_name
from agent.manifest import manifest_path

SCRATCH_QUERY = "SELECT datname FROM pg_database WHERE position('__drill_' in datname) > 0"


def _database_exists(server: PostgresServer, name: str) -> bool:
    with server.connect() as connection:
        return connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


@pytest.fixture
def backed_up(pg_server: PostgresServer, pg_database: str, tmp_path: Path) -> Path:
    pg_server.psql(pg_database, SCHEMA)
    config = write_config(tmp_path, {"main": pg_job(pg_server, tmp_path, [pg_database])})
    assert run_cli(config, "backup") == 0
    return config


def test_restore_into_a_new_database_gives_back_the_same_rows(
    pg_server: PostgresServer, pg_database: str, backed_up: Path
) -> None:
    target = f"{pg_database}_copy"
    try:
        assert run_cli(backed_up, "restore", "--job", "main", "--database", pg_database, "--into", target) == 0
        assert table_fingerprints(pg_server, target) == table_fingerprints(pg_server, pg_database)
    finally:
        drop_database(pg_server, target)


def test_restore_refuses_a_database_that_holds_data_unless_forced(
    pg_server: PostgresServer, pg_database: str, backed_up: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = table_fingerprints(pg_server, pg_database)
    assert run_cli(backed_up, "restore", "--job", "main", "--database", pg_database, "--into", pg_database) == 1
    assert "already holds data" in capsys.readouterr().err
    assert table_fingerprints(pg_server, pg_database) == before


def test_a_dry_run_says_what_it_would_do_and_changes_nothing(
    pg_server: PostgresServer, pg_database: str, backed_up: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = f"{pg_database}_dry"
    assert run_cli(backed_up, "restore", "--job", "main", "--database", pg_database, "--into", target, "--dry-run") == 0
    out = capsys.readouterr().out
    assert f"create database {target!r}" in out and "sha256" in out
    assert not _database_exists(pg_server, target)


def test_restore_at_a_time_picks_the_backup_made_before_it(
    pg_server: PostgresServer, pg_database: str, backed_up: Path
) -> None:
    first = table_fingerprints(pg_server, pg_database)
    time.sleep(1.1)
    cutoff = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    time.sleep(1.1)
    pg_server.psql(pg_database, "DELETE FROM audit.event WHERE id > 10")
    assert run_cli(backed_up, "backup") == 0
    target = f"{pg_database}_at"
    try:
        assert (
            run_cli(backed_up, "restore", "--job", "main", "--database", pg_database, "--at", cutoff, "--into", target)
            == 0
        )
        assert table_fingerprints(pg_server, target) == first
    finally:
        drop_database(pg_server, target)


def test_a_single_table_can_be_restored(pg_server: PostgresServer, pg_database: str, backed_up: Path) -> None:
    target = f"{pg_database}_one"
    try:
        with pg_server.connect() as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target)))
        pg_server.psql(target, "CREATE SCHEMA audit")
        assert (
            run_cli(
                backed_up,
                "restore",
                "--job",
                "main",
                "--database",
                pg_database,
                "--into",
                target,
                "--table",
                "event",
                "--force",
            )
            == 0
        )
        with pg_server.connect(target) as connection:
            assert connection.execute("SELECT count(*) FROM audit.event").fetchone() == (1000,)
            assert connection.execute("SELECT to_regclass('shop.customer')").fetchone() == (None,)
    finally:
        drop_database(pg_server, target)


def test_to_file_writes_a_plain_archive_pg_restore_can_list(
    pg_server: PostgresServer, pg_database: str, backed_up: Path, tmp_path: Path
) -> None:
    out = tmp_path / "plain.pgdump"
    assert run_cli(backed_up, "restore", "--job", "main", "--database", pg_database, "--to-file", str(out)) == 0
    assert out.read_bytes()[:5] == b"PGDMP"
    assert run_cli(backed_up, "restore", "--job", "main", "--database", pg_database, "--to-file", str(out)) == 1


def test_a_tampered_backup_is_not_restored(
    pg_server: PostgresServer, pg_database: str, backed_up: Path, tmp_path: Path
) -> None:
    (dump,) = [path for path in data_files(tmp_path / "storage") if path.parent.name == pg_database]
    dump.chmod(0o640)
    data = bytearray(dump.read_bytes())
    data[-10] ^= 1
    dump.write_bytes(bytes(data))
    target = f"{pg_database}_bad"
    assert run_cli(backed_up, "restore", "--job", "main", "--database", pg_database, "--into", target) == 1
    assert not _database_exists(pg_server, target)


def test_restore_with_globals_onto_a_fresh_server(pg_server: PostgresServer, pg_database: str, tmp_path: Path) -> None:
    pg_server.psql(
        pg_database,
        SCHEMA + "CREATE ROLE app_reader; GRANT USAGE ON SCHEMA shop TO app_reader;"
        "GRANT SELECT ON shop.customer TO app_reader;",
    )
    try:
        config = write_config(tmp_path, {"main": pg_job(pg_server, tmp_path, [pg_database])})
        assert run_cli(config, "backup") == 0
        with running_postgres() as fresh:
            fresh_config = write_config(tmp_path, {"main": pg_job(fresh, tmp_path, [pg_database])})
            assert (
                run_cli(
                    fresh_config,
                    "restore",
                    "--job",
                    "main",
                    "--database",
                    pg_database,
                    "--into",
                    "shop",
                    "--with-globals",
                )
                == 0
            )
            with fresh.connect("shop") as connection:
                granted = connection.execute(
                    "SELECT has_table_privilege('app_reader', 'shop.customer', 'SELECT')"
                ).fetchone()
            assert granted == (True,)
            assert table_fingerprints(fresh, "shop") == table_fingerprints(pg_server, pg_database)
    finally:
        with pg_server.connect() as connection:
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(pg_database)))
            connection.execute("DROP ROLE IF EXISTS app_reader")


def test_a_drill_passes_on_a_good_backup_and_leaves_no_scratch_database(
    pg_server: PostgresServer, pg_database: str, backed_up: Path, tmp_path: Path
) -> None:
    assert run_cli(backed_up, "drill", "--job", "main") == 0
    assert [event["database"] for event in events_named(tmp_path, "drill.passed")] == [pg_database]
    with pg_server.connect() as connection:
        left = connection.execute(SCRATCH_QUERY).fetchall()
    assert left == []
    entries, problems = journal.read_entries(tmp_path / "storage")
    assert problems == [] and entries[-1]["event"] == "drill" and entries[-1]["result"] == "passed"


def test_a_drill_fails_naming_the_table_whose_count_differs(
    pg_server: PostgresServer, pg_database: str, backed_up: Path, tmp_path: Path
) -> None:
    (dump,) = [path for path in data_files(tmp_path / "storage") if path.parent.name == pg_database]
    manifest_file = manifest_path(dump)
    manifest_file.chmod(0o640)
    document = json.loads(manifest_file.read_text())
    document["counts"]["audit.event"] = 999
    manifest_file.write_text(json.dumps(document))
    assert run_cli(backed_up, "drill", "--job", "main") == 1
    (failure,) = events_named(tmp_path, "drill.failed")
    assert any("audit.event" in difference for difference in failure["differences"])
    with pg_server.connect() as connection:
        left = connection.execute(SCRATCH_QUERY).fetchall()
    assert left == []


def test_a_scratch_database_left_by_a_crashed_drill_is_dropped_at_the_next_drill(
    pg_server: PostgresServer, pg_database: str, backed_up: Path
) -> None:
    leftover = scratch_name(pg_database, datetime(2026, 1, 1, tzinfo=UTC))
    with pg_server.connect() as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(leftover)))
    assert run_cli(backed_up, "drill", "--job", "main") == 0
    assert not _database_exists(pg_server, leftover)
    assert _database_exists(pg_server, pg_database)


def test_target_url_restores_onto_another_server_with_the_jobs_password(
    pg_server: PostgresServer, pg_database: str, backed_up: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_postgres() as other:
        with other.connect_superuser() as connection:
            connection.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(other.user), sql.Literal(pg_server.password))
            )
        url = f"postgresql://{other.user}@{other.host}:{other.port}"
        assert (
            run_cli(
                backed_up, "restore", "--job", "main", "--database", pg_database, "--into", "copy", "--target-url", url
            )
            == 0
        )
        with other.connect_superuser() as connection:
            connection.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(other.user), sql.Literal(other.password))
            )
        assert table_fingerprints(other, "copy") == table_fingerprints(pg_server, pg_database)
    assert not _database_exists(pg_server, "copy")
    capsys.readouterr()
    assert (
        run_cli(
            backed_up,
            "restore",
            "--job",
            "main",
            "--database",
            pg_database,
            "--into",
            "x",
            "--target-url",
            f"postgresql://u:hunter2@{pg_server.host}",
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "must not contain a password" in err and "hunter2" not in err
    assert (
        run_cli(
            backed_up,
            "restore",
            "--job",
            "main",
            "--database",
            pg_database,
            "--into",
            "x",
            "--target-url",
            "mysql://u@127.0.0.1",
        )
        == 2
    )
