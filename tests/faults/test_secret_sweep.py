"""Secret sweep: with one unique password, a success, a failure with a traceback, a timeout, a
crash, `check-config` and `doctor`: the password is nowhere but its own file, and no child ever
sees it in argv or its environment; it reaches pg_dump only as an anonymous 0600 memfd.
"""

from __future__ import annotations

import os
import secrets
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import data_files, events_named, password_file, write_config
from fault_helpers import (
    PROJECT,
    agent_argv,
    descendants,
    fake_pg_dump,
    partial_files,
    process_gone,
    read_pid,
    run_agent,
    wait_until,
)
from psycopg import sql
from servers.postgres import PostgresServer

ERROR_DRIVER = Path(__file__).with_name("error_driver.py")


@dataclass
class Account:
    role: str
    password: str
    databases: list[str]


@pytest.fixture
def account(pg_server: PostgresServer) -> Iterator[Account]:
    """A role with a password used nowhere else, owning two small databases."""
    role = f"sweep_{secrets.token_hex(4)}"
    created = Account(role, f"Sw33p-{secrets.token_hex(12)}", [f"{role}_one", f"{role}_two"])
    with pg_server.connect_superuser() as connection:
        connection.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(created.password))
        )
        for database in created.databases:
            connection.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(role))
            )
    for database in created.databases:
        with pg_server.connect_superuser(database) as connection:
            connection.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
            connection.execute("CREATE TABLE note (id int, body text)")
            connection.execute("INSERT INTO note SELECT g, 'note ' || g FROM generate_series(1, 200) g")
    try:
        yield created
    finally:
        with pg_server.connect_superuser() as connection:
            for database in created.databases:
                connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
            connection.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@dataclass
class ProcessWatch:
    """Everything the agent's process tree showed the world while it ran."""

    root: int
    seen: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # pid: (cmdline, environ)
    passfiles: list[tuple[str, int]] = field(default_factory=list)  # (fd target, mode)

    def sample(self) -> None:
        for pid in [self.root, *descendants(self.root)]:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                environ = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue
            previous = self.seen.get(pid, (b"", b""))
            self.seen[pid] = (previous[0] + b"\0" + cmdline, previous[1] + b"\0" + environ)
            for variable in environ.split(b"\0"):
                if variable.startswith(b"PGPASSFILE=/dev/fd/"):
                    self._passfile(pid, variable.split(b"/")[-1].decode())

    def _passfile(self, pid: int, descriptor: str) -> None:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{descriptor}")
            mode = stat.S_IMODE(os.stat(f"/proc/{pid}/fd/{descriptor}").st_mode)
        except OSError:
            return
        self.passfiles.append((target, mode))

    def children_seen(self) -> int:
        return len(self.seen) - 1


