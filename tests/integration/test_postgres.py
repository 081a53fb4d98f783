"""PostgreSQL backups through the CLI against a throwaway server: round trips, names, failures, secrets."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from agent_helpers import (
    data_files,
    decompressed,
    events_named,
    log_events,
    password_file,
    run_cli,
    stored_files,
    watching_processes,
    write_config,
)
from psycopg import sql
from servers.fixtures_data import load_pagila
from servers.postgres import PostgresServer

from agent import catalog
from agent.manifest import manifest_path, read_manifest

SCHEMA = """
CREATE SCHEMA shop;
CREATE SCHEMA audit;
CREATE SEQUENCE shop.invoice_number START 1000;
CREATE TABLE shop.customer (
    id serial PRIMARY KEY, name text NOT NULL, photo bytea, profile jsonb, created timestamptz DEFAULT now()
);
CREATE TABLE audit.event (id bigserial PRIMARY KEY, customer_id int REFERENCES shop.customer(id), payload json);
CREATE TABLE public."Odd Name" ("select" int, "ünï" text);
INSERT INTO shop.customer (name, photo, profile)
SELECT 'Kunde ' || g || ' 🚀 ünïcödé', decode(lpad(to_hex(g), 8, '0') || '00ff7f80', 'hex'),
       jsonb_build_object('n', g, 'tags', jsonb_build_array('a', 'b'), 'quote', 'it''s')
FROM generate_series(1, 300) AS g;
INSERT INTO shop.customer (name, photo, profile) VALUES ('nulls', NULL, NULL);
INSERT INTO audit.event (customer_id, payload) SELECT (g % 300) + 1, '{"x": [1, 2, 3]}' FROM generate_series(1, 1000) g;
INSERT INTO public."Odd Name" VALUES (1, E'line\\nbreak'), (2, NULL);
SELECT setval('shop.invoice_number', 4242);
CREATE VIEW shop.big_customers AS SELECT id, name FROM shop.customer WHERE id > 100;
CREATE FUNCTION shop.next_invoice() RETURNS bigint LANGUAGE sql AS $$ SELECT nextval('shop.invoice_number') $$;
"""


def _tables(server: PostgresServer, database: str) -> list[tuple[str, str]]:
    with server.connect(database) as connection:
        rows = connection.execute(
            "SELECT schemaname, tablename FROM pg_tables "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
        ).fetchall()
    return [(str(schema), str(table)) for schema, table in rows]


def table_fingerprints(server: PostgresServer, database: str) -> dict[str, tuple[int, str]]:
    """Row count and an order-independent checksum of every table's rows."""
    result: dict[str, tuple[int, str]] = {}
    with server.connect(database) as connection:
        for schema, table in _tables(server, database):
            query = sql.SQL(
                "SELECT count(*), coalesce(md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))), '') FROM {}.{} t"
            ).format(sql.Identifier(schema), sql.Identifier(table))
            row = connection.execute(query).fetchone()
            assert row is not None
            result[f"{schema}.{table}"] = (int(row[0]), str(row[1]))
    return result


def pg_restore_into(server: PostgresServer, dump: Path, database: str) -> None:
    with server.connect_superuser() as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    archive = dump.with_name("restore-input.pgdump")
    archive.write_bytes(decompressed(dump))
    subprocess.run(
        [
            str(Path(server.bin_dir) / "pg_restore"),
            "--no-owner",
            "--exit-on-error",
            "-h",
            server.socket_dir,
            "-p",
            str(server.port),
            "-U",
            server.superuser,
            "-d",
            database,
            str(archive),
        ],
        check=True,
        capture_output=True,
    )
    archive.unlink()


def drop_database(server: PostgresServer, database: str) -> None:
    server.start()
    with server.connect_superuser() as connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))


def pg_job(server: PostgresServer, tmp_path: Path, databases: object, **extra: object) -> dict[str, object]:
    job: dict[str, object] = {
        "engine": "postgresql",
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "password_file": str(password_file(tmp_path, server.password)),
        "databases": databases,
    }
    job.update(extra)
    return job


def test_a_database_round_trips_through_backup_and_pg_restore(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path
) -> None:
    pg_server.psql(pg_database, SCHEMA)
    before = table_fingerprints(pg_server, pg_database)
    config = write_config(tmp_path, {"main": pg_job(pg_server, tmp_path, [pg_database])})

    assert run_cli(config, "backup") == 0

    dumps = [path for path in data_files(tmp_path / "storage") if path.parent.name == pg_database]
    assert len(dumps) == 1
    dump = dumps[0]
    assert dump.name.startswith(f"main.{pg_database}.") and dump.name.endswith(".pgdump.zst")
    assert stat.S_IMODE(dump.stat().st_mode) == 0o440
    manifest = read_manifest(manifest_path(dump))
    assert manifest.database == pg_database and manifest.format == "postgresql-custom"
    assert manifest.counts["shop.customer"] == 301 and manifest.counts["audit.event"] == 1000
    assert manifest.counts_consistent is True
    assert manifest.server_version.startswith("15") and "pg_dump" in manifest.tool_version
    restored = f"{pg_database}_restored"
    try:
        pg_restore_into(pg_server, dump, restored)
        assert table_fingerprints(pg_server, restored) == before
        with pg_server.connect(restored) as connection:
            assert connection.execute("SELECT shop.next_invoice()").fetchone() == (4243,)
            assert connection.execute("SELECT count(*) FROM shop.big_customers").fetchone() == (201,)
    finally:
        drop_database(pg_server, restored)
    assert [e["database"] for e in events_named(tmp_path, "backup.finished")].count(pg_database) == 1


