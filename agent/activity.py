"""What runs right now, for `status`: the daemon (`.agent/daemon.json`) and dumps in progress (`.agent/progress/`).

A record alone proves nothing (a killed process leaves its file behind): the daemon counts as
running only while someone holds the storage's daemon lock, and a dump in progress only while its
job lock is held. Locks are looked up in /proc/locks, read-only, so `status` never takes a lock a
starting daemon or backup could then not get. Each record is small, written whole and renamed
over the old one (at most every few seconds for a dump), and read back as untrusted input.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import msgspec

from agent.naming import encode_name
from agent.storage import StorageLayout, lock_held_since

PROGRESS_EVERY_SECONDS = 5.0  # how often a running dump rewrites its progress record


class DaemonRecord(msgspec.Struct, frozen=True):
    pid: int
    started_at: str
    config: str
    version: str
    host: str


class ProgressRecord(msgspec.Struct, frozen=True):
    job: str
    database: str
    kind: str
    run_id: str
    pid: int
    started_at: str
    updated_at: str
    raw_bytes: int
    expected_bytes: int | None = None  # the dump's likely raw size (the last dump's, or the server's estimate)


def _replace(path: Path, data: bytes) -> None:
    """A whole new file renamed over the old: readers never see half a record. No fsync: these
    records only describe the running processes, which a crash ends anyway."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(descriptor, data)
    finally:
        os.close(descriptor)
    os.replace(temporary, path)


def daemon_record_path(storage: Path) -> Path:
    return StorageLayout(storage).agent_directory / "daemon.json"


def progress_directory(storage: Path) -> Path:
    return StorageLayout(storage).agent_directory / "progress"


def write_daemon_record(storage: Path, record: DaemonRecord) -> None:
    _replace(daemon_record_path(storage), msgspec.json.encode(record) + b"\n")


def remove_daemon_record(storage: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        daemon_record_path(storage).unlink()


def lock_is_held(path: Path) -> bool:
    """Whether some process holds a `flock` on `path` (looked up read-only; see storage.lock_held_since)."""
    return lock_held_since(path) is not None


Record = TypeVar("Record", DaemonRecord, ProgressRecord)


def _decode(path: Path, kind: type[Record]) -> Record | None:
    try:
        return msgspec.json.decode(path.read_bytes(), type=kind)
    except (OSError, msgspec.DecodeError):
        return None


def daemon_status(storage: Path) -> dict[str, object]:
    """`{"running": False}`, or the running daemon's pid, start time, config file and version."""
    layout = StorageLayout(storage)
    if not lock_is_held(layout.lock_file("daemon")):
        return {"running": False}
    record = _decode(daemon_record_path(storage), DaemonRecord)
    if record is None:
        return {"running": True, "pid": None, "since": None, "config": None, "version": None}
    return {
        "running": True,
        "pid": record.pid,
        "since": record.started_at,
        "config": record.config,
        "version": record.version,
    }


def runs_in_progress(storage: Path, now: datetime) -> list[dict[str, object]]:
    """The dumps running now (their job lock is held), with bytes so far and seconds elapsed."""
    layout = StorageLayout(storage)
    folder = progress_directory(storage)
    if not folder.is_dir() or folder.is_symlink():
        return []
    running: list[dict[str, object]] = []
    for path in sorted(folder.glob("*.json")):
        record = _decode(path, ProgressRecord)
        if record is None or not lock_is_held(layout.lock_file(f"job-{record.job}")):
            continue
        try:
            started = datetime.fromisoformat(record.started_at)
        except ValueError:
            continue
        running.append(
            {
                "job": record.job,
                "database": record.database,
                "kind": record.kind,
                "run_id": record.run_id,
                "pid": record.pid,
                "started_at": record.started_at,
                "updated_at": record.updated_at,
                "raw_bytes": record.raw_bytes,
                "expected_bytes": record.expected_bytes,
                "elapsed_seconds": round(max(0.0, (now - started).total_seconds()), 1),
            }
        )
    return running


class ProgressRecorder:
    """One dump's progress record: written at its start, then at most every `every` seconds, removed at its end."""

    def __init__(
        self,
        storage: Path,
        job: str,
        *,
        database: str,
        kind: str,
        run_id: str,
        every: float = PROGRESS_EVERY_SECONDS,
        expected_bytes: int | None = None,
    ) -> None:
        self.path = progress_directory(storage) / f"{encode_name(job)}.json"
        self._job, self._database, self._kind, self._run_id = job, database, kind, run_id
        self._started_at = datetime.now(UTC).isoformat(timespec="seconds")
        self._every = every
        self._expected_bytes = expected_bytes
        self._last = 0.0
        self._broken = False

    def start(self) -> ProgressRecorder:
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(mode=0o700, exist_ok=True)
        self._write(0)
        return self

    def update(self, raw_bytes: int) -> None:
        if time.monotonic() - self._last >= self._every:
            self._write(raw_bytes)

    def record(self, raw_bytes: int) -> None:
        """Write the record now (a progress meter calls this at its own interval)."""
        self._write(raw_bytes)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()

    def _write(self, raw_bytes: int) -> None:
        self._last = time.monotonic()
        if self._broken:
            return
        record = ProgressRecord(
            job=self._job,
            database=self._database,
            kind=self._kind,
            run_id=self._run_id,
            pid=os.getpid(),
            started_at=self._started_at,
            updated_at=datetime.now(UTC).isoformat(timespec="seconds"),
            raw_bytes=raw_bytes,
            expected_bytes=self._expected_bytes,
        )
        try:
            _replace(self.path, msgspec.json.encode(record) + b"\n")
        except OSError:
            self._broken = True  # informational only: never a reason to fail a dump
