"""Helpers for the fault tier: agent subprocesses, fake dump tools, process and file inspection.

Writing configs, reading the JSON log and listing stored files come from tests/agent_helpers.py;
what is here is only what crashes, fake tools and hostile input need on top of that.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import password_file
from servers.common import skip_or_fail
from servers.postgres import PostgresServer

PROJECT = Path(__file__).resolve().parents[2]
AGENT = [sys.executable, "-m", "agent"]
MIB = 1 << 20


# ------------------------------------------------------------------------------------------------
# Running the agent


def agent_argv(config: Path, *args: str) -> list[str]:
    return [*AGENT, "-c", str(config), *args]


def run_agent(
    config: Path, *args: str, timeout: float = 60, env: Mapping[str, str] | None = None, umask: int | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m agent -c CONFIG ARGS...` to completion, output captured."""
    return subprocess.run(
        agent_argv(config, *args),
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(env) if env is not None else None,
        check=False,
        preexec_fn=(lambda: os.umask(umask)) if umask is not None else None,
    )


def start_agent(
    config: Path, *args: str, env: Mapping[str, str] | None = None, stderr: Path | None = None
) -> subprocess.Popen[bytes]:
    """The agent as a background process (stdout discarded, stderr to a file when given)."""
    error_stream: Any = stderr.open("wb") if stderr is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            agent_argv(config, *args),
            cwd=PROJECT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=error_stream,
            env=dict(env) if env is not None else None,
        )
    finally:
        if stderr is not None:
            error_stream.close()


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Agents a test started in the background; killed (by pid) if the test left them running."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


# ------------------------------------------------------------------------------------------------
# Waiting and processes


def wait_until(condition: Callable[[], Any], timeout: float = 20.0, what: str = "the condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        time.sleep(0.05)


def process_gone(pid: int) -> bool:
    """True once `pid` no longer runs (a zombie nobody reaps counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stream:
            state = stream.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, grandchildren...), read from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as stream:
                fields = stream.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    queue = [pid]
    while queue:
        children = parents.get(queue.pop(), [])
        found.extend(children)
        queue.extend(children)
    return found


def read_pid(path: Path, timeout: float = 20.0) -> int:
    """The pid a fake tool wrote into `path` (waits for it)."""
    wait_until(lambda: path.exists() and path.read_text().strip(), timeout, f"a pid in {path}")
    return int(path.read_text().split()[0])


# ------------------------------------------------------------------------------------------------
# Databases and fake tools


def sqlite_database(path: Path, rows: int = 200, payload_bytes: int = 0) -> Path:
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, body BLOB)")
        connection.executemany("INSERT INTO item (body) VALUES (?)", [(f"row {n}".encode(),) for n in range(rows)])
        if payload_bytes:
            connection.execute("INSERT INTO item (body) VALUES (?)", (os.urandom(payload_bytes),))
    connection.close()
    return path


def sqlite_job(*databases: Path, **settings: Any) -> dict[str, Any]:
    return {"engine": "sqlite", "databases": [str(database) for database in databases], "jitter": "0s", **settings}


# impact = "fastest": these tests time watchdogs to the second, and a run niced as a whole (the
# gentle default) on a machine shared with other work takes seconds longer to get there
FAST_WATCHDOGS = {"stall_timeout": "2s", "timeout": "20s", "connect_timeout": "3s", "jitter": "0s", "impact": "fastest"}


def fake_pg_dump(directory: Path, server: PostgresServer, body: str, *, name: str = "pg_dump") -> Path:
    """A `tool` script: `--version` answers like the real pg_dump (so the probe passes); otherwise
    it runs `body` (sh), unless `<directory>/real` exists, then it is the real pg_dump.

    pg_restore and pg_dumpall sit beside it, the real ones (the agent takes siblings from there).
    `$REAL` in `body` is the real pg_dump; `$$` is written to `<directory>/tool.pid` first.
    """
    tools = directory / "tools"
    tools.mkdir(exist_ok=True)
    for sibling in ("pg_restore", "pg_dumpall"):
        link = tools / sibling
        if not link.exists():
            link.symlink_to(Path(server.bin_dir) / sibling)
    real = Path(server.bin_dir) / "pg_dump"
    script = tools / name
    script.write_text(
        "#!/bin/sh\n"
        f'REAL="{real}"\n'
        'if [ "$1" = "--version" ]; then exec "$REAL" --version; fi\n'
        f'if [ -e "{directory}/real" ]; then exec "$REAL" "$@"; fi\n'
        f'echo $$ > "{directory}/tool.pid"\n'
        f"{body}\n"
    )
    script.chmod(0o755)
    return script


def use_real_tool(directory: Path) -> None:
    """From now on the fake tool in `directory` is the real pg_dump."""
    (directory / "real").touch()


def pg_job(directory: Path, server: PostgresServer, databases: list[str], **settings: Any) -> dict[str, Any]:
    return {
        "engine": "postgresql",
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "password_file": str(password_file(directory, server.password)),
        "databases": databases,
        "include_globals": False,
        **FAST_WATCHDOGS,
        **settings,
    }


# ------------------------------------------------------------------------------------------------
# Files


def partial_files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.name.endswith(".partial"))


def fingerprints(paths: list[Path]) -> dict[Path, tuple[int, str]]:
    """(inode, sha256) of each file: proof that nothing was replaced or changed."""
    return {path: (path.stat().st_ino, hashlib.sha256(path.read_bytes()).hexdigest()) for path in paths}


def tree_bytes(root: Path, skip: tuple[Path, ...] = ()) -> Iterator[tuple[Path, bytes]]:
    """Every regular file below `root` (symlinks not followed) and its content."""
    for path in sorted(root.rglob("*")):
        if path in skip or path.is_symlink() or not path.is_file():
            continue
        yield path, path.read_bytes()


def storage_at(config: Path, storage: Path) -> Path:
    """Point a config written by write_config at another storage path."""
    text = config.read_text()
    first_path_line = next(line for line in text.splitlines() if line.startswith("path = "))
    config.write_text(text.replace(first_path_line, f'path = "{storage}"', 1))
    return config


# ------------------------------------------------------------------------------------------------
# A frozen wall clock (libfaketime)

FAKETIME_LIBRARY = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
FROZEN = "2031-05-05 05:05:05"  # libfaketime: an absolute time without "@" stands still


def require_faketime() -> Path:
    if not FAKETIME_LIBRARY.exists():
        message = "libfaketime is not installed (Debian package faketime; scripts/install-system-deps.sh)"
        skip_or_fail(message)
    return FAKETIME_LIBRARY


def frozen_clock(moment: str = FROZEN) -> dict[str, str]:
    """The environment for an agent whose wall clock stands still at `moment` (UTC)."""
    return {
        **os.environ,
        "LD_PRELOAD": str(require_faketime()),
        "FAKETIME": moment,
        "TZ": "UTC",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


# ------------------------------------------------------------------------------------------------
# A small real filesystem
