"""Scheduled restore drills: the daemon runs `[jobs.NAME.drill]` like any schedule."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from agent_helpers import password_file, run_cli, write_config
from servers.postgres import PostgresServer
from test_daemon import daemons  # noqa: F401 - the fixture that starts and cleans up daemons

from agent import journal


def test_a_scheduled_drill_restores_the_newest_backup_and_records_the_result(
    pg_server: PostgresServer,
    pg_database: str,
    tmp_path: Path,
    daemons: Any,  # noqa: F811
) -> None:
    pg_server.psql(pg_database, "CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 50);")
    job = {
        "engine": "postgresql",
        "host": pg_server.host,
        "port": pg_server.port,
        "user": pg_server.user,
        "password_file": str(password_file(tmp_path, pg_server.password)),
        "databases": [pg_database],
        "include_globals": False,
        "schedule": "0 3 * * *",
        "jitter": "0s",
        "drill": {"every": "2s"},
    }
    config = write_config(tmp_path, {"main": job})
    assert run_cli(config, "backup") == 0
    daemon = daemons(tmp_path, config)
    (passed,) = daemon.wait_for("drill.passed", timeout=20)[:1]
    assert passed["database"] == pg_database
    code, _ = daemon.stop(signal.SIGTERM)
    assert code == 0
    entries, problems = journal.read_entries(tmp_path / "storage")
    assert problems == []
    assert any(entry["event"] == "drill" and entry["result"] == "passed" for entry in entries)
