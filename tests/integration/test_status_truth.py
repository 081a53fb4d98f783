"""`status` tells the truth: the daemon and a dump in progress, refusals, over budget, warnings, deleted drills."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import run_cli, write_config
from servers.mariadb import MariaDBServer
from servers.postgres import PostgresServer
from test_daemon import daemons, postgres_job  # noqa: F401 - daemons: the fixture that starts and cleans up
from test_mysql import execute, mysql_job

from agent import catalog


def status_of(config: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert run_cli(config, "status", "--json") == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def status_text(config: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str]:
    capsys.readouterr()
    code = run_cli(config, "status", *flags)
    return code, capsys.readouterr().out


def only_database(status: dict[str, Any], job: str = "app") -> dict[str, Any]:
    [entry] = next(item for item in status["jobs"] if item["job"] == job)["databases"]
    return entry


def wait_for(condition: Any, what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.1)
    return value


def test_status_shows_the_running_daemon_and_its_dump_in_progress_and_no_next_run_without_it(
    tmp_path: Path,
    daemons: Any,  # noqa: F811 - the fixture imported above
    pg_server: PostgresServer,
    pg_database: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(tmp_path, {"app": postgres_job(tmp_path, pg_server, pg_database, every="1h")})
    (tmp_path / "dribble").touch()  # the first (catch-up) dump writes a byte every 0.2 s until stopped
    daemon = daemons(tmp_path, config)

    def dumping() -> Any:
        running = status_of(config, capsys)["running"]
        return running if running and running[0]["raw_bytes"] > 0 else None

    [running] = wait_for(dumping, "a dump in progress with bytes written")
    status = status_of(config, capsys)
    assert status["daemon"]["running"] is True
    assert status["daemon"]["pid"] == daemon.process.pid
    assert status["daemon"]["config"] == str(config)
    assert running["job"] == "app" and running["database"] == pg_database
    assert running["elapsed_seconds"] > 0
    assert status["jobs"][0]["next_run"] is not None
    _code, text = status_text(config, capsys)
    assert f"daemon running: pid {daemon.process.pid}" in text
    assert f"running: app/{pg_database}:" in text and "so far" in text

    daemon.stop()
    status = status_of(config, capsys)
    assert status["daemon"] == {"running": False}
    assert status["running"] == []
    assert status["jobs"][0]["next_run"] is None
    assert "no daemon running" in status_text(config, capsys)[1]
    assert only_database(status)["last_attempt"]["status"] == "interrupted"


def sqlite_database(path: Path) -> Path:
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, body TEXT)")
        connection.executemany("INSERT INTO item (body) VALUES (?)", [(f"row {n}" * 20,) for n in range(2000)])
    connection.close()
    return path


def test_status_check_fails_when_the_latest_attempt_was_refused_and_the_storage_is_over_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = sqlite_database(tmp_path / "app.db")
    job = {"app": {"engine": "sqlite", "databases": [str(database)], "every": "1h"}}
    config = write_config(tmp_path, job)
    assert run_cli(config, "backup") == 0
    assert status_text(config, capsys, "--check")[0] == 0  # fresh, nothing refused

    write_config(tmp_path, job, storage={"max_usage": "1KiB"})  # the one backup already exceeds this
    assert run_cli(config, "backup") == 1  # refused: nothing may be deleted below keep_min

    status = status_of(config, capsys)
    entry = only_database(status)
    assert entry["last_attempt"]["status"] == "refused"
    assert entry["last_good"] is not None  # still fresh: only the refusal and the budget fail the check
    assert status["storage"]["over_budget"] is True
    assert status["ok"] is False
    assert any("over budget" in problem for problem in status["problems"])
    assert any("last attempt refused" in problem for problem in status["problems"])
    code, text = status_text(config, capsys, "--check")
    assert code == 1 and "STATUS CRITICAL" in text


def test_status_shows_the_warnings_of_the_last_good_backup(
    mariadb_server: MariaDBServer, mariadb_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    execute(
        mariadb_server,
        mariadb_database,
        "CREATE TABLE legacy_log (id INT PRIMARY KEY) ENGINE=MyISAM",
        "INSERT INTO legacy_log VALUES (1), (2)",
    )
    config = write_config(tmp_path, {"app": mysql_job(mariadb_server, tmp_path, [mariadb_database])})
    assert run_cli(config, "backup") == 0

    entry = only_database(status_of(config, capsys))
    assert any("legacy_log" in warning for warning in entry["warnings"])
    assert "warnings:" in status_text(config, capsys)[1]


def test_a_drill_of_a_backup_retention_deleted_is_not_shown_as_that_backups(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pg_server.psql(pg_database, "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 10);")
    job = postgres_job(tmp_path, pg_server, pg_database, every="1d")
    config = write_config(tmp_path, {"app": job})
    assert run_cli(config, "backup") == 0
    assert run_cli(config, "drill") == 0
    time.sleep(1.1)  # backup file names have one-second precision
    write_config(tmp_path, {"app": {**job, "retention": {"keep_last": 1, "keep_min": 1, "keep_daily": 0}}})
    assert run_cli(config, "backup") == 0  # retention deletes the drilled backup
    good = [record for record in catalog.scan(tmp_path / "storage", "app") if record.status == catalog.GOOD]
    assert len(good) == 1

    entry = only_database(status_of(config, capsys))
    assert entry["last_drill"]["result"] == "passed"
    assert entry["last_drill"]["backup_present"] is False and entry["last_drill"]["path"] is None
    assert entry["newest_drilled_backup"] is None
    assert "of a backup since deleted" in status_text(config, capsys)[1]
