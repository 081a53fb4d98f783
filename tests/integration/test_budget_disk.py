"""The disk budget on a real, small filesystem: a 64 MiB tmpfs as the storage path, SQLite dumps of
a few MiB of random (incompressible) data, every backup run through the command line.

A sampler thread reads statvfs every millisecond while the agent runs, so "the disk never fell
below its reserve" is observed from outside, not taken from the agent's own log.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from agent_helpers import FreeSpaceWatch, free_bytes
from servers.common import tmpfs

from agent.naming import parse_backup_filename

MIB = 1 << 20
DISK = 64 * MIB
RESERVE = DISK // 10  # reserve = "10%"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs, unmounted afterwards; needs root (CI runs as root)."""
    with tmpfs(tmp_path / "disk", f"{DISK // MIB}m") as mount_point:
        yield mount_point


def make_database(path: Path, mebibytes: int) -> None:
    """An SQLite file of about `mebibytes` MiB of random blobs (zstd cannot shrink it)."""
    path.unlink(missing_ok=True)
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE blob (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
        rows = [(os.urandom(8000),) for _ in range(mebibytes * 128)]
        connection.executemany("INSERT INTO blob (data) VALUES (?)", rows)
    connection.close()


def _age_order(path: Path) -> tuple[object, int]:
    """Oldest first: by the time in the name, then the sequence of backups made in the same second."""
    parsed = parse_backup_filename(path.name)
    assert parsed is not None
    return parsed.created_at, parsed.sequence


@dataclass
class Agent:
    config: Path
    log: Path
    storage: Path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agent", "-c", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def events(self, name: str) -> list[dict[str, object]]:
        if not self.log.exists():
            return []
        lines = (json.loads(line) for line in self.log.read_text().splitlines() if line.strip())
        return [event for event in lines if event.get("event") == name]

    def backups(self, folder: str) -> list[Path]:
        directory = self.storage / "app" / folder
        if not directory.exists():
            return []
        return sorted((path for path in directory.iterdir() if path.suffix == ".sqlite"), key=_age_order)

    def good_backups(self, folder: str) -> list[Path]:
        return [path for path in self.backups(folder) if path.with_name(path.name + ".json").exists()]

    def files(self) -> set[str]:
        return {str(path.relative_to(self.storage)) for path in self.storage.rglob("*") if path.is_file()}


@pytest.fixture
def agent(small_disk: Path, tmp_path: Path) -> Agent:
    databases = tmp_path / "databases"
    databases.mkdir()
    config = tmp_path / "config.toml"
    log = tmp_path / "agent.log"
    config.write_text(
        f"""
[storage]
path = "{small_disk}"
compression = "none"
reserve = "10%"

[log]
file = "{log}"
format = "json"

[retention]
keep_last = 100
keep_min = 2

[jobs.app]
engine = "sqlite"
databases = ["{databases / "small.db"}", "{databases / "big.db"}"]
"""
    )
    config.chmod(0o600)
    return Agent(config, log, small_disk)


def database_path(agent: Agent, name: str) -> Path:
    return agent.config.parent / "databases" / name


def test_many_backups_never_take_the_disk_below_its_reserve_and_keep_the_floor(agent: Agent) -> None:
    small = database_path(agent, "small.db")
    make_database(small, 4)
    counts = []
    with FreeSpaceWatch(agent.storage) as watch:
        for _ in range(16):
            result = agent.run("backup", "--database", str(small))
            assert result.returncode == 0, result.stdout + result.stderr
            counts.append(len(agent.good_backups("small.db")))
    assert watch.lowest >= RESERVE, f"free space fell to {watch.lowest} bytes, below the reserve of {RESERVE}"
    assert min(counts) >= 1 and counts[1:] and min(counts[1:]) >= 2
    assert counts[-1] < 16, "the budget should have made room by deleting the oldest backups"
    deleted = agent.events("retention.deleted")
    assert deleted and {event["rule"] for event in deleted} == {"budget"}
    journal = [json.loads(line) for line in (agent.storage / ".agent" / "journal.jsonl").read_text().splitlines()]
    assert sum(entry["event"] == "deleted" for entry in journal) == len(deleted)
    assert all(entry["rule"] == "budget" and entry["sha256"] for entry in journal if entry["event"] == "deleted")
    finished = agent.events("backup.finished")
    assert len(finished) == 16
    manifest = json.loads(
        agent.good_backups("small.db")[-1].with_name(agent.good_backups("small.db")[-1].name + ".json").read_text()
    )
    assert manifest["predicted_bytes"] >= manifest["stored_bytes"] > 0


def test_a_dump_that_cannot_fit_is_refused_with_the_figures_and_nothing_is_deleted(agent: Agent) -> None:
    small, big = database_path(agent, "small.db"), database_path(agent, "big.db")
    make_database(small, 2)
    for _ in range(4):
        assert agent.run("backup", "--database", str(small)).returncode == 0
    before = agent.files()
    make_database(big, 30)  # no history: predicted 30 MiB, plus its 30 MiB scratch copy, on a 64 MiB disk
    with FreeSpaceWatch(agent.storage) as watch:
        result = agent.run("backup", "--database", str(big))
    assert result.returncode == 1
    assert "not enough disk space" in result.stdout
    refused = agent.events("backup.refused")
    assert len(refused) == 1
    event = refused[0]
    assert event["reason"] == "insufficient_space"
    assert event["reserve"] == RESERVE
    assert event["predicted"] == os.path.getsize(big)
    assert isinstance(event["free"], int) and isinstance(event["usage"], int) and event["usage"] > 0
    assert agent.files() == before, "a refused dump deletes nothing and leaves nothing"
    assert not agent.events("retention.deleted")
    assert watch.lowest >= RESERVE


def test_a_prediction_that_is_too_low_is_caught_in_flight_with_no_partial_left(agent: Agent) -> None:
    small = database_path(agent, "small.db")
    make_database(small, 2)
    for _ in range(5):
        assert agent.run("backup", "--database", str(small)).returncode == 0
    newest_two = agent.good_backups("small.db")[-2:]
    make_database(small, 32)  # history says ~2 MiB; the dump is 32 MiB after a 32 MiB scratch copy
    with FreeSpaceWatch(agent.storage) as watch:
        result = agent.run("backup", "--database", str(small))
    assert result.returncode == 1
    assert watch.lowest >= RESERVE, f"free space fell to {watch.lowest} bytes, below the reserve of {RESERVE}"
    failed = agent.events("backup.failed")
    assert [event["reason"] for event in failed] == ["disk_reserve"]
    assert agent.good_backups("small.db") == newest_two, "keep_min holds: the two newest good backups stay"
    assert not [path for path in agent.storage.rglob("*") if path.name.endswith(".partial")]
    assert not list((agent.storage / ".agent" / "tmp").rglob("*.db")), "the scratch copy is gone too"
    assert {event["moment"] for event in agent.events("retention.deleted")} == {"in_flight"}


def test_a_dump_that_fails_before_writing_costs_no_old_backups(agent: Agent) -> None:
    small = database_path(agent, "small.db")
    make_database(small, 2)
    for _ in range(5):
        assert agent.run("backup", "--database", str(small)).returncode == 0
    # The application fills the disk: the next dump needs room that only deleting old backups gives.
    filler = agent.storage / "application-data"
    filler.write_bytes(b"\0" * (free_bytes(agent.storage) - RESERVE - MIB))
    before = agent.files()
    small.unlink()  # the dump fails as it starts: `backup --database` now finds it gone before planning
    result = agent.run("backup", "--database", str(small))
    assert result.returncode == 1
    assert [event["reason"] for event in agent.events("backup.failed")] == ["not_found"]
    assert agent.files() == before
    assert not agent.events("retention.deleted")
