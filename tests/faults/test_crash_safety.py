"""Crash safety and atomic publish: kill -9 mid-dump, a crash at each publishing step, a name that
is already taken, a umask of 000, and two agents on one storage path.
"""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import data_files, events_named, stored_files, write_config
from fault_helpers import (
    FROZEN,
    PROJECT,
    fake_pg_dump,
    fingerprints,
    frozen_clock,
    partial_files,
    pg_job,
    process_gone,
    read_pid,
    run_agent,
    sqlite_database,
    sqlite_job,
    start_agent,
    use_real_tool,
    wait_until,
)
from servers.postgres import PostgresServer

from agent import catalog
from agent.naming import backup_filename
from agent.verify import INCOMPLETE, OK, verify_storage

CRASH_DRIVER = Path(__file__).with_name("crash_driver.py")
# a 400 KB database takes ~6 s: the second agent must reach the lock while the first still holds it, also on a
# loaded machine (its start, config and path checks took over 1.6 s there); at full priority, so the
# gentle impact's niceness does not move the race
SLOW_STORAGE = {"compression": "none", "max_write_rate": "64KiB/s", "impact": "fastest"}


def _verify_statuses(storage: Path) -> dict[str, str]:
    return {finding.path.name: finding.status for finding in verify_storage(storage)}


def _list(config: Path) -> list[dict[str, Any]]:
    result = run_agent(config, "list", "--json")
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


# ------------------------------------------------------------------------------------------------
# kill -9 of the agent while its dump tool writes


@pytest.mark.parametrize("verb", ["backup", "run"])
def test_kill_9_of_the_agent_mid_dump_leaves_no_final_file_the_orphan_dies_and_the_next_run_sweeps(
    verb: str, pg_server: PostgresServer, pg_database: str, tmp_path: Path, processes: list[Any]
) -> None:
    pg_server.psql(pg_database, "CREATE TABLE kept (id int); INSERT INTO kept SELECT generate_series(1, 500);")
    tool = fake_pg_dump(tmp_path, pg_server, "printf PGDMP; while true; do printf 0123456789; sleep 0.05; done")
    config = write_config(tmp_path, {"main": pg_job(tmp_path, pg_server, [pg_database], tool=str(tool), every="1s")})
    use_real_tool(tmp_path)
    assert run_agent(config, "backup").returncode == 0
    storage = tmp_path / "storage"
    earlier = fingerprints(data_files(storage))
    (tmp_path / "real").unlink()

    agent = start_agent(config, verb)
    processes.append(agent)
    tool_pid = read_pid(tmp_path / "tool.pid")
    wait_until(lambda: partial_files(storage), what="a partial file")
    agent.send_signal(signal.SIGKILL)
    agent.wait(10)

    wait_until(lambda: process_gone(tool_pid), timeout=5, what="the orphaned dump tool dying on its next write")
    (orphan,) = partial_files(storage)
    assert fingerprints(data_files(storage)) == earlier, "no final name for the killed run"
    use_real_tool(tmp_path)
    after = run_agent(config, "backup")
    assert after.returncode == 0, after.stdout + after.stderr
    assert str(orphan) in [event["path"] for event in events_named(tmp_path, "backup.partial_removed")]
    assert partial_files(storage) == []
    assert set(_verify_statuses(storage).values()) == {OK}
    assert len(data_files(storage)) == 2


# ------------------------------------------------------------------------------------------------
# A crash at each step of publishing


STEPS = {
    # step: (is a partial left, is the new data file left without a manifest, is the new backup good)
    "write": (True, False, False),
    "fsync": (True, False, False),
    "link": (True, True, False),
    "directory-fsync": (False, True, False),
    "manifest": (False, False, True),
    "journal": (False, False, True),
}


