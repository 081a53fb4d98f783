"""The installed `backup-agent` console script, run the way a user runs it."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from agent_helpers import password_file, stored_files, write_config
from servers.postgres import PostgresServer

from agent import __version__

AGENT = str(Path(sys.executable).parent / "backup-agent")


def agent(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AGENT, *args], capture_output=True, text=True, timeout=120, env=env, check=False)


def _sqlite_config(tmp_path: Path, log: bool = True) -> Path:
    database = tmp_path / "app.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT)")
        connection.executemany("INSERT INTO item (name) VALUES (?)", [(f"item {n}",) for n in range(100)])
    config = write_config(tmp_path, {"app": {"engine": "sqlite", "databases": [str(database)]}})
    if not log:
        text = config.read_text().replace(f'file = "{tmp_path / "agent.log"}"\n', "")
        config.write_text(text)
    return config


def test_version_is_printed_by_the_script_and_by_python_dash_m() -> None:
    assert agent("--version").stdout.strip() == f"backup-agent {__version__}"
    module = subprocess.run([sys.executable, "-m", "agent", "--version"], capture_output=True, text=True, check=False)
    assert module.returncode == 0 and module.stdout.strip() == f"backup-agent {__version__}"


def test_bad_usage_exits_2() -> None:
    assert agent().returncode == 2
    assert agent("frobnicate").returncode == 2


def test_an_unknown_job_is_bad_usage(tmp_path: Path) -> None:
    result = agent("-c", str(_sqlite_config(tmp_path)), "backup", "--job", "nope")
    assert result.returncode == 2 and "no job named 'nope'" in result.stderr


def test_a_missing_config_file_exits_78_naming_it(tmp_path: Path) -> None:
    result = agent("-c", str(tmp_path / "absent.toml"), "backup")
    assert result.returncode == 78
    assert "absent.toml" in result.stderr


def test_the_config_path_can_come_from_the_environment(tmp_path: Path) -> None:
    config = _sqlite_config(tmp_path)
    result = agent("check-config", env={**os.environ, "BACKUP_AGENT_CONFIG": str(config)})
    assert result.returncode == 0 and "config is valid" in result.stdout


def test_a_config_error_exits_78_before_touching_storage(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[storage]\npath = "{tmp_path / "storage"}"\n\n[jobs.main]\nengine = "postgresql"\nport = "abc"\n'
        'databases = "*"\n'
    )
    config.chmod(0o600)
    result = agent("-c", str(config), "backup")
    assert result.returncode == 78
    assert "jobs.main.port (line 6)" in result.stderr
    assert not (tmp_path / "storage").exists()


def test_an_inline_password_in_a_readable_config_is_refused_without_echoing_it(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[storage]\npath = "{tmp_path / "s"}"\n\n[jobs.main]\nengine = "postgresql"\npassword = "hunter2-unique"\n'
        'databases = "*"\n'
    )
    config.chmod(0o644)
    result = agent("-c", str(config), "check-config")
    assert result.returncode == 78
    assert "jobs.main.password" in result.stderr and "hunter2-unique" not in result.stderr + result.stdout


def test_backup_then_list_json_is_pure_json_on_stdout_even_when_logs_go_to_stderr(tmp_path: Path) -> None:
    config = _sqlite_config(tmp_path, log=False)
    backup = agent("-c", str(config), "backup")
    assert backup.returncode == 0, backup.stderr
    assert '"event": "backup.finished"' in backup.stderr
    listing = agent("-c", str(config), "list", "--json")
    assert listing.returncode == 0
    rows = json.loads(listing.stdout)
    assert [row["status"] for row in rows] == ["good"]
    assert rows[0]["database"] == str(tmp_path / "app.db")
    verify = agent("-c", str(config), "verify", "--json")
    assert verify.returncode == 0 and json.loads(verify.stdout)["ok"] is True


def test_sigterm_during_a_backup_exits_143_and_leaves_no_partial(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path
) -> None:
    slow = tmp_path / "slow-pg_dump"
    pid_file = tmp_path / "dump.pid"
    slow.write_text(
        '#!/bin/sh\n[ "$1" = --version ] && exec pg_dump --version\n'
        f"echo $$ > {pid_file}\nprintf PGDMP; exec sleep 60\n"
    )
    slow.chmod(0o755)
    config = write_config(
        tmp_path,
        {
            "main": {
                "engine": "postgresql",
                "host": pg_server.host,
                "port": pg_server.port,
                "user": pg_server.user,
                "password_file": str(password_file(tmp_path, pg_server.password)),
                "databases": [pg_database],
                "tool": str(slow),
                "include_globals": False,
            }
        },
    )
    process = subprocess.Popen([AGENT, "-c", str(config), "backup"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    storage = tmp_path / "storage"
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline, "the dump never started"
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 128 + signal.SIGTERM
    assert [path for path in stored_files(storage) if path.name.endswith(".partial")] == []
    dump_pid = int(pid_file.read_text())
    assert not Path(f"/proc/{dump_pid}").exists(), "the dump tool outlived the agent"


@pytest.mark.parametrize("verb", ["backup", "list", "verify", "check-config"])
def test_every_verb_has_help(verb: str) -> None:
    result = agent(verb, "--help")
    assert result.returncode == 0 and "usage: backup-agent" in result.stdout