def test_the_globals_are_dumped_once_per_run_and_verify(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path, {"main": pg_job(pg_server, tmp_path, [pg_database])})
    assert run_cli(config, "backup") == 0
    globals_files = [path for path in data_files(tmp_path / "storage") if path.parent.name == "_globals"]
    assert len(globals_files) == 1
    text = decompressed(globals_files[0]).decode()
    assert f"CREATE ROLE {pg_server.user}" in text
    assert run_cli(config, "verify") == 0


@pytest.mark.slow
def test_the_pagila_sample_survives_a_round_trip(pg_server: PostgresServer, pg_database: str, tmp_path: Path) -> None:
    load_pagila(pg_server, pg_database)
    before = table_fingerprints(pg_server, pg_database)
    config = write_config(tmp_path, {"main": pg_job(pg_server, tmp_path, [pg_database], include_globals=False)})
    assert run_cli(config, "backup") == 0
    (dump,) = data_files(tmp_path / "storage")
    manifest = read_manifest(manifest_path(dump))
    assert manifest.counts["public.rental"] == 16044
    restored = f"{pg_database}_r"
    try:
        pg_restore_into(pg_server, dump, restored)
        assert table_fingerprints(pg_server, restored) == before
        with pg_server.connect(restored) as connection:
            views = connection.execute("SELECT count(*) FROM pg_matviews").fetchone()
            assert views is not None and views[0] >= 1
    finally:
        drop_database(pg_server, restored)


def test_awkward_database_names_get_safe_paths_inside_their_job(pg_server: PostgresServer, tmp_path: Path) -> None:
    names = ["my shop", "café ünï", "../x", "..", "_globals"]
    with pg_server.connect() as connection:
        for name in names:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        config = write_config(tmp_path, {"main": pg_job(pg_server, tmp_path, names, include_globals=False)})
        assert run_cli(config, "backup") == 0
        storage = (tmp_path / "storage").resolve()
        dumps = data_files(storage)
        assert len(dumps) == len(names)
        for dump in dumps:
            assert dump.resolve().parent.parent == storage / "main"
        by_database = {read_manifest(manifest_path(dump)).database: dump for dump in dumps}
        assert set(by_database) == set(names)
        assert by_database["my shop"].parent.name == "my%20shop"
        assert by_database["../x"].parent.name == "%2E.%2Fx"
        assert by_database["_globals"].parent.name == "%5Fglobals"
        records = catalog.scan(storage, "main")
        assert {record.database for record in records} == set(names)
    finally:
        for name in names:
            drop_database(pg_server, name)


def _assert_failed_cleanly(tmp_path: Path, before: dict[Path, bytes]) -> None:
    files = stored_files(tmp_path / "storage")
    assert not [path for path in files if path.name.endswith(".partial")]
    assert {path: path.read_bytes() for path in files} == before
    failures = events_named(tmp_path, "backup.failed")
    assert failures, "a failure must be logged as backup.failed"
    assert all(event.get("reason") for event in failures)


def _snapshot(tmp_path: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in stored_files(tmp_path / "storage")}


def test_a_wrong_password_fails_with_exit_1_and_leaves_earlier_backups_untouched(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path, {"main": pg_job(pg_server, tmp_path, [pg_database])})
    assert run_cli(config, "backup") == 0
    before = _snapshot(tmp_path)
    password_file(tmp_path, "not-the-password")
    assert run_cli(config, "backup") == 1
    _assert_failed_cleanly(tmp_path, before)
    assert "password authentication failed" in events_named(tmp_path, "backup.failed")[-1]["error"]


def _fake_pg_dump(tmp_path: Path, body: str) -> str:
    """A wrapper around the real pg_dump; `--version` always answers truthfully."""
    script = tmp_path / "fake-pg_dump"
    real = shutil.which("pg_dump")
    script.write_text(f'#!/bin/sh\n[ "$1" = --version ] && exec "{real}" --version\n' + body + "\n")
    script.chmod(0o755)
    return str(script)


