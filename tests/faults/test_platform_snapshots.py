"""The snapshot ledger end to end: real PostgreSQL dumps made on 17 faked days (libfaketime), deleted by
retention, then `list --deleted`, `status`, `doctor` and `restore --at` read back what the platform holds.

Set BACKUP_AGENT_DOC_OUTPUT=FILE to keep the commands' output (the README's "Running on a platform with
snapshots" section is that output).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from agent_helpers import write_config
from fault_helpers import PROJECT, pg_job, require_faketime
from servers.postgres import PostgresServer

FAKETIME_DRIVER = Path(__file__).with_name("faketime_driver.py")
FIRST_DAY = datetime(2026, 11, 16, tzinfo=UTC)
DAYS = 17  # 2026-11-16 .. 2026-12-02, a dump at 23:30 UTC each day
NOW = "2026-12-03 15:00:00"


def _agent(config: Path, at: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The agent's command line with its wall clock starting at `at` (UTC) and running on."""
    env = {
        **os.environ,
        "LD_PRELOAD": str(require_faketime()),
        "FAKETIME": f"@{at}",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "TZ": "UTC",
    }
    argv = [sys.executable, str(FAKETIME_DRIVER), "-c", str(config), *args]
    return subprocess.run(argv, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=120, check=False)


def _backup(config: Path, at: datetime) -> None:
    result = _agent(config, at.strftime("%Y-%m-%d %H:%M:%S"), "backup")
    assert result.returncode == 0, result.stdout + result.stderr


def _keep_for_docs(name: str, command: str, result: subprocess.CompletedProcess[str]) -> None:
    """Append a command's output for the README; stderr first (the notes come before what was written)."""
    target = os.environ.get("BACKUP_AGENT_DOC_OUTPUT")
    if target:
        with open(target, "a", encoding="utf-8") as stream:
            stream.write(
                f"### {name}\n$ backup-agent {command}\n{result.stderr}{result.stdout}(exit {result.returncode})\n\n"
            )


@pytest.fixture(scope="module")
def platform_run(
    pg_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, Path, str]]:
    """17 daily dumps of a real database, retention keeping 4 days, plus two dumps between two snapshots."""
    directory = tmp_path_factory.mktemp("platform")
    database = "shop"
    pg_server.start()
    with pg_server.connect() as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        connection.execute(f"CREATE DATABASE {database}")
    with pg_server.connect(database) as connection:
        connection.execute("CREATE TABLE orders (id int PRIMARY KEY, item text)")
        connection.execute("INSERT INTO orders SELECT n, 'item ' || n FROM generate_series(1, 500) n")
        connection.commit()
    config = write_config(
        directory,
        {"main": pg_job(directory, pg_server, [database])},
        sections={
            "retention": {"keep_daily": 4, "keep_weekly": 0, "keep_monthly": 0, "keep_min": 1},
            "snapshots": {"times": ["00:00", "06:00", "12:00", "18:00"], "timezone": "UTC", "keep": "14d"},
        },
    )
    for day in range(DAYS):
        moment = FIRST_DAY + timedelta(days=day, hours=23, minutes=30)
        if day == DAYS - 1:  # two dumps on the last morning, the first deleted before the 06:00 snapshot
            _backup(config, moment.replace(hour=1, minute=0))
            _backup(config, moment.replace(hour=1, minute=20))
        _backup(config, moment)
    yield config, directory / "storage", database
    pg_server.start()
    with pg_server.connect() as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def test_list_deleted_names_the_snapshot_and_the_path_to_ask_for(platform_run: tuple[Path, Path, str]) -> None:
    config, storage, database = platform_run
    listed = _agent(config, NOW, "list", "--deleted")
    _keep_for_docs("list --deleted", "list --deleted", listed)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    nov_24 = f"{storage}/main/{database}/main.{database}.20261124T2330"
    (line,) = [line for line in lines if nov_24 in line]
    assert (
        "deleted locally on 2026-11-28 23:30 UTC, held by the snapshot of 2026-11-28 18:00 UTC "
        "until 2026-12-12 18:00 UTC (and 15 earlier snapshots): ask for " + nov_24
    ) in line
    assert (storage / "main" / database).is_dir() and not list((storage / "main" / database).glob("*20261124T2330*"))
    # published at 01:00 and deleted at 01:20: no snapshot between, so the platform never had it
    assert not [line for line in lines if "20261202T0100" in line]
    assert any("20261202T0120" in line for line in lines), "the 01:20 dump lived through three snapshots"
    now_rows = json.loads(_agent(config, NOW, "list", "--deleted", "--json").stdout)
    later_rows = json.loads(_agent(config, "2026-12-05 15:00:00", "list", "--deleted", "--json").stdout)
    # deleted 2026-11-20 23:30, last in the snapshot of 18:00, which the platform drops 2026-12-04 18:00
    assert min(row["created_at"] for row in now_rows)[:16] == "2026-11-16T23:30"
    assert min(row["created_at"] for row in later_rows)[:16] == "2026-11-17T23:30"
    assert all(row["snapshots"] and row["verified"] for row in now_rows + later_rows)


