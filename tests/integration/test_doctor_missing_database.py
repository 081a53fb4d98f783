"""`doctor` on a job that lists a database the server does not have: one problem naming it and the
key to fix, never a GRANT for it and never "ok" (PostgreSQL and MySQL/MariaDB alike)."""

from __future__ import annotations

from pathlib import Path

import pytest
from agent_helpers import password_file, run_cli, write_config
from servers.mariadb import MariaDBServer
from servers.postgres import PostgresServer

ABSENT = "no_such_database_here"


def _doctor(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = run_cli(config, "doctor")
    return code, capsys.readouterr().out.splitlines()


def _job(
    engine: str, server: PostgresServer | MariaDBServer, directory: Path, databases: list[str]
) -> dict[str, object]:
    job: dict[str, object] = {
        "engine": engine,
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "password_file": str(password_file(directory, server.password)),
        "databases": databases,
    }
    if engine == "postgresql":
        job["include_globals"] = False
    return job


def _assert_named_once_and_never_granted(code: int, lines: list[str]) -> None:
    about = [line for line in lines if ABSENT in line]
    assert code == 1, lines
    assert len(about) == 1 and about[0].startswith("PROBLEM"), about
    assert "is not on the server" in about[0] and "jobs.main.databases" in about[0], about
    assert "GRANT" not in about[0]
    assert not any(line.startswith("ok") and "all 2 database(s)" in line for line in lines), lines


def test_postgres_doctor_names_a_listed_database_that_does_not_exist_without_a_grant(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, {"main": _job("postgresql", pg_server, tmp_path, [pg_database, ABSENT])})
    _assert_named_once_and_never_granted(*_doctor(config, capsys))


def test_mysql_doctor_names_a_listed_database_that_does_not_exist_instead_of_ok(
    mariadb_server: MariaDBServer, mariadb_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, {"main": _job("mariadb", mariadb_server, tmp_path, [mariadb_database, ABSENT])})
    _assert_named_once_and_never_granted(*_doctor(config, capsys))


def test_postgres_doctor_still_passes_when_every_listed_database_exists(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, {"main": _job("postgresql", pg_server, tmp_path, [pg_database])})
    code, lines = _doctor(config, capsys)
    assert code == 0 and any("can read all 1 database(s)" in line for line in lines), lines
