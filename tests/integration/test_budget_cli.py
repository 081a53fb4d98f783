"""`prune`, `pin` and `unpin` on real files: what is shown, what is deleted, what is journaled.

Backups with chosen ages are planted as real files (data, sha256, manifest, 0440), so GFS rules
over days and months can be exercised without waiting for them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sqlite3
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from agent_helpers import events_named, run_cli, write_config
from servers.common import skip_or_fail

from agent import journal
from agent.immutable import ImmutableUnsupported, is_immutable, set_immutable
from agent.manifest import Manifest, manifest_path, write_manifest
from agent.naming import backup_filename

NOW = datetime.now(UTC).replace(microsecond=0)


def sqlite_bytes() -> bytes:
    """A small, whole SQLite database file, so `verify` passes on planted backups."""
    path = Path(tempfile.mkdtemp()) / "planted.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE t (data BLOB)")
        connection.execute("INSERT INTO t VALUES (?)", (os.urandom(2000),))
    connection.close()
    data = path.read_bytes()
    shutil.rmtree(path.parent)
    return data


def plant(storage: Path, job: str, folder: str, created: datetime) -> Path:
    """A good backup as the runner would have left it: data file, manifest, both 0440, journaled."""
    directory = storage / job / folder
    directory.mkdir(parents=True, exist_ok=True)
    (storage / ".agent").mkdir(mode=0o700, exist_ok=True)
    name = backup_filename(job, folder, created, "sqlite")
    data = sqlite_bytes()
    size = len(data)
    path = directory / name
    path.write_bytes(data)
    path.chmod(0o440)
    digest = hashlib.sha256(data).hexdigest()
    write_manifest(
        path,
        Manifest(
            job=job,
            engine="sqlite",
            kind="database",
            database=folder,
            file=name,
            host="test",
            server="local",
            server_version="3",
            tool="sqlite3-backup-api",
            tool_version="3",
            format="sqlite3",
            compression="none",
            compression_level=None,
            started_at=created.isoformat(),
            finished_at=created.isoformat(),
            duration_seconds=0.1,
            raw_bytes=size,
            stored_bytes=size,
            sha256=digest,
            run_id="planted",
            agent_version="0",
        ),
    )
    journal.append(storage, "created", path=str(path.relative_to(storage)), sha256=digest, bytes=size)
    return path


@pytest.fixture
def config(tmp_path: Path) -> Path:
    jobs = {
        "app": {"engine": "sqlite", "databases": [str(tmp_path / "app.db")], "timezone": "Europe/Berlin"},
        "other": {"engine": "sqlite", "databases": [str(tmp_path / "other.db")]},
    }
    retention = {"keep_daily": 3, "keep_min": 2}
    return write_config(tmp_path, jobs, storage={"compression": "none"}, sections={"retention": retention})


def storage_of(config: Path) -> Path:
    return config.parent / "storage"


def daily(config: Path, job: str = "app", days: int = 6) -> list[Path]:
    """One backup a day at noon UTC on each of the last `days` days before today, oldest first."""
    noon = NOW.replace(hour=12, minute=0, second=0)
    return [plant(storage_of(config), job, "app.db", noon - timedelta(days=day)) for day in range(days, 0, -1)]


def test_a_dry_run_shows_every_file_with_keep_or_delete_and_the_rule_and_deletes_nothing(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = daily(config)
    assert run_cli(config, "prune", "--dry-run") == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "app/app.db/" in line]
    assert len(lines) == 6
    by_name = {line.split()[-1].rsplit("/", 1)[-1]: line.split()[:2] for line in lines}
    assert by_name[paths[0].name] == ["delete", "expired"]
    assert by_name[paths[2].name] == ["delete", "expired"]
    assert by_name[paths[3].name] == ["keep", "keep_daily"]
    assert by_name[paths[5].name] == ["keep", "keep_min,keep_daily"]
    assert all(path.exists() and manifest_path(path).exists() for path in paths)


def test_prune_as_json_is_one_document_a_program_can_read(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    daily(config)
    assert run_cli(config, "prune", "--dry-run", "--json") == 0
    document = json.loads(capsys.readouterr().out)
    assert document["dry_run"] is True
    assert [decision["action"] for decision in document["decisions"]] == ["delete"] * 3 + ["keep"] * 3
    assert document["free_bytes"] > 0 and document["reserve_bytes"] > 0


def test_prune_deletes_manifest_and_data_and_journals_each_deletion_with_its_rule(config: Path) -> None:
    paths = daily(config)
    assert run_cli(config, "prune") == 0
    assert [path.exists() for path in paths] == [False, False, False, True, True, True]
    assert not any(manifest_path(path).exists() for path in paths[:3])
    entries, problems = journal.read_entries(storage_of(config))
    assert problems == []
    deleted = [entry for entry in entries if entry["event"] == "deleted"]
    assert [entry["path"] for entry in deleted] == [str(path.relative_to(storage_of(config))) for path in paths[:3]]
    assert {entry["rule"] for entry in deleted} == {"expired"}
    assert all(len(entry["sha256"]) == 64 for entry in deleted)
    assert len(events_named(config.parent, "retention.deleted")) == 3
    assert run_cli(config, "verify") == 0, "the journal and the disk agree after a prune"


def test_prune_with_a_job_leaves_other_jobs_alone(config: Path) -> None:
    app = daily(config, "app")
    other = daily(config, "other")
    assert run_cli(config, "prune", "--job", "other") == 0
    assert all(path.exists() for path in app)
    assert [path.exists() for path in other] == [False, False, False, True, True, True]


def test_a_pinned_backup_outlives_every_rule_until_it_is_unpinned(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = daily(config)
    oldest = paths[0]
    assert run_cli(config, "pin", str(manifest_path(oldest))) == 0, "the manifest's path names its backup too"
    assert "pinned app/app.db/" in capsys.readouterr().out
    pins = json.loads((storage_of(config) / ".agent" / "pins.json").read_text())
    assert list(pins["pins"]) == [str(oldest.relative_to(storage_of(config)))]
    assert run_cli(config, "prune") == 0
    assert oldest.exists()
    assert not paths[1].exists()
    assert run_cli(config, "unpin", str(oldest)) == 0
    assert run_cli(config, "prune") == 0
    assert not oldest.exists()
    capsys.readouterr()
    assert run_cli(config, "unpin", str(oldest)) == 0
    assert "was not pinned" in capsys.readouterr().out


def test_pin_refuses_what_is_not_a_backup_under_storage(config: Path, tmp_path: Path) -> None:
    paths = daily(config, days=1)
    stray = tmp_path / "elsewhere.sqlite"
    stray.write_bytes(b"x")
    assert run_cli(config, "pin", str(stray)) == 2
    assert run_cli(config, "pin", str(paths[0]) + ".partial") == 2
    assert run_cli(config, "pin", str(storage_of(config) / "app" / "app.db" / "missing.sqlite")) == 2
    assert not (storage_of(config) / ".agent" / "pins.json").exists()


def test_an_immutable_backup_has_the_flag_cleared_just_before_it_is_deleted(config: Path) -> None:
    paths = daily(config)
    try:
        for path in (paths[0], manifest_path(paths[0])):
            set_immutable(path)
    except ImmutableUnsupported as error:
        skip_or_fail(f"this filesystem or process cannot set the immutable attribute: {error.strerror}")
    assert is_immutable(paths[0])
    assert run_cli(config, "prune") == 0
    assert not paths[0].exists() and not manifest_path(paths[0]).exists()


def test_a_crash_between_manifest_and_data_leaves_an_incomplete_file_the_next_prune_removes(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = daily(config, days=4)
    # The deleter removes the manifest first; a crash right after leaves the data file alone.
    os.unlink(manifest_path(paths[0]))
    assert run_cli(config, "list") == 0
    assert "incomplete" in capsys.readouterr().out
    assert run_cli(config, "prune", "--dry-run") == 0
    shown = [line for line in capsys.readouterr().out.splitlines() if paths[0].name in line]
    assert shown and shown[0].split()[:2] == ["delete", "incomplete"]
    assert run_cli(config, "prune") == 0
    assert not paths[0].exists()


def test_status_shows_usage_budget_free_space_and_the_predicted_next_dump(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = daily(config, days=3)
    size = paths[0].stat().st_size
    run_cli(config, "status", "--json")
    shown = json.loads(capsys.readouterr().out)
    storage = shown["storage"]
    assert storage["used_bytes"] >= 3 * size
    assert storage["reserve_bytes"] == storage["total_bytes"] // 10  # the default reserve, 10%
    assert storage["free_bytes"] > 0 and storage["headroom_bytes"] > 0
    [app] = [job for job in shown["jobs"] if job["job"] == "app"]
    [database] = [database for database in app["databases"] if database["backups"]]
    assert (database["database"], database["backups"]) == ("app.db", 3)
    assert database["predicted_next_bytes"] == math.ceil(size * 1.2)  # the largest recent size plus 20% growth
