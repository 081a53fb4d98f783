"""`backup-agent status [--json] [--check]` on storage trees made by real backups: fresh, stale, failed."""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import password_file, run_cli, write_config
from servers.postgres import PostgresServer

from agent.config import JobConfig, ScheduleSpec
from agent.schedule import plan_for
from agent.status import default_max_backup_age, freshness_problem


def sqlite_database(path: Path, rows: int = 50) -> Path:
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT)")
        connection.executemany("INSERT INTO item (name) VALUES (?)", [(f"item {n}",) for n in range(rows)])
    connection.close()
    return path


def status_json(config: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = run_cli(config, "status", "--json", *flags)
    out = capsys.readouterr().out
    return code, json.loads(out)  # the whole of stdout is one JSON document


def database_entry(status: dict[str, Any], job: str, database: str) -> dict[str, Any]:
    job_entry = next(entry for entry in status["jobs"] if entry["job"] == job)
    return next(entry for entry in job_entry["databases"] if entry["database"] == database)


@pytest.fixture
def three_jobs(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    files = {
        "fresh": sqlite_database(tmp_path / "fresh.db"),
        "stale": sqlite_database(tmp_path / "stale.db"),
        "broken": tmp_path / "missing.db",  # never created: every backup of it fails
    }
    config = write_config(
        tmp_path,
        {
            "fresh": {"engine": "sqlite", "databases": [str(files["fresh"])], "every": "1h"},
            "stale": {"engine": "sqlite", "databases": [str(files["stale"])], "max_backup_age": "1s"},
            "broken": {"engine": "sqlite", "databases": [str(files["broken"])], "every": "1h"},
        },
    )
    return config, files


def test_status_json_tells_fresh_stale_and_failed_databases_apart(
    three_jobs: tuple[Path, dict[str, Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    config, files = three_jobs
    assert run_cli(config, "backup") == 1  # the broken job fails
    time.sleep(1.2)  # the stale job's backup is now older than its max_backup_age of 1s

    code, status = status_json(config, capsys)

    assert code == 0  # without --check, status only reports
    assert status["ok"] is False
    fresh = database_entry(status, "fresh", str(files["fresh"]))
    assert fresh["state"] == "ok" and fresh["problem"] is None
    good = fresh["last_good"]
    assert Path(good["path"]).is_file()
    assert good["stored_bytes"] == Path(good["path"]).stat().st_size
    assert 1 <= good["age_seconds"] < 120
    assert fresh["predicted_next_bytes"] >= good["stored_bytes"]
    assert fresh["failures_total"] == 0

    stale = database_entry(status, "stale", str(files["stale"]))
    assert stale["state"] == "stale"
    assert "max_backup_age 1s" in stale["problem"]

    broken = database_entry(status, "broken", str(files["broken"]))
    assert broken["state"] == "missing" and broken["last_good"] is None
    assert broken["last_failure"]["reason"] == "not_found"
    assert broken["failures_total"] == 1

    broken_job = next(job for job in status["jobs"] if job["job"] == "broken")
    assert broken_job["max_backup_age_source"] == "schedule"
    assert broken_job["max_backup_age_seconds"] == 2 * 3600
    assert broken_job["next_run"] is None  # no daemon runs: no next run to promise
    assert status["daemon"] == {"running": False}
    assert status["storage"]["used_bytes"] > 0
    assert len(status["problems"]) == 2
    assert run_cli(config, "status", "--check") == 1


def test_status_check_passes_when_every_checked_database_is_fresh(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = sqlite_database(tmp_path / "app.db")
    config = write_config(
        tmp_path,
        {
            "app": {"engine": "sqlite", "databases": [str(database)], "schedule": "0 3 * * *"},
            "adhoc": {"engine": "sqlite", "databases": [str(tmp_path / "never.db")]},  # manual: not checked
        },
    )
    assert run_cli(config, "backup", "--job", "app") == 0

    code, status = status_json(config, capsys, "--check")

    assert code == 0
    assert status["ok"] is True and status["problems"] == []
    adhoc = next(job for job in status["jobs"] if job["job"] == "adhoc")
    assert adhoc["checked"] is False and adhoc["next_run"] is None
    app = next(job for job in status["jobs"] if job["job"] == "app")
    assert app["max_backup_age_seconds"] == 2 * 86400


def test_status_text_names_every_problem_and_ends_with_a_verdict(
    three_jobs: tuple[Path, dict[str, Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    config, files = three_jobs
    run_cli(config, "backup")
    time.sleep(1.2)
    capsys.readouterr()

    assert run_cli(config, "status", "--check") == 1

    lines = capsys.readouterr().out.splitlines()
    assert any(line.strip().startswith("STALE") and str(files["stale"]) in line for line in lines)
    assert any(line.strip().startswith("MISSING") and "not_found" in line for line in lines)
    assert any(line.strip().startswith("OK") and str(files["fresh"]) in line for line in lines)
    assert "STATUS CRITICAL - 2 problem(s)" in lines


def test_a_failed_run_after_a_good_one_shows_both_and_fails_the_check_though_fresh(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = sqlite_database(tmp_path / "app.db")
    config = write_config(tmp_path, {"app": {"engine": "sqlite", "databases": [str(database)], "every": "1h"}})
    assert run_cli(config, "backup") == 0
    database.rename(tmp_path / "moved.db")
    assert run_cli(config, "backup") == 1

    code, status = status_json(config, capsys, "--check")

    assert code == 1  # the good backup is still young enough, but the latest attempt failed
    entry = database_entry(status, "app", str(database))
    assert entry["state"] == "failed"
    assert entry["problem"] == "last attempt failed (not_found)"
    assert entry["last_attempt"]["status"] == "failed" and entry["last_attempt"]["reason"] == "not_found"
    assert entry["last_good"] is not None
    assert entry["last_failure"]["reason"] == "not_found"
    assert entry["failures_total"] == 1


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        (ScheduleSpec("cron", cron="0 3 * * 1-5"), timedelta(days=6)),  # Friday to Monday: 3 days
        (ScheduleSpec("cron", cron="0 3 * * *"), timedelta(days=2)),
        (ScheduleSpec("cron", cron="0 */6 * * *"), timedelta(hours=12)),
        (ScheduleSpec("interval", every=timedelta(hours=4)), timedelta(hours=8)),
        (ScheduleSpec("cron", cron="0 3 1 * *"), timedelta(days=62)),  # monthly: Dec 1 -> Jan 1 -> Feb 1
    ],
)
def test_the_default_max_backup_age_is_twice_the_longest_gap_between_runs(
    schedule: ScheduleSpec, expected: timedelta
) -> None:
    job = JobConfig("j", "sqlite", ("/x.db",), schedule=schedule, jitter=timedelta(0))
    plan = plan_for(job, None, "host")
    assert plan is not None
    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)  # a Wednesday
    assert default_max_backup_age(plan, now) == expected


def test_freshness_is_judged_from_the_newest_good_backup() -> None:
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    assert freshness_problem(None, timedelta(hours=1), now) == "no good backup yet"
    assert freshness_problem(now - timedelta(minutes=59), timedelta(hours=1), now) is None
    problem = freshness_problem(now - timedelta(hours=3), timedelta(hours=1), now)
    assert problem is not None and "3h" in problem and "max_backup_age 1h" in problem


def test_postgres_status_shows_the_last_drill_and_the_newest_drilled_backup(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pg_server.psql(pg_database, "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 100);")
    config = write_config(
        tmp_path,
        {
            "main": {
                "engine": "postgresql",
                "host": pg_server.host,
                "port": pg_server.port,
                "user": pg_server.user,
                "password_file": str(password_file(tmp_path, pg_server.password)),
                "databases": [pg_database],
                "include_globals": False,
                "every": "1d",
            }
        },
    )
    assert run_cli(config, "backup") == 0
    assert run_cli(config, "drill") == 0

    code, status = status_json(config, capsys, "--check")

    assert code == 0
    entry = database_entry(status, "main", pg_database)
    assert entry["last_drill"]["result"] == "passed"
    drilled = entry["newest_drilled_backup"]
    assert (tmp_path / "storage" / drilled["path"]) == Path(entry["last_good"]["path"])
    assert 0 <= drilled["age_seconds"] < 300
    assert entry["last_good"]["stored_bytes"] > 0
