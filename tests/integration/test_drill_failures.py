"""A failed drill is `drill.failed` with a reason, never stops the other jobs, shows in status and alerts."""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import events_named, run_cli, write_config
from servers.postgres import PostgresServer
from test_daemon import daemons  # noqa: F401 - the fixture that starts and cleans up daemons
from test_status_daemon import ping_server  # noqa: F401 - the fixture that records pings


@pytest.fixture
def reader_role(pg_server: PostgresServer, pg_database: str) -> Iterator[tuple[str, str]]:
    """A backup account as the README recommends it: it can read everything, create nothing."""
    name, password = f"reader_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    pg_server.psql(pg_database, f"CREATE ROLE {name} LOGIN PASSWORD '{password}'; GRANT pg_read_all_data TO {name};")
    try:
        yield name, password
    finally:
        pg_server.psql(pg_database, f"DROP ROLE IF EXISTS {name};")


def job_for(tmp_path: Path, server: PostgresServer, database: str, user: str, password: str) -> dict[str, Any]:
    secret = tmp_path / f"{user}.password"
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    return {
        "engine": "postgresql",
        "host": server.host,
        "port": server.port,
        "user": user,
        "password_file": str(secret),
        "databases": [database],
        "include_globals": False,
        "every": "1d",
        "jitter": "0s",
    }


def two_jobs(
    tmp_path: Path, server: PostgresServer, database: str, reader: tuple[str, str], **extra: Any
) -> dict[str, dict[str, Any]]:
    """`limited` (drills fail: no CREATE DATABASE) first, then `full` (the superuser: drills pass)."""
    return {
        "limited": {**job_for(tmp_path, server, database, *reader), **extra},
        "full": {**job_for(tmp_path, server, database, server.user, server.password), **extra},
    }


def test_a_drill_without_privilege_fails_with_a_reason_the_next_job_still_drills_and_status_check_fails(
    pg_server: PostgresServer,
    pg_database: str,
    reader_role: tuple[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    ping_server: tuple[str, list[str]],  # noqa: F811 - the fixture imported above
) -> None:
    url, pings = ping_server
    pg_server.psql(pg_database, "CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 20);")
    jobs = two_jobs(tmp_path, pg_server, pg_database, reader_role)
    config = write_config(tmp_path, jobs, sections={"notify": {"healthchecks_url": url}})
    assert run_cli(config, "backup") == 0
    pings.clear()
    capsys.readouterr()

    assert run_cli(config, "drill") == 1
    out = capsys.readouterr().out

    assert f"FAILED   limited/{pg_database}" in out and "no_privilege" in out
    assert f"PASSED   full/{pg_database}" in out  # the first job's failure did not stop the second
    [failed] = events_named(tmp_path, "drill.failed")
    assert failed["reason"] == "no_privilege" and failed["job"] == "limited"
    assert "/ping/abc/fail" in pings  # alerted like a failed backup

    assert run_cli(config, "status", "--check") == 1
    out = capsys.readouterr().out
    assert "drill failed (no_privilege)" in out
    code = run_cli(config, "status", "--json")
    status = json.loads(capsys.readouterr().out)
    assert code == 0 and status["ok"] is False
    limited = next(job for job in status["jobs"] if job["job"] == "limited")
    assert limited["last_drill"]["status"] == "failed" and limited["last_drill"]["reason"] == "no_privilege"
    [database] = limited["databases"]
    assert database["last_drill"]["result"] == "failed" and database["last_drill"]["reason"] == "no_privilege"
    assert any("limited" in problem and "drill" in problem for problem in status["problems"])


def test_a_scheduled_drill_that_fails_logs_drill_failed_with_its_reason_not_a_job_error(
    pg_server: PostgresServer,
    pg_database: str,
    reader_role: tuple[str, str],
    tmp_path: Path,
    daemons: Any,  # noqa: F811 - the fixture imported above
) -> None:
    pg_server.psql(pg_database, "CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 20);")
    jobs = two_jobs(tmp_path, pg_server, pg_database, reader_role, drill={"every": "2s"})
    config = write_config(tmp_path, jobs)
    assert run_cli(config, "backup") == 0
    daemon = daemons(tmp_path, config)
    [failed] = daemon.wait_for("drill.failed", timeout=20)[:1]
    daemon.wait_for("drill.passed", timeout=20)
    code, _ = daemon.stop(signal.SIGTERM)

    assert code == 0
    assert failed["reason"] == "no_privilege" and failed["job"] == "limited"
    assert daemon.events("job.error") == []
    state = json.loads((tmp_path / "storage" / ".agent" / "state.json").read_text())["jobs"]
    assert state["limited"]["last_drill_status"] == "failed"
    assert state["full"]["last_drill_status"] == "passed"
