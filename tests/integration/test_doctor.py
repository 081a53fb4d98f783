"""`backup-agent doctor`: a good setup passes; each broken setup is named on its own line with a fix."""

from __future__ import annotations

import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_helpers import agent_command_for_another_user, password_file, run_cli, write_config
from psycopg import sql
from servers.common import skip_or_fail
from servers.postgres import PostgresServer


def sqlite_database(path: Path) -> Path:
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE t (x)")
    connection.close()
    return path


def sqlite_config(directory: Path) -> Path:
    database = sqlite_database(directory / "a.db")
    return write_config(directory, {"app": {"engine": "sqlite", "databases": [str(database)]}})


def doctor(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = run_cli(config, "doctor")
    return code, capsys.readouterr().out.splitlines()


def problems(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("PROBLEM")]


def pg_job(server: PostgresServer, directory: Path, databases: list[str], **extra: object) -> dict[str, object]:
    return {
        "engine": "postgresql",
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "password_file": str(password_file(directory, server.password)),
        "databases": databases,
        "include_globals": False,
        **extra,
    }


def test_a_good_sqlite_setup_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = sqlite_config(tmp_path)

    code, lines = doctor(config, capsys)

    assert code == 0, lines
    assert problems(lines) == []
    assert lines[-1].startswith("DOCTOR OK")
    assert any(line.startswith("ok") and "storage:" in line and "free" in line for line in lines)
    assert not list((tmp_path / "storage").glob(".doctor-*"))  # the write probe leaves nothing behind


def test_a_good_postgres_setup_passes_with_tool_and_server_versions(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, {"main": pg_job(pg_server, tmp_path, [pg_database])})

    code, lines = doctor(config, capsys)

    assert code == 0, lines
    job_lines = [line for line in lines if "jobs.main:" in line]
    assert any("pg_dump (PostgreSQL)" in line for line in job_lines)
    assert any("can read all 1 database(s)" in line for line in job_lines)


def test_a_missing_tool_is_named(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = pg_job(pg_server, tmp_path, [pg_database], tool="/nowhere/bin/pg_dump")
    config = write_config(tmp_path, {"main": job})

    code, lines = doctor(config, capsys)

    assert code == 1
    [problem] = problems(lines)
    assert "jobs.main: tool:" in problem and "/nowhere/bin/pg_dump not found" in problem


def test_a_wrong_password_is_named_and_never_shown(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = pg_job(pg_server, tmp_path, [pg_database])
    wrong = "wrong-" + secrets.token_hex(8)
    job["password_file"] = str(password_file(tmp_path, wrong))
    config = write_config(tmp_path, {"main": job})

    code, lines = doctor(config, capsys)

    assert code == 1
    [problem] = problems(lines)
    assert "jobs.main: server:" in problem and "password authentication failed" in problem
    assert wrong not in "\n".join(lines)


def test_a_role_that_cannot_read_a_table_is_told_which_one(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    role, password = f"reader_{secrets.token_hex(4)}", secrets.token_hex(12)
    pg_server.psql(pg_database, "CREATE TABLE open_data (x int); CREATE TABLE private_data (x int);")
    with pg_server.connect(pg_database) as connection:
        connection.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password))
        )
        connection.execute(sql.SQL("GRANT SELECT ON open_data TO {}").format(sql.Identifier(role)))
    try:
        job = pg_job(pg_server, tmp_path, [pg_database], user=role)
        job["password_file"] = str(password_file(tmp_path, password))
        config = write_config(tmp_path, {"main": job})

        code, lines = doctor(config, capsys)
    finally:
        with pg_server.connect(pg_database) as connection:
            connection.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            connection.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))

    assert code == 1
    [problem] = problems(lines)
    assert "public.private_data" in problem and "open_data" not in problem
    assert "pg_read_all_data" in problem


@pytest.mark.parametrize(("mode", "who"), [(0o770, "group"), (0o757, "others")])
def test_storage_writable_by_group_or_others_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: int, who: str
) -> None:
    config = sqlite_config(tmp_path)
    storage = tmp_path / "storage"
    storage.mkdir()
    storage.chmod(mode)

    code, lines = doctor(config, capsys)

    assert code == 1
    [problem] = problems(lines)
    assert f"{storage} is writable by {who}" in problem and "chmod go-w" in problem


def test_a_parent_folder_others_can_write_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # not sticky: anyone could rename the storage folder away
    config = sqlite_config(tmp_path)
    config.write_text(config.read_text().replace(str(tmp_path / "storage"), str(shared / "storage")))

    code, lines = doctor(config, capsys)

    assert code == 1
    assert any(f"{shared} (the folder holding the storage) is writable by others" in line for line in problems(lines))


@pytest.fixture
def world_readable_directory() -> Iterator[Path]:
    """A folder another user can enter (pytest's tmp_path is private to root)."""
    directory = Path(tempfile.mkdtemp(prefix="doctor-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


def test_storage_the_agent_cannot_write_is_named(world_readable_directory: Path) -> None:
    directory = world_readable_directory
    database = sqlite_database(directory / "a.db")
    database.chmod(0o644)
    config = write_config(directory, {"app": {"engine": "sqlite", "databases": [str(database)]}})
    config.chmod(0o644)
    storage = directory / "storage"
    storage.mkdir(mode=0o755)
    command, environment = [sys.executable, "-m", "agent"], dict(os.environ)
    if os.geteuid() == 0:  # root writes anywhere: ask as an unprivileged user instead
        if shutil.which("setpriv") is None:
            skip_or_fail("setpriv (util-linux) is needed to run doctor as another user")
        command, environment = agent_command_for_another_user(directory)  # one that user can read
        command = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command]
    else:
        storage.chmod(0o555)

    result = subprocess.run(
        [*command, "-c", str(config), "doctor"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        env=environment,
        check=False,
    )

    shown = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 1, shown
    assert any(
        line.startswith("PROBLEM") and f"cannot write in {storage}" in line for line in result.stdout.splitlines()
    ), shown


def test_an_unknown_time_zone_in_the_config_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(
        tmp_path,
        {
            "app": {
                "engine": "sqlite",
                "databases": [str(sqlite_database(tmp_path / "a.db"))],
                "timezone": "Mars/Olympus_Mons",
            }
        },
    )

    code, lines = doctor(config, capsys)

    assert code == 78
    [problem] = problems(lines)
    assert "jobs.app.timezone" in problem and "Mars/Olympus_Mons" in problem


def test_an_unknown_tz_variable_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = sqlite_config(tmp_path)
    monkeypatch.setenv("TZ", "Nowhere/Special")

    code, lines = doctor(config, capsys)

    assert code == 1
    [problem] = problems(lines)
    assert "TZ environment variable" in problem and "Nowhere/Special" in problem
