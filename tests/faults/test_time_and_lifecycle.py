"""Time and lifecycle: a frozen process, wall-clock jumps (libfaketime), SIGTERM to a tool that
ignores it.

The wall clock is moved with libfaketime's timestamp file (re-read on every call), the monotonic
clock stays real (FAKETIME_DONT_FAKE_MONOTONIC=1); see faketime_driver.py for the one workaround.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import data_files, events_named, write_config
from fault_helpers import (
    PROJECT,
    fake_pg_dump,
    fingerprints,
    partial_files,
    pg_job,
    process_gone,
    read_pid,
    require_faketime,
    run_agent,
    sqlite_database,
    sqlite_job,
    start_agent,
    use_real_tool,
    wait_until,
)
from servers.postgres import PostgresServer

from agent import catalog

FAKETIME_DRIVER = Path(__file__).with_name("faketime_driver.py")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _moment(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["timestamp"])


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stream:
        fields = stream.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as stream:
        line = next(line for line in stream if line.startswith("VmRSS:"))
    return int(line.split()[1])


class FakeClock:
    """A libfaketime offset for one agent subprocess, changed while it runs."""

    def __init__(self, directory: Path) -> None:
        self.library = require_faketime()
        self.file = directory / "faketime"
        self.set("+0")

    def set(self, offset: str) -> None:
        temporary = self.file.with_suffix(".tmp")
        temporary.write_text(offset + "\n")
        temporary.replace(self.file)

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "LD_PRELOAD": str(self.library),
            "FAKETIME_TIMESTAMP_FILE": str(self.file),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }

    def argv(self, config: Path, *args: str) -> list[str]:
        return [sys.executable, str(FAKETIME_DRIVER), "-c", str(config), *args]


# ------------------------------------------------------------------------------------------------
# A frozen process


def test_a_daemon_frozen_across_scheduled_runs_runs_the_job_once_when_it_thaws(
    tmp_path: Path, processes: list[Any]
) -> None:
    every = 3  # seconds; interval schedules are aligned to the Unix epoch
    database = sqlite_database(tmp_path / "app.db")
    config = write_config(
        tmp_path, {"app": sqlite_job(database, every=f"{every}s")}, sections={"retention": {"keep_last": 50}}
    )
    daemon = start_agent(config, "run")
    processes.append(daemon)
    wait_until(lambda: events_named(tmp_path, "job.finished"), what="the first run")

    daemon.send_signal(signal.SIGSTOP)
    # two scheduled times pass while it is frozen; it thaws just after a third
    thaw_at = (math.floor((time.time() + 2 * every) / every) + 1) * every + 0.3
    time.sleep(thaw_at - time.time())
    daemon.send_signal(signal.SIGCONT)
    thawed = datetime.fromtimestamp(thaw_at).astimezone()
    next_regular = thawed + timedelta(seconds=every - 0.3)
    time.sleep(every - 0.5)

    starts = [_moment(event) for event in events_named(tmp_path, "job.started")]
    owed = [moment for moment in starts if thawed <= moment < next_regular]
    assert len(owed) == 1, f"runs between the thaw and the next scheduled time: {owed}"
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(20) == 0
    assert not events_named(tmp_path, "daemon.clock_jumped"), "a pause is not a clock jump"
    assert all(event["status"] == "ok" for event in events_named(tmp_path, "job.finished"))


# ------------------------------------------------------------------------------------------------
# The wall clock jumps


def test_clock_jumps_of_years_are_logged_and_cost_at_most_one_run_and_no_cpu_or_memory(
    tmp_path: Path, processes: list[Any]
) -> None:
    clock = FakeClock(tmp_path)
    database = sqlite_database(tmp_path / "app.db")
    config = write_config(tmp_path, {"app": sqlite_job(database, every="1h")})
    daemon = subprocess.Popen(
        clock.argv(config, "run"),
        cwd=PROJECT,
        env=clock.env(),
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "daemon.stderr").open("wb"),
    )
    processes.append(daemon)
    wait_until(lambda: events_named(tmp_path, "job.finished"), what="the first (catch-up) run")
    time.sleep(1)
    cpu_before, rss_before = _cpu_seconds(daemon.pid), _rss_kib(daemon.pid)

    clock.set("+3y")
    (jumped,) = wait_until(lambda: events_named(tmp_path, "daemon.clock_jumped"), timeout=10, what="a warning")
    time.sleep(4)

    assert jumped["level"] == "warning"
    assert jumped["seconds"] > 3 * 365 * 86400 - 60
    runs_after = [event for event in events_named(tmp_path, "job.started") if _moment(event) >= _moment(jumped)]
    assert len(runs_after) <= 1, f"{len(runs_after)} runs after the jump"
    cpu = _cpu_seconds(daemon.pid) - cpu_before
    assert cpu < 1.5, f"{cpu:.2f}s of CPU in 4s after the jump"
    assert _rss_kib(daemon.pid) - rss_before < 30 * 1024
    assert not events_named(tmp_path, "job.error")

    storage = tmp_path / "storage"
    kept = fingerprints(data_files(storage))
    runs_before_going_back = len(events_named(tmp_path, "job.started"))
    clock.set("-2y")
    wait_until(lambda: len(events_named(tmp_path, "daemon.clock_jumped")) == 2, timeout=10, what="a second warning")
    time.sleep(2)

    back = events_named(tmp_path, "daemon.clock_jumped")[-1]
    assert back["direction"] == "backward" and back["seconds"] < -5 * 365 * 86400 + 60
    assert len(events_named(tmp_path, "job.started")) == runs_before_going_back, "the newest backup is recent enough"
    assert fingerprints(data_files(storage)) == kept
    assert _cpu_seconds(daemon.pid) - cpu_before < 2.5
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(20) == 0


def test_a_backward_jump_overwrites_nothing_and_keeps_the_newest_backup(tmp_path: Path) -> None:
    clock = FakeClock(tmp_path)
    database = sqlite_database(tmp_path / "app.db")
    config = write_config(tmp_path, {"app": sqlite_job(database)})
    storage = tmp_path / "storage"
    clock.set("+1d")
    assert subprocess.run(clock.argv(config, "backup"), cwd=PROJECT, env=clock.env(), check=False).returncode == 0
    (newest,) = data_files(storage)
    before = fingerprints([newest, newest.with_name(newest.name + ".json")])

    clock.set("-2y")
    again = subprocess.run(clock.argv(config, "backup"), cwd=PROJECT, env=clock.env(), check=False)

    assert again.returncode == 0
    assert fingerprints(list(before)) == before
    assert len(data_files(storage)) == 2
    goods = [record for record in catalog.scan(storage) if record.status == catalog.GOOD]
    assert max(goods, key=lambda record: record.order).path == newest
    offered = run_agent(
        config, "restore", "--job", "app", "--database", str(database), "--to-file", str(tmp_path / "out"), "--dry-run"
    )
    assert f"would write the decompressed {newest} to" in offered.stdout


def test_watchdogs_keep_monotonic_time_when_the_wall_clock_jumps_both_ways_mid_dump(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path
) -> None:
    clock = FakeClock(tmp_path)
    tool = fake_pg_dump(tmp_path, pg_server, "printf PGDMP; exec sleep 300")
    config = write_config(
        tmp_path,
        {"main": pg_job(tmp_path, pg_server, [pg_database], tool=str(tool), stall_timeout="3s", timeout="10s")},
    )
    started = time.monotonic()
    backup = subprocess.Popen(clock.argv(config, "backup"), cwd=PROJECT, env=clock.env(), stdout=subprocess.PIPE)
    read_pid(tmp_path / "tool.pid")
    clock.set("+3y")
    time.sleep(1)
    clock.set("-2y")
    backup.communicate(timeout=30)
    took = time.monotonic() - started

    assert backup.returncode == 1
    assert [event["reason"] for event in events_named(tmp_path, "backup.failed")] == ["stalled"]
    assert 3 <= took < 8, f"the stall watchdog fired after {took:.1f}s"
    assert partial_files(tmp_path / "storage") == []


# ------------------------------------------------------------------------------------------------
# SIGTERM to a tool that ignores it


@pytest.mark.parametrize("verb", ["run", "backup"])
def test_sigterm_escalates_to_sigkill_for_a_tool_ignoring_sigterm_within_the_shutdown_timeout(
    verb: str, pg_server: PostgresServer, pg_database: str, tmp_path: Path, processes: list[Any]
) -> None:
    tool = fake_pg_dump(tmp_path, pg_server, "trap '' TERM; printf PGDMP; exec sleep 300")
    job = pg_job(tmp_path, pg_server, [pg_database], tool=str(tool), every="1h", stall_timeout="60s")
    config = write_config(tmp_path, {"main": job}, sections={"daemon": {"shutdown_timeout": "5s"}})
    agent = start_agent(config, verb)
    processes.append(agent)
    tool_pid = read_pid(tmp_path / "tool.pid")
    wait_until(lambda: partial_files(tmp_path / "storage"), what="the dump's partial file")

    started = time.monotonic()
    agent.send_signal(signal.SIGTERM)
    code = agent.wait(30)
    took = time.monotonic() - started

    assert took < 5.5, f"exited {took:.1f}s after SIGTERM; shutdown_timeout is 5s"
    assert code == (0 if verb == "run" else 128 + signal.SIGTERM)
    assert process_gone(tool_pid), "the tool that ignores SIGTERM outlived the agent"
    assert partial_files(tmp_path / "storage") == []
    assert "shutdown" in [event["reason"] for event in events_named(tmp_path, "backup.interrupted")]
    if verb == "run":
        assert events_named(tmp_path, "daemon.stopped")[-1]["clean"] is True
    use_real_tool(tmp_path)
    assert run_agent(config, "backup").returncode == 0
    assert len(data_files(tmp_path / "storage")) == 1


def test_a_run_stuck_past_the_shutdown_timeout_still_takes_its_tool_down_with_the_daemon(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path, processes: list[Any]
) -> None:
    """The run is stuck in a throttled disk write (not in the loop that watches the stop flag)
    while its tool, ignoring SIGTERM and writing nothing more, would never get SIGPIPE."""
    body = f"trap '' TERM; head -c 300000 /dev/urandom > {tmp_path}/burst; cat {tmp_path}/burst; exec sleep 300"
    tool = fake_pg_dump(tmp_path, pg_server, body)
    job = pg_job(tmp_path, pg_server, [pg_database], tool=str(tool), every="1h", stall_timeout="60s")
    config = write_config(
        tmp_path,
        {"main": job},
        storage={"compression": "none", "max_write_rate": "2KiB/s"},
        sections={"daemon": {"shutdown_timeout": "1s"}},
    )
    daemon = start_agent(config, "run")
    processes.append(daemon)
    tool_pid = read_pid(tmp_path / "tool.pid")
    wait_until(lambda: partial_files(tmp_path / "storage"), what="the throttled partial file")

    started = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    code = daemon.wait(30)
    took = time.monotonic() - started

    assert code == 1 and took < 2.5
    (timeout,) = events_named(tmp_path, "daemon.shutdown_timeout")
    assert timeout["killed_pids"] == [tool_pid]
    wait_until(lambda: process_gone(tool_pid), timeout=2, what="the tool's death")
    assert events_named(tmp_path, "daemon.stopped")[-1]["clean"] is False
