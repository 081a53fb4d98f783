"""Hooks: before/after/on_failure argv commands with the backup's facts in BACKUP_AGENT_* variables."""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path

from agent_helpers import data_files, events_named, run_cli, write_config

from agent.manifest import manifest_path, read_manifest

# a hook that appends its BACKUP_AGENT_* variables (one `NAME=value` per line, then a blank line) to a file
RECORD = (
    "import os, sys\n"
    "with open(sys.argv[1], 'a') as out:\n"
    "    out.writelines(f'{k}={v}\\n' for k, v in sorted(os.environ.items()) if k.startswith('BACKUP_AGENT_'))\n"
    "    out.write('\\n')\n"
    "sys.exit(int(sys.argv[2]) if len(sys.argv) > 2 else 0)\n"
)


def sqlite_database(path: Path) -> Path:
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE t (x)")
        connection.execute("INSERT INTO t VALUES (1)")
    connection.close()
    return path


def hook(record: Path, exit_code: int = 0) -> list[str]:
    return [sys.executable, "-c", RECORD, str(record), str(exit_code)]


def recorded(record: Path) -> list[dict[str, str]]:
    if not record.exists():
        return []
    blocks = record.read_text().strip().split("\n\n")
    return [dict(line.split("=", 1) for line in block.splitlines()) for block in blocks if block]


def config_with_hooks(tmp_path: Path, databases: list[str], hooks: dict[str, object]) -> Path:
    return write_config(
        tmp_path, {"app": {"engine": "sqlite", "databases": databases}}, sections={"jobs.app.hooks": hooks}
    )


def test_the_after_hook_gets_the_backups_path_hash_size_and_status(tmp_path: Path) -> None:
    database = sqlite_database(tmp_path / "app.db")
    record = tmp_path / "after.env"
    config = config_with_hooks(tmp_path, [str(database)], {"after": hook(record)})

    assert run_cli(config, "backup") == 0

    [environment] = recorded(record)
    [dump] = data_files(tmp_path / "storage")
    manifest = read_manifest(manifest_path(dump))
    assert environment["BACKUP_AGENT_HOOK"] == "after"
    assert environment["BACKUP_AGENT_STATUS"] == "ok"
    assert environment["BACKUP_AGENT_JOB"] == "app"
    assert environment["BACKUP_AGENT_DATABASE"] == str(database)
    assert environment["BACKUP_AGENT_PATH"] == str(dump)
    assert environment["BACKUP_AGENT_SHA256"] == manifest.sha256
    assert environment["BACKUP_AGENT_SIZE"] == str(dump.stat().st_size)
    assert environment["BACKUP_AGENT_RUN_ID"] == manifest.run_id


def test_a_failing_before_hook_fails_the_run_before_any_dump(tmp_path: Path) -> None:
    database = sqlite_database(tmp_path / "app.db")
    before, on_failure = tmp_path / "before.env", tmp_path / "failure.env"
    config = config_with_hooks(
        tmp_path,
        [str(database)],
        {
            "before": hook(before, exit_code=4),
            "on_failure": hook(on_failure),
        },
    )

    assert run_cli(config, "backup") == 1

    assert data_files(tmp_path / "storage") == []
    [failed_hook] = events_named(tmp_path, "hook.failed")
    assert failed_hook["hook"] == "before" and "status 4" in failed_hook["error"]
    assert events_named(tmp_path, "backup.failed")[-1]["reason"] == "hook_failed"
    [environment] = recorded(on_failure)
    assert environment["BACKUP_AGENT_STATUS"] == "failed"
    assert environment["BACKUP_AGENT_REASON"] == "hook_failed"
    assert recorded(before)[0]["BACKUP_AGENT_STATUS"] == "starting"


def test_a_failing_after_hook_is_logged_and_the_backup_stands(tmp_path: Path) -> None:
    database = sqlite_database(tmp_path / "app.db")
    config = config_with_hooks(tmp_path, [str(database)], {"after": hook(tmp_path / "after.env", exit_code=2)})

    assert run_cli(config, "backup") == 0

    assert len(data_files(tmp_path / "storage")) == 1
    [failed_hook] = events_named(tmp_path, "hook.failed")
    assert failed_hook["hook"] == "after"


def test_on_failure_runs_for_the_database_that_failed(tmp_path: Path) -> None:
    good = sqlite_database(tmp_path / "good.db")
    missing = tmp_path / "missing.db"
    after, on_failure = tmp_path / "after.env", tmp_path / "failure.env"
    config = config_with_hooks(
        tmp_path,
        [str(good), str(missing)],
        {
            "after": hook(after),
            "on_failure": hook(on_failure),
        },
    )

    assert run_cli(config, "backup") == 1

    assert [item["BACKUP_AGENT_DATABASE"] for item in recorded(after)] == [str(good)]
    [failure] = recorded(on_failure)
    assert failure["BACKUP_AGENT_DATABASE"] == str(missing)
    assert failure["BACKUP_AGENT_REASON"] == "not_found"
    assert failure["BACKUP_AGENT_PATH"] == ""


def test_a_hook_that_hangs_is_stopped_at_its_timeout(tmp_path: Path) -> None:
    database = sqlite_database(tmp_path / "app.db")
    config = config_with_hooks(
        tmp_path,
        [str(database)],
        {
            "before": ["/bin/sh", "-c", "sleep 60"],
            "timeout": "1s",
        },
    )

    started = time.monotonic()
    assert run_cli(config, "backup") == 1
    elapsed = time.monotonic() - started

    assert elapsed < 10
    [failed_hook] = events_named(tmp_path, "hook.failed")
    assert failed_hook["reason"] == "timeout"
    assert data_files(tmp_path / "storage") == []


def test_a_hook_command_that_does_not_exist_is_named(tmp_path: Path) -> None:
    database = sqlite_database(tmp_path / "app.db")
    config = config_with_hooks(tmp_path, [str(database)], {"before": ["/nonexistent/notify-me"]})

    assert run_cli(config, "backup") == 1

    [failed_hook] = events_named(tmp_path, "hook.failed")
    assert failed_hook["reason"] == "not_found" and "/nonexistent/notify-me" in failed_hook["error"]
