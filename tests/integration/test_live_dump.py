"""A dump being written is not a leftover: `verify`, `list` and `status` call it in progress, at no cost.

A `.partial` (or a data file whose manifest is not written yet) that the run holding its job's lock
wrote belongs to that run; one whose lock is free, or older than the lock, was left by an interrupted
run. Both with a lock held by the test and with a real `backup` running next to them.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from agent_helpers import run_cli, write_config

from agent import storage
from agent.errors import LockedError
from agent.naming import PARTIAL_SUFFIX, backup_filename
from agent.storage import StorageLayout, exclusive_lock, lock_held_since

PROJECT = Path(__file__).resolve().parents[2]
HALF_WRITTEN = b"SQLite format 3\x00" + b"x" * 84  # 100 bytes


def sqlite_database(path: Path, payload_bytes: int) -> Path:
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, body BLOB)")
        connection.execute("INSERT INTO item (body) VALUES (?)", (os.urandom(payload_bytes),))
    connection.close()
    return path


@pytest.fixture
def config(tmp_path: Path) -> Path:
    database = sqlite_database(tmp_path / "app.db", payload_bytes=600_000)
    job = {"engine": "sqlite", "databases": [str(database)]}
    # uncompressed at 256 KiB/s: the 600 KB dump takes over two seconds
    return write_config(tmp_path, {"app": job}, storage={"compression": "none", "max_write_rate": "256KiB/s"})


def plant_partial(storage: Path, created: datetime | None = None) -> Path:
    folder = storage / "app" / "app.db"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (backup_filename("app", "app.db", created or datetime.now(UTC), "sqlite") + PARTIAL_SUFFIX)
    path.write_bytes(HALF_WRITTEN)
    if created is not None:
        os.utime(path, (created.timestamp(), created.timestamp()))
    return path


def shown(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> tuple[int, str]:
    code = run_cli(config, *args)
    return code, capsys.readouterr().out


def test_a_partial_whose_job_lock_is_held_is_in_progress_for_verify_list_and_status(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = config.parent / "storage"
    layout = StorageLayout(storage).prepare()
    with exclusive_lock(layout.lock_file("job-app"), "a backup of job app"):
        partial = plant_partial(storage)  # as the run holding the lock writes it
        code, out = shown(capsys, config, "verify")
        assert code == 0, out
        assert f"IN_PROGRESS {partial}: being written by a running backup of job app" in out
        assert "VERIFY OK - 0 checked, 0 problem(s), 1 being written" in out
        assert shown(capsys, config, "verify", str(partial))[0] == 0
        code, out = shown(capsys, config, "list", "--json")
        assert [row["status"] for row in json.loads(out)] == ["in_progress"]
        code, out = shown(capsys, config, "status", "--json")
        [job] = json.loads(out)["jobs"]
        assert [(running["path"], running["bytes"]) for running in job["in_progress"]] == [(str(partial), 100)]
        code, out = shown(capsys, config, "status")
        assert f"DUMPING  app.db: 100 B written so far {partial}" in out

    code, out = shown(capsys, config, "verify")
    assert code == 1
    assert f"PARTIAL    {partial}: left by an interrupted run" in out
    assert json.loads(shown(capsys, config, "list", "--json")[1])[0]["status"] == "partial"


def test_a_partial_older_than_the_running_jobs_lock_is_still_a_leftover(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = config.parent / "storage"
    layout = StorageLayout(storage).prepare()
    leftover = plant_partial(storage, datetime.now(UTC) - timedelta(hours=1))
    with exclusive_lock(layout.lock_file("job-app"), "a backup of job app"):
        code, out = shown(capsys, config, "verify")
        assert code == 1
        assert f"PARTIAL    {leftover}: left by an interrupted run" in out
        assert shown(capsys, config, "verify", str(leftover))[0] == 1


def test_verify_during_a_real_backup_never_reports_its_partial_as_a_problem(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = config.parent / "storage" / "app"
    backup = subprocess.Popen(
        [sys.executable, "-m", "agent", "-c", str(config), "backup"],
        cwd=PROJECT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    codes: list[int] = []
    problems: list[str] = []
    seen_running = 0
    try:
        deadline = time.monotonic() + 60
        while not list(folder.rglob("*" + PARTIAL_SUFFIX)):
            assert backup.poll() is None, "the backup ended before its partial was seen"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        while backup.poll() is None:
            code, out = shown(capsys, config, "verify")
            codes.append(code)
            if code:
                problems.append(out)
            seen_running += "being written" in out
    finally:
        if backup.poll() is None:
            backup.kill()
        _, errors = backup.communicate(timeout=60)
    assert backup.returncode == 0, errors.decode(errors="replace")
    assert seen_running > 0
    assert set(codes) == {0}, f"verify exit codes while the dump ran: {codes}; it said: {problems}"
    code, out = shown(capsys, config, "verify")
    assert (code, "being written" in out) == (0, False)


@pytest.mark.parametrize("proc_locks", [True, False], ids=["from /proc/locks", "by a shared-lock probe"])
def test_probing_a_lock_never_makes_a_run_skip_as_locked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proc_locks: bool
) -> None:
    if not proc_locks:  # /proc/locks unreadable (a hardened container): the fallback takes a shared lock
        monkeypatch.setattr(storage, "_held_in_proc_locks", lambda _inode: None)
    lock = tmp_path / "job-app.lock"
    stop = threading.Event()
    probes = 0

    def probe() -> None:
        nonlocal probes
        while not stop.is_set():
            lock_held_since(lock)
            probes += 1

    prober = threading.Thread(target=probe)
    prober.start()
    refused = 0
    try:
        for _ in range(300):
            try:
                with exclusive_lock(lock, "a backup of job app"):
                    pass
            except LockedError:
                refused += 1
    finally:
        stop.set()
        prober.join()
    assert probes > 300
    assert refused == 0
    before = time.time_ns()
    with exclusive_lock(lock, "a backup of job app"):
        since = lock_held_since(lock)
        assert since is not None and before - 10_000_000 <= since <= time.time_ns()
        with pytest.raises(LockedError, match="already running"), exclusive_lock(lock, "a backup of job app"):
            pass
    assert lock_held_since(lock) is None
    assert lock_held_since(tmp_path / "never-created.lock") is None
    assert not (tmp_path / "never-created.lock").exists()