@pytest.mark.parametrize("step", list(STEPS))
def test_a_crash_at_each_publishing_step_leaves_only_whole_backups_counted(step: str, tmp_path: Path) -> None:
    partial_left, incomplete_left, new_is_good = STEPS[step]
    database = sqlite_database(tmp_path / "app.db", payload_bytes=200_000)
    config = write_config(tmp_path, {"app": sqlite_job(database, retention={"keep_last": 1, "keep_min": 1})})
    assert run_agent(config, "backup").returncode == 0
    storage = tmp_path / "storage"
    (first,) = data_files(storage)

    crashed = subprocess.run(
        [sys.executable, str(CRASH_DRIVER), step, "-c", str(config), "backup"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert crashed.returncode == 70, f"the crash was not injected: {crashed.stdout}{crashed.stderr}"
    assert bool(partial_files(storage)) == partial_left
    new_files = [path for path in data_files(storage) if path != first]
    rows = {Path(row["path"]).name: row["status"] for row in _list(config)}
    if incomplete_left:
        (incomplete,) = new_files
        assert rows[incomplete.name] == "incomplete"
        assert _verify_statuses(storage)[incomplete.name] == INCOMPLETE
        assert run_agent(config, "verify").returncode == 1
    if not new_is_good:
        offered = run_agent(
            config,
            "restore",
            "--job",
            "app",
            "--database",
            str(database),
            "--to-file",
            str(tmp_path / "out"),
            "--dry-run",
        )
        assert offered.returncode == 0, offered.stderr
        assert f"would write the decompressed {first} to" in offered.stdout, "only a whole backup is offered"
        plan = json.loads(run_agent(config, "prune", "--dry-run", "--json").stdout)
        kept = {Path(decision["path"]).name: decision for decision in plan["decisions"]}
        assert kept[first.name]["action"] == "keep", "an incomplete file took the place of keep_last = 1"
        assert kept[first.name]["rule"] != "incomplete"
    else:
        (new,) = new_files
        assert rows[new.name] == "good"

    after = run_agent(config, "backup")  # the restart: sweeps, then a good backup
    assert after.returncode == 0, after.stdout + after.stderr
    assert partial_files(storage) == []
    if partial_left:
        assert events_named(tmp_path, "backup.partial_removed")
    statuses = _verify_statuses(storage)
    for path in data_files(storage):
        has_manifest = path.with_name(path.name + ".json").exists()
        assert statuses[path.name] == (OK if has_manifest else INCOMPLETE)
    goods = [record for record in catalog.scan(storage) if record.status == catalog.GOOD]
    assert goods, "the restart made a good backup"


# ------------------------------------------------------------------------------------------------
# A final name that is already taken


def test_two_runs_in_one_second_get_unique_names_and_overwrite_nothing(tmp_path: Path) -> None:
    database = sqlite_database(tmp_path / "app.db")
    config = write_config(tmp_path, {"app": sqlite_job(database, retention={"keep_last": 100})})
    clock = frozen_clock()
    assert run_agent(config, "backup", env=clock).returncode == 0
    storage = tmp_path / "storage"
    (first,) = data_files(storage)
    before = fingerprints([first, first.with_name(first.name + ".json")])

    second = run_agent(config, "backup", env=clock)

    assert second.returncode == 0, second.stdout + second.stderr
    assert fingerprints(list(before)) == before, "the first backup was replaced"
    names = sorted(path.name for path in data_files(storage))
    assert names == sorted([first.name, first.name.replace("Z.sqlite", "Z-1.sqlite")])
    assert set(_verify_statuses(storage).values()) == {OK}


def test_when_every_name_of_the_second_is_taken_the_run_fails_loudly_and_overwrites_nothing(tmp_path: Path) -> None:
    database = sqlite_database(tmp_path / "app.db")
    config = write_config(tmp_path, {"app": sqlite_job(database)})
    folder = tmp_path / "storage" / "app" / "app.db"
    folder.mkdir(parents=True)
    moment = datetime.fromisoformat(FROZEN + "+00:00")
    squatters = []
    for sequence in range(100):
        squatter = folder / backup_filename("app", "app.db", moment, "sqlite.zst", sequence)
        squatter.write_bytes(f"not yours {sequence}".encode())
        squatters.append(squatter)
    before = fingerprints(squatters)

    result = run_agent(config, "backup", env=frozen_clock())

    assert result.returncode == 1
    assert "no free file name" in result.stdout
    assert [event["reason"] for event in events_named(tmp_path, "backup.failed")] == ["name_taken"]
    assert fingerprints(squatters) == before
    assert partial_files(tmp_path / "storage") == []
    assert sorted(folder.iterdir()) == sorted(squatters)


# ------------------------------------------------------------------------------------------------
# umask 000


def test_under_umask_000_every_file_and_folder_gets_its_documented_mode(tmp_path: Path) -> None:
    database = sqlite_database(tmp_path / "app.db")
    config = write_config(tmp_path, {"app": sqlite_job(database)})
    log_file = tmp_path / "logs" / "agent" / "agent.log"
    config.write_text(config.read_text().replace(str(tmp_path / "agent.log"), str(log_file)))

    assert run_agent(config, "backup", umask=0).returncode == 0
    storage = tmp_path / "storage"
    (dump,) = data_files(storage)
    assert run_agent(config, "pin", str(dump), umask=0).returncode == 0
    assert run_agent(config, "prune", umask=0).returncode == 0

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.lstat().st_mode)

    agent_directory = storage / ".agent"
    assert mode(storage) == 0o750
    assert mode(storage / "app") == 0o750 and mode(dump.parent) == 0o750
    assert mode(dump) == 0o440 and mode(dump.with_name(dump.name + ".json")) == 0o440
    assert mode(agent_directory) == 0o700
    for name in ("journal.jsonl", "state.json", "pins.json"):
        assert mode(agent_directory / name) == 0o600, name
    for path in agent_directory.rglob("*"):
        expected = 0o700 if path.is_dir() else 0o600
        assert mode(path) == expected, f"{path.relative_to(storage)} is {oct(mode(path))}"
    for path in stored_files(storage):
        assert mode(path) == 0o440, path
    assert mode(log_file) == 0o640, "the log file must not be writable (forgeable) by others"
    assert mode(log_file.parent) == mode(log_file.parent.parent) == 0o750


# ------------------------------------------------------------------------------------------------
# Two agents on one storage path


def test_a_second_daemon_refuses_and_starts_after_kill_9_of_the_first_without_cleanup(
    tmp_path: Path, processes: list[Any]
) -> None:
    # ~6 s of dump at SLOW_STORAGE's rate: the second `run` (a Python start, ~1.5 s on a loaded machine)
    # must find the first still dumping
    database = sqlite_database(tmp_path / "app.db", payload_bytes=400_000)
    config = write_config(tmp_path, {"app": sqlite_job(database, every="1h")}, storage=SLOW_STORAGE)
    storage = tmp_path / "storage"
    first = start_agent(config, "run")
    processes.append(first)
    wait_until(lambda: partial_files(storage), what="the first daemon's dump")

    refused = run_agent(config, "run")

    assert refused.returncode == 75  # a daemon already holds the storage: quietly, for cron
    assert refused.stderr == ""
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    (orphan,) = partial_files(storage)
    second = start_agent(config, "run")
    processes.append(second)
    wait_until(lambda: events_named(tmp_path, "job.finished"), timeout=30, what="the second daemon's run")
    second.send_signal(signal.SIGTERM)
    assert second.wait(20) == 0
    assert [event["status"] for event in events_named(tmp_path, "job.finished")] == ["ok"]
    assert str(orphan) in [event["path"] for event in events_named(tmp_path, "backup.partial_removed")]
    assert partial_files(storage) == []
    assert len(data_files(storage)) == 1


def test_a_second_backup_of_the_same_job_refuses_and_runs_after_kill_9_of_the_first(
    tmp_path: Path, processes: list[Any]
) -> None:
    database = sqlite_database(tmp_path / "app.db", payload_bytes=400_000)
    config = write_config(tmp_path, {"app": sqlite_job(database)}, storage=SLOW_STORAGE)
    storage = tmp_path / "storage"
    first = start_agent(config, "backup")
    processes.append(first)
    wait_until(lambda: partial_files(storage), what="the first backup's dump")

    refused = run_agent(config, "backup")

    assert refused.returncode == 1
    assert f"a backup of job app is already running (held by pid {first.pid})" in refused.stdout
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    (orphan,) = partial_files(storage)
    again = run_agent(config, "backup")
    assert again.returncode == 0, again.stdout + again.stderr
    assert str(orphan) in [event["path"] for event in events_named(tmp_path, "backup.partial_removed")]
    assert partial_files(storage) == []
    assert len(data_files(storage)) == 1
    assert set(_verify_statuses(storage).values()) == {OK}