def test_restore_at_a_time_with_no_local_dump_names_the_platform_copy(
    platform_run: tuple[Path, Path, str], tmp_path: Path
) -> None:
    config, storage, database = platform_run
    out = tmp_path / "restored.sql"
    args = ("restore", "--job", "main", "--database", database, "--at", "2026-11-25T12:00:00", "--to-file", str(out))
    asked = _agent(config, NOW, *args)
    _keep_for_docs("restore --at", " ".join(args[:-2]) + " --to-file restored.sql", asked)
    assert asked.returncode == 1
    assert not out.exists()
    assert (
        "the platform still has the one of 2026-11-24 23:30 UTC: deleted locally on 2026-11-28 23:30 UTC, "
        "held by the snapshot of 2026-11-28 18:00 UTC until 2026-12-12 18:00 UTC"
    ) in asked.stderr
    assert f"ask for {storage}/main/{database}/main.{database}.20261124T233" in asked.stderr
    local = _agent(config, NOW, *args[:-3], "2026-11-30T12:00:00", "--to-file", str(out))
    assert local.returncode == 0, local.stderr
    assert out.read_bytes().startswith(b"PGDMP"), "the custom-format archive of 2026-11-29, decompressed"
    assert "note:" not in local.stderr, "no deleted dump lies between 2026-11-29 23:30 and the time asked for"
    closer = _agent(config, NOW, *args[:-3], "2026-12-02T02:00:00", "--to-file", str(tmp_path / "closer.sql"))
    _keep_for_docs(
        "restore --at, a closer platform copy",
        f"restore --job main --database {database} --at 2026-12-02T02:00:00 --to-file closer.sql",
        closer,
    )
    assert closer.returncode == 0, closer.stderr
    assert "note: restoring the local backup of 2026-12-01T23:30" in closer.stderr
    assert "the platform has a closer one, of 2026-12-02T01:20:0" in closer.stderr  # the dump's start, to the second
    assert "Z: deleted locally on 2026-12-02 23:30 UTC, held by the snapshot of 2026-12-02 18:00 UTC" in closer.stderr
    too_old = _agent(config, NOW, *args[:-3], "2026-11-10T00:00:00", "--to-file", str(out))
    assert too_old.returncode == 2 and "no good backup" in too_old.stderr


def test_status_and_doctor_size_retention_to_the_platform(platform_run: tuple[Path, Path, str]) -> None:
    config, storage, database = platform_run
    status = _agent(config, NOW, "status")
    _keep_for_docs("status", "status", status)
    doctor = _agent(config, NOW, "doctor")
    _keep_for_docs("doctor", "doctor", doctor)
    for output in (status.stdout, doctor.stdout):
        assert "snapshots at 00:00, 06:00, 12:00, 18:00 (UTC), each kept 14d: 56 restore points now" in output
        assert f"main/{database}: 56 of 56 snapshots hold a dump (the newest dump in each 30m to 18h30m old)" in output
        assert "the same protection with keep_last = 1, keep_daily = 0 in [retention]" in output
        assert "frees" in output and "(3 of the 4 files it keeps" in output
    assert "held by the snapshot of 2026-12-02 18:00 UTC until 2026-12-16 18:00 UTC" in status.stdout
    assert "… and " in status.stdout and "older: `backup-agent list --deleted --job main`" in status.stdout
    picture = json.loads(_agent(config, NOW, "status", "--json").stdout)["platform"]
    (job,) = picture["jobs"]
    points = job["series"][database]
    assert points["restore_points"] == 56 and len(points["points"]) == 56
    assert job["freed_files"] == 3 and job["freed_bytes"] > 0
    on_disk = sorted(path.name for path in (storage / "main" / database).glob("*.zst"))
    assert len(on_disk) == 4


def test_an_edited_journal_marks_what_follows_the_break_unverified(platform_run: tuple[Path, Path, str]) -> None:
    config, storage, _database = platform_run
    journal_file = storage / ".agent" / "journal.jsonl"
    original = journal_file.read_bytes()
    lines = original.splitlines(keepends=True)
    edited = json.loads(lines[20])
    edited["bytes"] = (edited.get("bytes") or 0) + 1
    try:
        journal_file.write_bytes(b"".join([*lines[:20], (json.dumps(edited) + "\n").encode(), *lines[21:]]))
        listed = _agent(config, NOW, "list", "--deleted", "--json")
        rows = json.loads(listed.stdout)
        assert {row["verified"] for row in rows} == {True, False}
        assert "the journal's hash chain breaks at line 22" in listed.stderr
        text = _agent(config, NOW, "list", "--deleted")
        assert "[unverified: the journal was edited]" in text.stdout
    finally:
        journal_file.write_bytes(original)


def test_status_counts_a_skip_unchanged_check_as_proof_that_the_snapshots_dump_is_current(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path
) -> None:
    with pg_server.connect(pg_database) as connection:
        connection.execute("CREATE TABLE orders (id int PRIMARY KEY)")
        connection.execute("INSERT INTO orders SELECT generate_series(1, 100)")
        connection.commit()
    config = write_config(
        tmp_path,
        {"main": pg_job(tmp_path, pg_server, [pg_database], skip_unchanged=True)},
        sections={"snapshots": {"times": ["00:00", "06:00", "12:00", "18:00"], "keep": "14d"}},
    )
    _backup(config, datetime(2026, 12, 2, 23, 30, tzinfo=UTC))
    skipped = _agent(config, "2026-12-03 11:00:00", "backup")
    assert skipped.returncode == 0 and "unchanged" in skipped.stdout, skipped.stdout + skipped.stderr

    status = _agent(config, NOW, "status")

    assert status.returncode == 0, status.stderr
    assert (
        f"main/{pg_database}: 3 of 56 snapshots hold a dump (the newest dump in each 30m to 12h30m old; "
        "proven current by skip_unchanged to within 6h30m)"
    ) in status.stdout
