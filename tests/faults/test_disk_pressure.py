"""The disk budget under pressure, on real tmpfs filesystems: multi-threaded zstd writing several
MiB in one flush, a database that outgrew its prediction, and another process filling the disk
while a dump runs.

Free space is sampled from outside every millisecond (statvfs) while the agent runs as its own
process; the reserve must hold at every sample, over many runs.
"""

from __future__ import annotations

import errno
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_helpers import FreeSpaceWatch, events_named, free_bytes, run_cli, write_config
from fault_helpers import (
    MIB,
    agent_argv,
    partial_files,
    pg_job,
    sqlite_database,
    sqlite_job,
    storage_at,
    wait_until,
)
from servers.common import tmpfs
from servers.postgres import PostgresServer

from agent import catalog

RUNS = 10
# Not a watchdog test: a loaded machine may keep pg_dump silent for seconds
_PATIENT = {"stall_timeout": "60s", "timeout": "300s"}


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", "64m") as mount_point:
        yield mount_point


@pytest.fixture
def smaller_disk(tmp_path: Path) -> Iterator[Path]:
    """Room for three backups above the reserve: from the fourth run on, every dump makes room."""
    with tmpfs(tmp_path / "disk", "40m") as mount_point:
        yield mount_point


def _config(tmp_path: Path, disk: Path, job: dict[str, object], **storage: object) -> Path:
    settings = {"compression": "zstd", "threads": 8, **storage}  # eight zstd workers: flushes of 5-17 MiB
    config = write_config(
        tmp_path, {"app": job}, storage=settings, sections={"retention": {"keep_last": 100, "keep_min": 2}}
    )
    return storage_at(config, disk / "storage")


def _random_database(path: Path, mebibytes: int) -> Path:
    path.unlink(missing_ok=True)
    return sqlite_database(path, rows=10, payload_bytes=mebibytes * MIB)


def _random_rows(server: PostgresServer, database: str, mebibytes: int) -> None:
    """`mebibytes` MiB of random bytea: pg_dump writes it as hex, which zstd shrinks only to about half."""
    with server.connect(database) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS blob (id serial PRIMARY KEY, data bytea NOT NULL)")
        connection.execute("TRUNCATE blob")
        with connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO blob (data) VALUES (%s)", [(os.urandom(64 << 10),) for _ in range(16 * mebibytes)]
            )


def _good(storage: Path) -> list[catalog.BackupRecord]:
    return [record for record in catalog.scan(storage) if record.status == catalog.GOOD]


def test_multi_threaded_zstd_bursts_never_take_free_space_below_the_reserve_over_many_runs(
    tmp_path: Path, smaller_disk: Path, pg_server: PostgresServer, pg_database: str
) -> None:
    disk = smaller_disk
    reserve = 12 * MIB
    _random_rows(pg_server, pg_database, 6)  # each backup about 6.2 MiB, most of it in the final flush
    config = _config(tmp_path, disk, pg_job(tmp_path, pg_server, [pg_database], **_PATIENT), reserve="12MiB")
    lowest = []
    for _ in range(RUNS):
        with FreeSpaceWatch(disk) as watch:
            assert run_cli(config, "backup") == 0
        lowest.append(watch.lowest)
    assert min(lowest) >= reserve, (
        f"free space fell to {min(lowest) / MIB:.2f} MiB inside the 12 MiB reserve "
        f"(in {sum(low < reserve for low in lowest)} of {RUNS} runs)"
    )
    assert events_named(tmp_path, "retention.deleted"), "the disk is small enough that the budget had to delete"
    assert len(_good(disk / "storage")) >= 2


def test_a_database_that_outgrew_its_prediction_is_stopped_before_its_bursts_cut_into_the_reserve(
    tmp_path: Path, disk: Path, pg_server: PostgresServer, pg_database: str
) -> None:
    reserve = 12 * MIB
    _random_rows(pg_server, pg_database, 3)
    config = _config(tmp_path, disk, pg_job(tmp_path, pg_server, [pg_database], **_PATIENT), reserve="12MiB")
    for _ in range(5):
        assert run_cli(config, "backup") == 0
    _random_rows(pg_server, pg_database, 60)  # history says about 3.7 MiB; the dump would be over 60 MiB
    lowest = []
    for _ in range(4):
        with FreeSpaceWatch(disk) as watch:
            assert run_cli(config, "backup") == 1
        lowest.append(watch.lowest)
    assert min(lowest) >= reserve, f"free space fell to {min(lowest) / MIB:.2f} MiB inside the 12 MiB reserve"
    assert {event["reason"] for event in events_named(tmp_path, "backup.failed")} == {"disk_reserve"}
    assert len(_good(disk / "storage")) == 2, "keep_min holds"
    assert partial_files(disk / "storage") == []


class _Filler:
    """Another process's writer: fills the disk at about `rate` bytes a second and, once it is full,
    keeps taking every byte that becomes free."""

    def __init__(self, path: Path, rate: int) -> None:
        self.path = path
        self.rate = rate
        self.written = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, daemon=True)

    def _fill(self) -> None:
        chunk = b"\xa5" * (256 << 10)
        descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while not self._stop.is_set():
                try:
                    self.written += os.write(descriptor, chunk)
                except OSError as error:
                    if error.errno != errno.ENOSPC:
                        raise
                    self._stop.wait(0.001)
                    continue
                self._stop.wait(len(chunk) / self.rate)
        finally:
            os.close(descriptor)

    def __enter__(self) -> _Filler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_another_writer_filling_the_disk_during_a_dump_costs_no_good_backup(tmp_path: Path, disk: Path) -> None:
    database = _random_database(tmp_path / "app.db", 6)
    storage = {"reserve": "8MiB", "compression": "none"}
    config = _config(tmp_path, disk, sqlite_job(database), **storage)
    for _ in range(6):
        assert run_cli(config, "backup") == 0
    before = {record.path for record in _good(disk / "storage")}
    assert len(before) == 6
    assert free_bytes(disk) - 8 * MIB > 2 * 6 * MIB + 4 * MIB, "the dump's own bytes fit without deleting anything"
    # About 6 s of writing, checked every MiB; the other writer takes 4 MiB a second, so the
    # disk runs out while the dump runs, with room checks on the way there
    config = _config(tmp_path, disk, sqlite_job(database), **storage, max_write_rate="1MiB/s")

    agent = subprocess.Popen(agent_argv(config, "backup"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: partial_files(disk / "storage"), what="the dump's partial file")
        with _Filler(disk / "application.data", rate=4 * MIB):
            returncode = agent.wait(timeout=60)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()

    assert returncode == 1
    after = {record.path for record in _good(disk / "storage")}
    assert after == before, f"{len(before)} good backups before, {len(after)} after: none was traded for the dump"
    assert not events_named(tmp_path, "retention.deleted")
    failed = events_named(tmp_path, "backup.failed")
    assert [event["reason"] for event in failed] == ["disk_contention"]
    assert "another writer" in failed[0]["error"]
    assert partial_files(disk / "storage") == []
