"""`backup-agent run` as a real subprocess: scheduling, no overlap, locks, signals, reload, watchdogs.

Each test starts `python -m agent -c CONFIG run` with second-scale schedules and reads its JSON log.
SQLite jobs need no server; a slow SQLite dump comes from `storage.max_write_rate`. PostgreSQL
jobs use the throwaway server with a `tool` wrapper script around the real pg_dump that can hang.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import events_named, log_events, password_file, write_config
from servers.common import free_port
from servers.postgres import PostgresServer

from agent import catalog
from agent.config import load_config
from agent.observed import run_job

PROJECT = Path(__file__).resolve().parents[2]
Event = dict[str, Any]


# ------------------------------------------------------------------------------------------------
# Helpers


class DaemonProcess:
    """One `backup-agent run` subprocess and its JSON log."""

    def __init__(self, directory: Path, config: Path) -> None:
        self.directory = directory
        self.config = config
        self.stderr_path = directory / f"daemon-{time.monotonic_ns()}.stderr"
        with self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agent", "-c", str(config), "run"],
                cwd=PROJECT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    def events(self, name: str | None = None) -> list[Event]:
        return log_events(self.directory) if name is None else events_named(self.directory, name)

    def wait_for(
        self, name: str, count: int = 1, timeout: float = 15.0, where: Callable[[Event], bool] = lambda _e: True
    ) -> list[Event]:
        """Wait until the log holds `count` events called `name` (that match `where`)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [event for event in self.events(name) if where(event)]
            if len(found) >= count:
                return found
            if self.process.poll() is not None:
                raise AssertionError(
                    f"the daemon exited ({self.process.returncode}) before {count}x {name}: "
                    f"{self.stderr_path.read_text()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no {count}x {name} within {timeout}s; log: {self.events()}")
            time.sleep(0.05)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 15.0) -> tuple[int, float]:
        """Send `signum`; the exit code and how long the daemon took to exit."""
        started = time.monotonic()
        self.process.send_signal(signum)
        code = self.process.wait(timeout)
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def daemons() -> Any:
    """Starts daemons; kills whatever a failing test left running."""
    started: list[DaemonProcess] = []

    def start(directory: Path, config: Path) -> DaemonProcess:
        daemon = DaemonProcess(directory, config)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


def sqlite_database(path: Path, payload_bytes: int = 0) -> Path:
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, body BLOB)")
        connection.execute("INSERT INTO item (body) VALUES (?)", (b"small row",))
        if payload_bytes:
            connection.execute("INSERT INTO item (body) VALUES (?)", (os.urandom(payload_bytes),))
    connection.close()
    return path


def sqlite_job(database: Path, **settings: Any) -> dict[str, Any]:
    return {"engine": "sqlite", "databases": [str(database)], "jitter": "0s", **settings}


SLOW_STORAGE = {
    "compression": "none",
    "max_write_rate": "100KiB/s",
}  # a 400 KB file takes ~4 s, long enough on a loaded machine


def moment(event: Event) -> datetime:
    return datetime.fromisoformat(event["timestamp"])


Span = tuple[datetime, datetime, str]


def dump_spans(events: list[Event], ends: tuple[str, ...] = ("backup.finished", "backup.failed")) -> list[Span]:
    """(start, end, job) of every dump, from backup.started to its end event (finished or failed)."""
    starts = {event["run_id"]: event for event in events if event["event"] == "backup.started"}
    spans = []
    for event in events:
        if event["event"] in ends and event.get("run_id") in starts:
            spans.append((moment(starts[event["run_id"]]), moment(event), str(event["job"])))
    return sorted(spans)


def lines_containing(daemon: DaemonProcess, text: str) -> list[Event]:
    """Log lines whose message contains `text` (APScheduler's own lines are plain messages)."""
    return [event for event in daemon.events() if text in str(event.get("event"))]


def partial_files(storage: Path) -> list[Path]:
    return [path for path in storage.rglob("*") if path.name.endswith(".partial")]


def good_backups(storage: Path, job: str) -> list[catalog.BackupRecord]:
    return [record for record in catalog.scan(storage, job) if record.status == catalog.GOOD]


