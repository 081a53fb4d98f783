"""Retiring what you removed: `retire` ends a series so nothing reports it missing; a typo makes no series."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import data_files, run_cli, write_config
from servers.postgres import PostgresServer
from test_daemon import postgres_job

from agent import journal


def sqlite_database(path: Path) -> Path:
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE item (id INTEGER PRIMARY KEY)")
        connection.execute("INSERT INTO item DEFAULT VALUES")
    connection.close()
    return path


def sqlite_job(database: Path) -> dict[str, Any]:
    return {"engine": "sqlite", "databases": [str(database)], "every": "1h"}


def status_of(config: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    run_cli(config, "status", "--json")
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def test_a_removed_job_deleted_by_hand_is_missing_until_retired_then_verify_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app, old = sqlite_database(tmp_path / "app.db"), sqlite_database(tmp_path / "old.db")
    config = write_config(tmp_path, {"app": sqlite_job(app), "old": sqlite_job(old)})
    assert run_cli(config, "backup") == 0
    write_config(tmp_path, {"app": sqlite_job(app)})  # the job is removed from the config ...
    shutil.rmtree(tmp_path / "storage" / "old")  # ... and its files by hand, as people do
    assert run_cli(config, "verify") == 1  # MISSING: the journal remembers them

    capsys.readouterr()
    assert run_cli(config, "retire", "--job", "old") == 0
    assert "retired old" in capsys.readouterr().out

    assert run_cli(config, "verify") == 0
    assert run_cli(config, "status", "--check") == 0
    retired = [entry for entry in journal.read_entries(tmp_path / "storage")[0] if entry.event == "retired"]
    assert [(entry.job, entry.path) for entry in retired] == [("old", "old")]


def test_retire_delete_removes_a_databases_files_through_the_journal_and_status_forgets_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kept, dropped = sqlite_database(tmp_path / "kept.db"), sqlite_database(tmp_path / "dropped.db")
    config = write_config(tmp_path, {"app": {**sqlite_job(kept), "databases": [str(kept), str(dropped)]}})
    assert run_cli(config, "backup") == 0
    write_config(tmp_path, {"app": sqlite_job(kept)})
    assert run_cli(config, "retire", "--job", "app", "--database", str(kept)) == 2  # still configured: refused

    assert run_cli(config, "retire", "--job", "app", "--database", str(dropped), "--delete") == 0

    storage = tmp_path / "storage"
    assert [path.parent.name for path in data_files(storage)] == ["kept.db"]
    deleted = [entry for entry in journal.read_entries(storage)[0] if entry.event == "deleted"]
    assert [entry.rule for entry in deleted] == ["retired"]
    assert run_cli(config, "verify") == 0
    status = status_of(config, capsys)
    [app] = status["jobs"]
    assert [database["database"] for database in app["databases"]] == [str(kept)]
    assert status["ok"] is True


def test_backup_of_a_database_that_does_not_exist_fails_as_not_found_and_leaves_no_series(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = sqlite_database(tmp_path / "app.db")
    config = write_config(tmp_path, {"app": sqlite_job(app)})
    assert run_cli(config, "backup") == 0
    capsys.readouterr()

    assert run_cli(config, "backup", "--job", "app", "--database", str(tmp_path / "TYPO.db")) == 1

    assert "there is no database" in capsys.readouterr().out
    status = status_of(config, capsys)
    assert [database["database"] for database in status["jobs"][0]["databases"]] == [str(app)]
    history = json.loads((tmp_path / "storage" / ".agent" / "databases.json").read_text())
    assert [record["database"] for record in history["jobs"]["app"]["databases"]] == [str(app)]
    assert run_cli(config, "status", "--check") == 0


def test_a_postgres_database_that_does_not_exist_fails_as_not_found(
    tmp_path: Path, pg_server: PostgresServer, pg_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, {"app": postgres_job(tmp_path, pg_server, pg_database)})
    capsys.readouterr()

    assert run_cli(config, "backup", "--job", "app", "--database", "no_such_database") == 1

    assert "no_such_database" in capsys.readouterr().out
    assert not (tmp_path / "storage" / "app" / "no_such_database").exists()
    status = status_of(config, capsys)
    assert [database["database"] for database in status["jobs"][0]["databases"]] == [pg_database]
