"""`backup-agent VERB | head -1`: a reader that stops early is no error, for every verb that prints."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from agent_helpers import write_config

AGENT = str(Path(sys.executable).parent / "backup-agent")

VERBS = [
    ("list",),
    ("list", "--json"),
    ("status",),
    ("status", "--json"),
    ("verify",),
    ("verify", "--json"),
    ("prune", "--dry-run"),
    ("prune", "--dry-run", "--json"),
    ("check-config", "--offline"),
    ("doctor",),
    ("backup",),
    ("--help",),
    ("list", "--help"),
]


def _two_sqlite_jobs(tmp_path: Path) -> Path:
    jobs = {}
    for name in ("first", "second"):
        database = tmp_path / f"{name}.db"
        with sqlite3.connect(database) as connection:
            connection.execute("CREATE TABLE item (id INTEGER PRIMARY KEY)")
        jobs[name] = {"engine": "sqlite", "databases": [str(database)], "every": "1h"}
    return write_config(tmp_path, jobs, storage={"reserve": "1%"})


def _run_into_a_closed_pipe(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """stdout is a pipe whose reader already left, as after `| head -0`: every write meets EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [AGENT, "-c", str(config), *args],
            check=False,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)


@pytest.fixture(scope="module")
def backed_up(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = _two_sqlite_jobs(tmp_path_factory.mktemp("pipe"))
    subprocess.run([AGENT, "-c", str(config), "backup"], check=True, capture_output=True, timeout=120)
    return config


@pytest.mark.parametrize("args", VERBS, ids=" ".join)
def test_a_reader_that_goes_away_gets_no_broken_pipe_error(backed_up: Path, args: tuple[str, ...]) -> None:
    result = _run_into_a_closed_pipe(backed_up, *args)
    assert "Broken pipe" not in result.stderr and "BrokenPipeError" not in result.stderr, result.stderr
    assert "Exception ignored" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stderr


def test_backup_into_a_closed_pipe_still_backs_up_every_job(tmp_path: Path) -> None:
    config = _two_sqlite_jobs(tmp_path)
    result = _run_into_a_closed_pipe(config, "backup")
    assert result.returncode == 0, result.stderr
    for job in ("first", "second"):
        assert list((tmp_path / "storage" / job).rglob("*.sqlite.zst")), f"job {job} was not backed up"