def test_a_tool_that_fails_mid_stream_leaves_no_file(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path
) -> None:
    pg_server.psql(pg_database, SCHEMA)
    real = Path(pg_server.bin_dir) / "pg_dump"
    tool = _fake_pg_dump(tmp_path, f'"{real}" "$@" | head -c 2000; exit 3')
    config = write_config(
        tmp_path, {"main": pg_job(pg_server, tmp_path, [pg_database], tool=tool, include_globals=False)}
    )
    assert run_cli(config, "backup") == 1
    _assert_failed_cleanly(tmp_path, {})
    assert "exited with status 3" in events_named(tmp_path, "backup.failed")[-1]["error"]


def test_a_truncated_archive_from_a_tool_that_exits_0_is_caught_by_the_check(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path
) -> None:
    pg_server.psql(pg_database, SCHEMA)
    real = Path(pg_server.bin_dir) / "pg_dump"
    tool = _fake_pg_dump(tmp_path, f'"{real}" "$@" | head -c 20000; exit 0')
    config = write_config(
        tmp_path, {"main": pg_job(pg_server, tmp_path, [pg_database], tool=tool, include_globals=False)}
    )
    assert run_cli(config, "backup") == 1
    _assert_failed_cleanly(tmp_path, {})
    assert events_named(tmp_path, "backup.failed")[-1]["reason"] == "verification_failed"


def test_a_stopped_server_fails_the_run_and_keeps_earlier_backups(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path, {"main": pg_job(pg_server, tmp_path, [pg_database], connect_timeout="2s")})
    assert run_cli(config, "backup") == 0
    before = _snapshot(tmp_path)
    pg_server.stop()
    try:
        assert run_cli(config, "backup") == 1
    finally:
        pg_server.start()
    _assert_failed_cleanly(tmp_path, before)


def test_an_unknown_database_fails_only_that_database(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path, {"main": pg_job(pg_server, tmp_path, ["no_such_db", pg_database], include_globals=False)}
    )
    assert run_cli(config, "backup") == 1
    dumps = data_files(tmp_path / "storage")
    assert [dump.parent.name for dump in dumps] == [pg_database]
    assert events_named(tmp_path, "backup.failed")[-1]["database"] == "no_such_db"


def test_the_password_is_in_no_child_argv_environment_or_log(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path
) -> None:
    pg_server.psql(pg_database, SCHEMA)
    real = Path(pg_server.bin_dir) / "pg_dump"
    tool = _fake_pg_dump(tmp_path, f'sleep 1; exec "{real}" "$@"')
    config = write_config(tmp_path, {"main": pg_job(pg_server, tmp_path, [pg_database], tool=tool)})
    with watching_processes(b"pg_dump", pg_server.password.encode(), interval=0.05) as seen:
        assert run_cli(config, "backup") == 0
    assert seen.tool_argvs, "the watcher never saw pg_dump running"
    assert seen.leaks == []
    assert pg_server.password not in (tmp_path / "agent.log").read_text()
    for path in stored_files(tmp_path / "storage"):
        if path.name.endswith(".json"):
            assert pg_server.password not in path.read_text()


def test_check_config_prints_the_plan_without_the_password(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = pg_job(pg_server, tmp_path, "*", exclude=["t_*"])
    job.pop("password_file")
    job["password"] = pg_server.password
    config = write_config(tmp_path, {"main": job})
    assert run_cli(config, "check-config") == 0
    out = capsys.readouterr().out
    assert "postgres" in out and pg_database not in out
    assert pg_server.password not in out
    assert str(tmp_path / "storage" / "main") in out


def test_verify_reports_a_flipped_byte_and_a_truncated_file(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pg_server.psql(pg_database, SCHEMA)
    config = write_config(tmp_path, {"main": pg_job(pg_server, tmp_path, [pg_database], include_globals=False)})
    assert run_cli(config, "backup") == 0
    (dump,) = data_files(tmp_path / "storage")
    assert run_cli(config, "verify") == 0
    data = bytearray(dump.read_bytes())
    dump.chmod(0o640)
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))
    capsys.readouterr()
    assert run_cli(config, "verify") == 1
    out = capsys.readouterr().out
    assert str(dump) in out and ("TAMPERED" in out or "CORRUPT" in out)
    dump.write_bytes(bytes(data[: len(data) // 3]))
    assert run_cli(config, "verify", str(dump)) == 1


def test_backup_logs_have_a_run_id_and_the_documented_events(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path, {"main": pg_job(pg_server, tmp_path, [pg_database])})
    assert run_cli(config, "backup") == 0
    events = [event for event in log_events(tmp_path) if event["event"].startswith("backup.")]
    assert {event["event"] for event in events} >= {"backup.started", "backup.finished"}
    assert len({event["run_id"] for event in events}) == 1
    finished = events_named(tmp_path, "backup.finished")
    assert all({"path", "bytes", "sha256", "duration"} <= set(event) for event in finished)