def state_of(storage: Path, job: str) -> dict[str, Any]:
    document = json.loads((storage / ".agent" / "state.json").read_text())
    entry: dict[str, Any] = document["jobs"][job]
    return entry


def next_run_well_ahead(storage: Path, job: str, ahead: float = 1.0, timeout: float = 10.0) -> datetime:
    """The job's next planned run from state.json, once it is at least `ahead` seconds away."""
    deadline = time.monotonic() + timeout
    while True:
        planned = datetime.fromisoformat(state_of(storage, job)["next_run"])
        if (planned - datetime.now(planned.tzinfo)).total_seconds() >= ahead:
            return planned
        assert time.monotonic() < deadline, f"next_run of {job} never moved ahead"
        time.sleep(0.05)


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def fake_pg_dump(directory: Path, server: PostgresServer) -> Path:
    """A `tool` that runs the real pg_dump unless `<directory>/hang` exists; then it hangs silently.

    pg_restore and pg_dumpall sit beside it (the agent takes siblings from the tool's folder).
    """
    tools = directory / "tools"
    tools.mkdir()
    for sibling in ("pg_restore", "pg_dumpall"):
        (tools / sibling).symlink_to(Path(server.bin_dir) / sibling)
    script = tools / "pg_dump"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "--version" ]; then exec "{server.bin_dir}/pg_dump" --version; fi\n'
        f'if [ -e "{directory}/hang" ]; then echo $$ > "{directory}/hang.pid"; exec sleep 300; fi\n'
        f'if [ -e "{directory}/dribble" ]; then echo $$ > "{directory}/hang.pid";'
        " while true; do printf x; sleep 0.2; done; fi\n"
        f'exec "{server.bin_dir}/pg_dump" "$@"\n'
    )
    script.chmod(0o755)
    return script


def postgres_job(directory: Path, server: PostgresServer, database: str, **settings: Any) -> dict[str, Any]:
    return {
        "engine": "postgresql",
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "password_file": str(password_file(directory, server.password)),
        "databases": [database],
        "include_globals": False,
        "tool": str(fake_pg_dump(directory, server)),
        "jitter": "0s",
        **settings,
    }


def wait_for_file(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------------
# Scheduling


def test_an_interval_job_runs_again_and_again_and_its_state_is_recorded(tmp_path: Path, daemons: Any) -> None:
    database = sqlite_database(tmp_path / "app.db")
    config = write_config(
        tmp_path, {"app": sqlite_job(database, every="1s")}, sections={"retention": {"keep_last": 100}}
    )
    daemon = daemons(tmp_path, config)
    finished = daemon.wait_for("job.finished", count=3, where=lambda event: event["status"] == "ok")
    code, _ = daemon.stop(signal.SIGINT)

    assert code == 0
    assert daemon.events("daemon.stopped")[-1]["clean"] is True
    assert daemon.events("schedule.catch_up")  # nothing on disk yet: the first run is a catch-up
    starts = [moment(event) for event in daemon.events("job.started")]
    scheduled_gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(starts[1:])]
    assert scheduled_gaps and all(0.5 < gap < 1.9 for gap in scheduled_gaps)  # one run per second
    storage = tmp_path / "storage"
    assert len(good_backups(storage, "app")) >= 3
    state = state_of(storage, "app")
    assert state["last_status"] == "ok"
    assert state["last_success"] is not None and state["last_failure"] is None
    assert datetime.fromisoformat(state["next_run"]) > datetime.fromisoformat(state["last_start"])
    assert len(state["recent_durations"]) >= len(finished)


