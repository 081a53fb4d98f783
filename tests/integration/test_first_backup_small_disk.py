"""The first backup on a small disk: no history, so its size is predicted from the server's figures.

Each test mounts a real 16 MiB tmpfs as the storage and runs `backup-agent backup` as a user would.
Found on a 300 MiB disk: the first dump was predicted at twice its real size and refused, every day,
with a message about keep_min when there were no backups at all, and the console said FAILED.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_helpers import events_named, password_file, write_config
from servers.common import tmpfs
from servers.fixtures_data import load_pagila
from servers.postgres import PostgresServer

MIB = 1 << 20
PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", "16m") as mount_point:
        yield mount_point


class LowestFreeSpace:
    """Samples the disk's free space every millisecond while the agent runs (observed from outside)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lowest = 1 << 62
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            figures = os.statvfs(self.path)
            self.lowest = min(self.lowest, figures.f_bavail * figures.f_frsize)
            self._stop.wait(0.001)

    def __enter__(self) -> LowestFreeSpace:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def backup(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "-c", str(config), "backup"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def postgres_config(
    tmp_path: Path, disk: Path, server: PostgresServer, database: str, reserve: str, **storage: object
) -> Path:
    job = {
        "engine": "postgresql",
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "password_file": str(password_file(tmp_path, server.password)),
        "databases": [database],
        "include_globals": False,
    }
    config = write_config(tmp_path, {"main": job}, storage={"reserve": reserve, **storage})
    config.write_text(config.read_text().replace(f'"{tmp_path / "storage"}"', f'"{disk}"'))
    return config


def good_backups(disk: Path) -> list[Path]:
    return [path for path in disk.rglob("*.zst") if path.with_name(path.name + ".json").exists()]


def leftovers(disk: Path) -> list[Path]:
    return [path for path in disk.rglob("*") if path.name.endswith(".partial")]


def test_the_first_backup_of_pagila_runs_on_a_disk_its_old_prediction_refused(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path, small_disk: Path
) -> None:
    load_pagila(pg_server, pg_database)  # pg_database_size ~15 MB; its zstd dump is under 1 MB
    reserve = 11 * MIB  # leaves ~5 MiB: the old prediction (half the size, 7.5 MB) did not fit
    config = postgres_config(tmp_path, small_disk, pg_server, pg_database, f"{reserve // MIB}MiB")

    with LowestFreeSpace(small_disk) as watch:
        result = backup(config)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok ")
    assert len(good_backups(small_disk)) == 1
    assert watch.lowest >= reserve
    assert not events_named(tmp_path, "backup.refused")


def test_a_first_dump_that_might_fit_is_tried_and_stopped_at_the_reserve_when_it_does_not(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path, small_disk: Path
) -> None:
    with pg_server.connect(pg_database) as connection:  # random bytes: the dump cannot be compressed
        connection.execute("CREATE TABLE blob (id int PRIMARY KEY, data bytea)")
        connection.execute("ALTER TABLE blob ALTER COLUMN data SET STORAGE EXTERNAL")
        for number in range(6):
            connection.execute("INSERT INTO blob VALUES (%s, %s)", (number, os.urandom(MIB)))
    reserve = 11 * MIB
    config = postgres_config(tmp_path, small_disk, pg_server, pg_database, f"{reserve // MIB}MiB")

    with LowestFreeSpace(small_disk) as watch:
        result = backup(config)

    assert result.returncode == 1
    assert result.stdout.startswith("FAILED "), result.stdout  # it was tried: not a refusal
    assert [event["reason"] for event in events_named(tmp_path, "backup.failed")] == ["disk_reserve"]
    assert not events_named(tmp_path, "backup.refused")
    assert watch.lowest >= reserve
    assert leftovers(small_disk) == [] and good_backups(small_disk) == []


def test_a_refused_first_backup_says_refused_and_which_setting_to_change_and_that_change_works(
    tmp_path: Path, small_disk: Path
) -> None:
    database = tmp_path / "app.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE note (id INTEGER PRIMARY KEY, body TEXT)")
        connection.executemany("INSERT INTO note (body) VALUES (?)", [(f"note {n} " * 40,) for n in range(12_000)])
    connection.close()
    config = write_config(tmp_path, {"app": {"engine": "sqlite", "databases": [str(database)]}})
    config.write_text(config.read_text().replace(f'"{tmp_path / "storage"}"', f'"{small_disk}"'))
    original = config.read_text()
    config.write_text(original.replace("[storage]\n", '[storage]\nreserve = "15MiB"\n'))

    refused = backup(config)

    assert refused.returncode == 1
    assert refused.stdout.startswith("REFUSED app "), refused.stdout
    assert "FAILED" not in refused.stdout
    message = refused.stdout
    assert "first backup" in message and "no backups to delete yet" in message
    assert "keep_min" not in message, "there is no backup for keep_min to protect"
    suggested = re.search(r'set storage\.reserve = "(\d+MiB)" or less \(now "15 MiB"\)', message)
    assert suggested is not None, message
    assert good_backups(small_disk) == [] and leftovers(small_disk) == []

    config.write_text(original.replace("[storage]\n", f'[storage]\nreserve = "{suggested.group(1)}"\n'))
    accepted = backup(config)

    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert len(good_backups(small_disk)) == 1