def _watched(argv: list[str], watch_until_exit: bool = True) -> tuple[subprocess.Popen[bytes], ProcessWatch]:
    process = subprocess.Popen(argv, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    watch = ProcessWatch(process.pid)
    while watch_until_exit and process.poll() is None:
        watch.sample()
        time.sleep(0.02)
    return process, watch


def _everything_written(root: Path, skip: set[Path]) -> Iterator[tuple[Path, bytes]]:
    for path in sorted(root.rglob("*")):
        if path in skip or path.is_symlink() or not path.is_file():
            continue
        yield path, path.read_bytes()


def test_the_password_never_leaks_through_success_failure_timeout_crash_or_diagnostics(
    account: Account, pg_server: PostgresServer, tmp_path: Path
) -> None:
    password = account.password.encode()
    secret_file = password_file(tmp_path, account.password)
    slow = fake_pg_dump(tmp_path, pg_server, 'sleep 1; exec "$REAL" "$@"', name="pg_dump")
    job: dict[str, Any] = {
        "engine": "postgresql",
        "host": pg_server.host,
        "port": pg_server.port,
        "user": account.role,
        "password_file": str(secret_file),
        "databases": account.databases,
        "tool": str(slow),
        "stall_timeout": "5s",
        "timeout": "20s",
        "jitter": "0s",
    }
    metrics = tmp_path / "metrics" / "backup-agent.prom"
    metrics.parent.mkdir()
    sections = {"metrics": {"textfile": str(metrics)}, "daemon": {"shutdown_timeout": "5s"}}
    config = write_config(tmp_path, {"main": job}, sections=sections)
    outputs: list[bytes] = []

    # a success, watched from outside while pg_dumpall and each pg_dump run
    success, watch = _watched(agent_argv(config, "backup"))
    outputs += [*success.communicate()]
    assert success.returncode == 0, outputs
    assert len(data_files(tmp_path / "storage")) == 3  # globals and two databases
    assert watch.children_seen() >= 3
    assert watch.passfiles, "the dump tools got a PGPASSFILE"
    assert {(target.split(" ")[0].split(":")[0], mode) for target, mode in watch.passfiles} == {("/memfd", 0o600)}
    # a planted bug with the password in a local variable: the first database fails, the second dumps
    failure, failure_watch = _watched(
        [sys.executable, str(ERROR_DRIVER), account.databases[0], "-c", str(config), "backup"]
    )
    outputs += [*failure.communicate()]
    assert failure.returncode == 1
    assert [event["reason"] for event in events_named(tmp_path, "backup.failed")] == ["internal_error"]
    assert events_named(tmp_path, "backup.failed")[-1]["exception"], "the traceback is in the log"
    finished = [event["database"] for event in events_named(tmp_path, "backup.finished")]
    first, second = (finished.count(database) for database in account.databases)
    assert (first, second) == (1, 2), "the other database still dumps"
    # a timeout: the tool dribbles bytes past `timeout`
    dribble = fake_pg_dump(tmp_path, pg_server, "printf PGDMP; while :; do printf x; sleep 0.2; done", name="dribble")
    timed = write_config(
        tmp_path,
        {"main": {**job, "tool": str(dribble), "timeout": "2s", "databases": account.databases[:1]}},
        sections=sections,
    )
    timeout, timeout_watch = _watched(agent_argv(timed, "backup"))
    outputs += [*timeout.communicate()]
    assert "timeout" in [event["reason"] for event in events_named(tmp_path, "backup.failed")]
    # a crash: kill -9 mid-dump; the orphaned tool still holds the memfd, then dies with it
    crash, crash_watch = _watched(agent_argv(timed, "backup"), watch_until_exit=False)
    tool_pid = read_pid(tmp_path / "tool.pid")
    wait_until(lambda: partial_files(tmp_path / "storage"), what="the crashing run's partial")
    crash_watch.sample()
    crash.send_signal(signal.SIGKILL)
    outputs += [*crash.communicate()]
    wait_until(lambda: process_gone(tool_pid), timeout=5, what="the orphan's death on its next write")
    # check-config (connects to list databases) and doctor, through the console script
    for verb in ("check-config", "doctor"):
        result = run_agent(config, verb)
        assert result.returncode in (0, 1), result.stderr
        assert account.databases[0] in result.stdout or verb == "doctor"
        outputs += [result.stdout.encode(), result.stderr.encode()]

    for watched in (watch, failure_watch, timeout_watch, crash_watch):
        for pid, (cmdline, environ) in watched.seen.items():
            assert password not in cmdline, f"pid {pid} had the password in its argv"
            assert password not in environ, f"pid {pid} had the password in its environment"
            assert b"PGPASSWORD=" not in environ
    for output in outputs:
        assert password not in output
    written = dict(_everything_written(tmp_path, skip={secret_file}))
    assert metrics in written and tmp_path / "storage" / ".agent" / "journal.jsonl" in written
    assert [path for path, content in written.items() if password in content] == []
    assert [path.name for path in Path("/dev/shm").iterdir() if password in _read(path)] == []


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes() if path.is_file() else b""
    except OSError:
        return b""