def test_a_run_longer_than_its_interval_never_overlaps_and_dumps_take_turns_for_the_slot(
    tmp_path: Path, daemons: Any
) -> None:
    first = sqlite_database(tmp_path / "first.db", payload_bytes=400_000)
    second = sqlite_database(tmp_path / "second.db", payload_bytes=400_000)
    config = write_config(
        tmp_path,
        {"first": sqlite_job(first, every="1s"), "second": sqlite_job(second, every="1s")},
        storage=SLOW_STORAGE,
    )
    daemon = daemons(tmp_path, config)
    daemon.wait_for("backup.finished", count=3, timeout=45)
    code, _ = daemon.stop()

    assert code == 0
    spans = dump_spans(daemon.events())
    assert {job for _start, _end, job in spans} == {"first", "second"}
    completed = dump_spans(daemon.events(), ends=("backup.finished",))
    assert len(completed) >= 3
    assert all((end - start).total_seconds() > 1.2 for start, end, _ in completed)  # each longer than "every"
    for (_, earlier_end, _), (later_start, _, _) in itertools.pairwise(spans):
        assert earlier_end <= later_start, f"two dumps overlapped: {spans}"
    assert daemon.events("job.overlap_skipped"), "a fire during a running dump should be skipped"
    assert lines_containing(daemon, "maximum number of running instances") == [], "logged once, as job.overlap_skipped"
    assert daemon.events("job.waiting_for_slot"), "the second job should have waited for the one slot"
    assert not daemon.events("backup.skipped"), "the daemon itself never ran into its own job lock"


# ------------------------------------------------------------------------------------------------
# Locks


