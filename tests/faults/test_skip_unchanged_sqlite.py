"""skip_unchanged on SQLite: an unchanged file is skipped (logged, journaled, fresh for `status
--check`, its backup kept by retention); one changed row, one DDL change, a commit that only
reaches the WAL, or a write too recent to be told apart always dump.

The agent runs under a frozen wall clock (libfaketime) years after the test's own writes, so the
token's "written too recently" guard does not hide what the rest of the token proves.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent_helpers import data_files, write_config
from fault_helpers import frozen_clock, run_agent, sqlite_database, sqlite_job

from agent import journal, metrics, status
from agent.config import load_config
from agent.daemon import last_good_backup
from agent.manifest import manifest_path, read_manifest

KEEP_ALL = {"keep_last": 100, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0}
ONE_KEPT = {"keep_last": 1, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0, "keep_min": 1, "max_age": "1d"}


def _backup(config: Path, moment: str) -> Any:
    result = run_agent(config, "backup", env=frozen_clock(moment))
    assert result.returncode == 0, result.stderr
    return result


def _events(directory: Path, name: str) -> list[dict[str, Any]]:
    lines = (directory / "agent.log").read_text().splitlines()
    return [event for event in map(json.loads, lines) if event.get("event") == name]


def _skips(storage: Path) -> list[journal.JournalEntry]:
    entries, problems = journal.read_entries(storage)
    assert problems == []
    return [entry for entry in entries if entry.event == journal.Event.SKIPPED]


def _execute(database: Path, *statements: str) -> None:
    with sqlite3.connect(database) as connection:
        for statement in statements:
            connection.execute(statement)
    connection.close()


def _setup(tmp_path: Path, **job: Any) -> tuple[Path, Path, Path]:
    database = sqlite_database(tmp_path / "app.db")
    settings = {"skip_unchanged": True, "max_backup_age": "1h", "retention": KEEP_ALL, **job}
    config = write_config(tmp_path, {"app": sqlite_job(database, **settings)}, storage={"compression": "none"})
    return config, database, tmp_path / "storage"


def test_an_unchanged_file_is_skipped_journaled_fresh_and_its_backup_kept(tmp_path: Path) -> None:
    seen = tmp_path / "after-hook.txt"
    hook = ["/bin/sh", "-c", f'echo "$BACKUP_AGENT_STATUS $BACKUP_AGENT_REASON $BACKUP_AGENT_PATH" >> {seen}']
    config, _database, storage = _setup(tmp_path, retention=ONE_KEPT, hooks={"after": hook})
    _backup(config, "2031-05-01 10:00:00")
    (first,) = data_files(storage)
    assert read_manifest(manifest_path(first)).change_token is not None

    result = _backup(config, "2031-05-03 12:00:00")
    assert "unchanged, relies on" in result.stdout
    assert data_files(storage) == [first]  # no new dump, and max_age = 1d did not take the one relied on
    (skip,) = _skips(storage)
    assert skip.path == str(first.relative_to(storage)) and skip.reason == "unchanged"
    assert skip.sha256 == read_manifest(manifest_path(first)).sha256
    (logged,) = _events(tmp_path, "backup.skipped")
    assert logged["reason"] == "unchanged" and logged["path"] == str(first)
    assert seen.read_text().splitlines() == [f"ok  {first}", f"ok unchanged {first}"]  # the after hook knows

    # fresh for status --check: the backup is 2 days old, but the skip 30 minutes
    fresh = run_agent(config, "status", "--check", "--json", env=frozen_clock("2031-05-03 12:30:00"))
    assert fresh.returncode == 0, fresh.stdout
    (entry,) = json.loads(fresh.stdout)["jobs"][0]["databases"]
    assert entry["state"] == "ok" and entry["last_unchanged"]["at"].startswith("2031-05-03T12:00:00")
    stale = run_agent(config, "status", "--check", env=frozen_clock("2031-05-03 14:00:00"))
    assert stale.returncode == 1 and "newest good backup is" in stale.stdout

    # the daemon's catch-up after a restart and the metrics file see the skip too
    skipped_at = datetime(2031, 5, 3, 12, 0, tzinfo=UTC)
    assert last_good_backup(storage, "app") == skipped_at
    exposition = metrics.render(status.collect(load_config(config), now=skipped_at + timedelta(minutes=30)))
    assert 'backup_agent_last_unchanged_timestamp_seconds{job="app"' in exposition
    assert f"}} {skipped_at.timestamp()!r}" in exposition
    assert 'backup_agent_fresh{job="app"' in exposition and exposition.count("backup_agent_fresh{") == 1
    assert next(line for line in exposition.splitlines() if line.startswith("backup_agent_fresh{")).endswith(" 1")

    plan = json.loads(run_agent(config, "prune", "--dry-run", "--json", env=frozen_clock("2031-06-01 00:00:00")).stdout)
    (decision,) = plan["decisions"]
    assert decision["action"] == "keep" and "skip_unchanged" in decision["rule"].split(",")


def test_one_changed_row_or_one_ddl_change_is_never_skipped(tmp_path: Path) -> None:
    config, database, storage = _setup(tmp_path)
    _backup(config, "2031-05-01 10:00:00")
    _execute(database, "UPDATE item SET body = x'01' WHERE id = 7")
    _backup(config, "2031-05-01 11:00:00")
    _execute(database, "ALTER TABLE item ADD COLUMN note TEXT")
    _backup(config, "2031-05-01 12:00:00")
    _execute(database, "CREATE INDEX item_body ON item (body)")
    _backup(config, "2031-05-01 13:00:00")
    assert len(data_files(storage)) == 4
    assert _skips(storage) == []
    reasons = [event["reason"] for event in _events(tmp_path, "backup.change_check")]
    assert reasons == ["no_backup", "changed", "changed", "changed"]
    _backup(config, "2031-05-01 14:00:00")  # and nothing changed since the last one: skipped
    assert len(data_files(storage)) == 4 and len(_skips(storage)) == 1


def test_a_commit_that_only_reaches_the_wal_is_never_skipped(tmp_path: Path) -> None:
    config, database, storage = _setup(tmp_path)
    _execute(database, "PRAGMA journal_mode = WAL")
    application = sqlite3.connect(database)  # kept open: the WAL is not checkpointed away
    try:
        application.execute("PRAGMA wal_autocheckpoint = 0")
        with application:
            application.execute("INSERT INTO item (body) VALUES (x'02')")
        _backup(config, "2031-05-01 10:00:00")
        header = (database.read_bytes()[:100], database.stat().st_size)
        with application:
            application.execute("UPDATE item SET body = x'03' WHERE id = 1")
        assert (database.read_bytes()[:100], database.stat().st_size) == header  # only the WAL changed
        _backup(config, "2031-05-01 11:00:00")
        assert len(data_files(storage)) == 2 and _skips(storage) == []
        _backup(config, "2031-05-01 12:00:00")
        assert len(data_files(storage)) == 2 and len(_skips(storage)) == 1
    finally:
        application.close()


def test_a_recent_write_a_tokenless_backup_a_labelled_run_or_a_damaged_backup_always_dumps(tmp_path: Path) -> None:
    config, database, storage = _setup(tmp_path)
    # the real clock: the file was written a moment ago, so nothing is proved and no token is kept
    _execute(database, "UPDATE item SET body = x'04' WHERE id = 2")
    assert run_agent(config, "backup").returncode == 0
    (recent,) = data_files(storage)
    assert read_manifest(manifest_path(recent)).change_token is None

    _backup(config, "2031-05-01 10:00:00")  # the newest backup has no token: dumped, now with one
    labelled = run_agent(config, "backup", "--label", "before-upgrade", env=frozen_clock("2031-05-01 11:00:00"))
    assert labelled.returncode == 0 and len(data_files(storage)) == 3

    newest = data_files(storage)[-1]
    assert read_manifest(manifest_path(newest)).label == "before-upgrade"
    newest.chmod(0o640)
    with newest.open("r+b") as stream:  # the file relied on no longer matches its hash
        stream.seek(200)
        stream.write(b"\xff")
    _backup(config, "2031-05-02 10:00:00")
    assert len(data_files(storage)) == 4 and _skips(storage) == []
    checks = [event["reason"] for event in _events(tmp_path, "backup.change_check")]
    assert checks == ["no_token", "no_previous_token", "labelled", "not_verified"]


def test_a_new_table_scope_dumps_though_the_data_did_not_change(tmp_path: Path) -> None:
    config, database, storage = _setup(tmp_path)
    _execute(database, "CREATE TABLE audit (x)")
    _backup(config, "2031-05-01 10:00:00")
    _backup(config, "2031-05-01 11:00:00")
    assert len(data_files(storage)) == 1 and len(_skips(storage)) == 1
    text = config.read_text().replace("skip_unchanged = true", 'skip_unchanged = true\nexclude_tables = ["audit"]')
    config.write_text(text)
    _backup(config, "2031-05-01 12:00:00")
    assert len(data_files(storage)) == 2 and len(_skips(storage)) == 1
    assert _events(tmp_path, "backup.change_check")[-1]["reason"] == "changed"