def test_a_manual_backup_while_the_daemon_runs_the_same_job_is_skipped_as_locked(tmp_path: Path, daemons: Any) -> None:
    database = sqlite_database(tmp_path / "slow.db", payload_bytes=400_000)
    config = write_config(tmp_path, {"slow": sqlite_job(database, every="1h")}, storage=SLOW_STORAGE)
    daemon = daemons(tmp_path, config)
    daemon.wait_for("backup.started")
    manual = subprocess.run(
        [sys.executable, "-m", "agent", "-c", str(config), "backup", "--job", "slow"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    daemon.wait_for("job.finished")
    code, _ = daemon.stop()

    assert manual.returncode == 1
    assert "SKIPPED" in manual.stdout and "already running" in manual.stdout
    skipped = daemon.events("backup.skipped")
    assert [event["reason"] for event in skipped] == ["locked"]
    assert daemon.events("job.finished")[0]["status"] == "ok"
    assert len(good_backups(tmp_path / "storage", "slow")) == 1
    assert code == 0


def test_a_second_daemon_on_the_same_storage_exits_75_at_once_and_says_nothing(tmp_path: Path, daemons: Any) -> None:
    database = sqlite_database(tmp_path / "app.db")
    config = write_config(tmp_path, {"app": sqlite_job(database, every="1h")})
    first = daemons(tmp_path, config)
    first.wait_for("daemon.started")
    started = time.monotonic()
    second = subprocess.run(
        [sys.executable, "-m", "agent", "-c", str(config), "run"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert second.returncode == 75  # EX_TEMPFAIL: a daemon already keeps this storage
    assert time.monotonic() - started < 10
    assert (second.stdout, second.stderr) == ("", "")  # cron would mail any output, every minute
    said = [event for event in log_events(tmp_path) if "already running" in json.dumps(event)]
    assert [event["level"] for event in said] == ["debug"]  # nor a line a minute at the default level (info)
    assert first.process.poll() is None
    assert first.stop()[0] == 0


def test_a_second_daemon_started_on_a_terminal_names_the_running_one(tmp_path: Path, daemons: Any) -> None:
    database = sqlite_database(tmp_path / "app.db")
    config = write_config(tmp_path, {"app": sqlite_job(database, every="1h")})
    first = daemons(tmp_path, config)
    first.wait_for("daemon.started")
    primary, terminal = os.openpty()
    try:
        second = subprocess.run(
            [sys.executable, "-m", "agent", "-c", str(config), "run"],
            cwd=PROJECT,
            stderr=terminal,
            stdout=subprocess.DEVNULL,
            timeout=30,
            check=False,
        )
        os.close(terminal)
        said = os.read(primary, 4096).decode()
    finally:
        os.close(primary)

    assert second.returncode == 75
    assert "daemon" in said and "already running" in said and f"pid {first.process.pid}" in said
    assert first.stop()[0] == 0


# ------------------------------------------------------------------------------------------------
# Reload


def test_sighup_keeps_the_old_jobs_on_a_broken_config_and_takes_a_valid_one(tmp_path: Path, daemons: Any) -> None:
    old_database = sqlite_database(tmp_path / "old.db")
    new_database = sqlite_database(tmp_path / "new.db")
    config = write_config(tmp_path, {"old": sqlite_job(old_database, every="1s")})
    daemon = daemons(tmp_path, config)
    daemon.wait_for("job.finished")

    good_text = config.read_text()
    config.write_text(good_text.replace('every = "1s"', 'every = "soon"'))
    daemon.process.send_signal(signal.SIGHUP)
    failed = daemon.wait_for("config.reload_failed")[0]
    assert any("every" in problem for problem in failed["errors"])
    runs_before = len(daemon.events("job.finished"))
    daemon.wait_for("job.finished", count=runs_before + 2)  # the old job keeps running

    write_config(tmp_path, {"new": sqlite_job(new_database, every="1s")})
    daemon.process.send_signal(signal.SIGHUP)
    reloaded = daemon.wait_for("config.reloaded")[0]
    assert (reloaded["added"], reloaded["removed"]) == (["new"], ["old"])
    daemon.wait_for("job.finished", where=lambda event: event["job"] == "new")
    reload_time = moment(reloaded)
    time.sleep(1.5)
    code, _ = daemon.stop()

    assert code == 0
    late_old_runs = [
        event for event in daemon.events("job.started") if event["job"] == "old" and moment(event) > reload_time
    ]
    assert late_old_runs == []


# ------------------------------------------------------------------------------------------------
# Stopping and watchdogs (PostgreSQL, with a tool that can hang)


def test_sigterm_during_a_dump_exits_zero_in_time_without_partials_and_keeps_earlier_dumps(
    tmp_path: Path, daemons: Any, pg_server: PostgresServer, pg_database: str
) -> None:
    pg_server.psql(pg_database, "CREATE TABLE kept (id int); INSERT INTO kept SELECT generate_series(1, 100);")
    config = write_config(tmp_path, {"main": postgres_job(tmp_path, pg_server, pg_database, every="1s")})
    daemon = daemons(tmp_path, config)
    daemon.wait_for("job.finished", where=lambda event: event["status"] == "ok")
    (tmp_path / "hang").touch()
    wait_for_file(tmp_path / "hang.pid")
    storage = tmp_path / "storage"
    assert partial_files(storage), "the hanging dump should be writing a partial file"
    code, took = daemon.stop(signal.SIGTERM)

    assert code == 0
    assert took < 5
    assert partial_files(storage) == []
    assert process_gone(int((tmp_path / "hang.pid").read_text()))
    assert "shutdown" in [event["reason"] for event in daemon.events("backup.interrupted")]
    assert daemon.events("daemon.stopped")[-1]["clean"] is True
    verify = subprocess.run(
        [sys.executable, "-m", "agent", "-c", str(config), "verify", "--job", "main"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert len(good_backups(storage, "main")) >= 1


def test_a_stalled_dump_is_killed_by_the_stall_watchdog_and_the_daemon_carries_on(
    tmp_path: Path, daemons: Any, pg_server: PostgresServer, pg_database: str
) -> None:
    (tmp_path / "hang").touch()
    job = postgres_job(tmp_path, pg_server, pg_database, every="1h", stall_timeout="1s")
    config = write_config(tmp_path, {"main": job})
    daemon = daemons(tmp_path, config)
    finished = daemon.wait_for("job.finished")[0]

    assert (finished["status"], finished["reason"]) == ("failed", "stalled")
    assert [event["reason"] for event in daemon.events("backup.failed")] == ["stalled"]
    assert partial_files(tmp_path / "storage") == []
    assert process_gone(int((tmp_path / "hang.pid").read_text()))
    state = state_of(tmp_path / "storage", "main")
    assert (state["last_status"], state["last_failure_reason"]) == ("failed", "stalled")
    assert daemon.process.poll() is None
    assert daemon.stop()[0] == 0


def test_a_dump_that_keeps_writing_past_its_timeout_is_killed(
    tmp_path: Path, pg_server: PostgresServer, pg_database: str
) -> None:
    (tmp_path / "dribble").touch()
    job = postgres_job(tmp_path, pg_server, pg_database, timeout="1s", stall_timeout="30s")
    config = load_config(write_config(tmp_path, {"main": job}))
    started = time.monotonic()
    outcome = run_job(config, "main")

    assert time.monotonic() - started < 10
    assert [(target.status, target.reason) for target in outcome.targets] == [("failed", "timeout")]
    assert partial_files(tmp_path / "storage") == []
    assert process_gone(int((tmp_path / "hang.pid").read_text()))


def test_an_unreachable_server_is_retried_with_backoff_then_given_up_loudly(tmp_path: Path, daemons: Any) -> None:
    job = {
        "engine": "postgresql",
        "host": "127.0.0.1",
        "port": free_port(),
        "user": "nobody",
        "databases": ["app"],
        "include_globals": False,
        "schedule": "0 0 1 1 *",
        "jitter": "0s",
        "connect_timeout": "0.5s",
    }
    config = write_config(tmp_path, {"main": job})
    daemon = daemons(tmp_path, config)
    gave_up = daemon.wait_for("job.gave_up", timeout=20)[0]
    code, _ = daemon.stop()

    failures = [event for event in daemon.events("backup.failed") if event["reason"] == "connection_failed"]
    assert len(failures) == 4
    assert [event["delay"] for event in daemon.events("job.retry")] == [0.5, 1.0, 2.0]
    gaps = [(moment(later) - moment(earlier)).total_seconds() for earlier, later in itertools.pairwise(failures)]
    assert gaps[0] < gaps[1] < gaps[2]
    assert (gave_up["attempts"], gave_up["level"]) == (4, "error")
    assert state_of(tmp_path / "storage", "main")["last_failure_reason"] == "connection_failed"
    assert code == 0


def test_a_run_missed_by_more_than_the_grace_time_is_logged_and_the_schedule_goes_on(
    tmp_path: Path, daemons: Any
) -> None:
    database = sqlite_database(tmp_path / "app.db")
    config = write_config(
        tmp_path, {"app": sqlite_job(database, every="3s")}, sections={"daemon": {"misfire_grace_time": "1s"}}
    )
    daemon = daemons(tmp_path, config)
    daemon.wait_for("job.finished")  # the catch-up run
    planned = next_run_well_ahead(tmp_path / "storage", "app")
    daemon.process.send_signal(signal.SIGSTOP)  # a suspended machine sleeps through the next run
    time.sleep(max(0.0, (planned - datetime.now(planned.tzinfo)).total_seconds()) + 1.8)
    daemon.process.send_signal(signal.SIGCONT)
    missed = daemon.wait_for("job.missed")
    runs = len(daemon.events("job.finished"))
    daemon.wait_for("job.finished", count=runs + 1, timeout=10)  # the next regular run still happens
    code, _ = daemon.stop()

    assert datetime.fromisoformat(missed[0]["scheduled"]) == planned
    assert missed[0]["misfire_grace_time"] == 1.0
    assert lines_containing(daemon, "was missed by") == [], "logged once, as job.missed"
    assert code == 0


def test_a_dump_that_cannot_stop_in_time_ends_the_daemon_at_the_shutdown_timeout(tmp_path: Path, daemons: Any) -> None:
    database = sqlite_database(tmp_path / "slow.db", payload_bytes=600_000)
    config = write_config(
        tmp_path,
        {"slow": sqlite_job(database, every="1h")},
        storage={"compression": "none", "max_write_rate": "200KiB/s"},  # one throttled write of ~3 s
        sections={"daemon": {"shutdown_timeout": "1s"}},
    )
    daemon = daemons(tmp_path, config)
    daemon.wait_for("backup.started")
    time.sleep(0.3)
    code, took = daemon.stop()

    assert code == 1
    assert 0.9 < took < 3
    timeout = daemon.events("daemon.shutdown_timeout")[0]
    assert timeout["jobs"] == ["slow"]
    assert daemon.events("daemon.stopped")[-1]["clean"] is False
    storage = tmp_path / "storage"
    left = partial_files(storage)
    assert left, "the interrupted dump leaves its partial for the next run to sweep"
    unthrottled = write_config(tmp_path, {"slow": sqlite_job(database, every="1h")})
    manual = subprocess.run(
        [sys.executable, "-m", "agent", "-c", str(unthrottled), "backup", "--job", "slow"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert manual.returncode == 0, manual.stdout + manual.stderr
    removed = {event["path"] for event in daemon.events("backup.partial_removed")}
    assert {str(path) for path in left} <= removed
    assert partial_files(storage) == []
