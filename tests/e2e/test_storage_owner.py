"""Storage and the account the agent runs as: an unwritable folder is a `permission` problem naming
the path (never an internal error), and root never leaves files in a service user's storage."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers.common import skip_or_fail

AGENT = str(Path(sys.executable).parent / "backup-agent")
USER = "nobody"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the agent as another account")


@pytest.fixture
def place() -> Iterator[Path]:
    """A folder every account may enter (pytest's own are 0700), with a database nobody may read."""
    base = Path(tempfile.mkdtemp(prefix="backup-agent-owner-", dir="/tmp"))
    base.chmod(0o755)
    database = base / "app.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT)")
        connection.executemany("INSERT INTO item (name) VALUES (?)", [(f"item {n}",) for n in range(50)])
    database.chmod(0o644)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _config(base: Path, *jobs: str, owner: str = USER) -> Path:
    """No log file: the log goes to stderr, so a run's reason is read there."""
    lines = ["[storage]", f'path = "{base / "storage"}"', 'reserve = "1%"']
    for job in jobs:
        lines += ["", f"[jobs.{job}]", 'engine = "sqlite"', f'databases = ["{base / "app.db"}"]', 'every = "1h"']
    path = base / f"config-{'-'.join(jobs)}.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.chmod(0o600)
    shutil.chown(path, owner)
    return path


def _agent(config: Path, *args: str, as_user: str | None = None) -> subprocess.CompletedProcess[str]:
    prefix: list[str] = []
    if as_user is not None:
        if shutil.which("setpriv") is None:
            skip_or_fail("setpriv (util-linux) is needed to run the agent as another user")
        group = grp.getgrgid(pwd.getpwnam(as_user).pw_gid).gr_name
        prefix = ["setpriv", f"--reuid={as_user}", f"--regid={group}", "--clear-groups"]
    return subprocess.run(
        [*prefix, AGENT, "-c", str(config), *args], capture_output=True, text=True, timeout=120, check=False, cwd="/"
    )


def _events(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def _a_backup_file(base: Path) -> Path:
    return sorted((base / "storage").rglob("*.sqlite.zst"))[0]


# --------------------------------------------------------------------------------------------------
# A storage folder the agent's account may not write


@pytest.fixture
def roots_storage(place: Path) -> Path:
    """Backups root made (storage and `.agent` root's); the service user may read, not write."""
    assert _agent(_config(place, "app", "old", owner="root"), "backup").returncode == 0
    for folder in [place / "storage", *(place / "storage").rglob("*")]:
        if folder.is_dir() and folder.name != ".agent":
            folder.chmod(0o755)
    return place


def test_a_backup_into_an_unwritable_storage_folder_fails_for_permission_naming_the_path(roots_storage: Path) -> None:
    result = _agent(_config(roots_storage, "app"), "backup", as_user=USER)
    assert result.returncode == 1, result.stderr
    assert f"permission denied: {roots_storage / 'storage'}" in result.stdout, result.stdout
    assert "internal" not in result.stdout + result.stderr
    failed = [event for event in _events(result.stderr) if event["event"] == "backup.failed"]
    assert [event["reason"] for event in failed] == ["permission"], failed


@pytest.mark.parametrize("verb", ["prune", "pin", "retire"])
def test_prune_pin_and_retire_on_an_unwritable_storage_folder_say_permission_and_the_path(
    roots_storage: Path, verb: str
) -> None:
    args = {
        "prune": ("prune",),
        "pin": ("pin", str(_a_backup_file(roots_storage))),
        "retire": ("retire", "--job", "old"),  # a job no longer in this config
    }[verb]
    result = _agent(_config(roots_storage, "app"), *args, as_user=USER)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert f"error: permission denied: {roots_storage / 'storage'}/" in result.stderr, result.stderr
    assert f"the agent runs as {USER}" in result.stderr
    assert "internal error" not in result.stderr


# --------------------------------------------------------------------------------------------------
# Root, on a service user's storage


@pytest.fixture
def users_storage(place: Path) -> Path:
    """Storage the service user made and owns, with a backup of its own."""
    (place / "storage").mkdir(mode=0o750)
    shutil.chown(place / "storage", USER)
    result = _agent(_config(place, "app"), "backup", as_user=USER)
    assert result.returncode == 0, result.stderr
    return place


VERBS = {
    "backup": ("backup",),
    "prune": ("prune",),
    "pin": ("pin", "{file}"),
    "unpin": ("unpin", "{file}"),
    "retire": ("retire", "--job", "app", "--database", "gone.db"),
    "drill": ("drill",),
    "restore": ("restore", "--job", "app", "--database", "{database}", "--to-file", "{out}"),
    "run": ("run",),
}


@pytest.mark.parametrize("verb", VERBS)
def test_root_refuses_to_write_into_a_service_users_storage_and_says_as_whom_to_run(
    users_storage: Path, verb: str
) -> None:
    storage = users_storage / "storage"
    fill = {"file": str(_a_backup_file(users_storage)), "database": str(users_storage / "app.db")}
    fill["out"] = str(users_storage / "restored.db")
    result = _agent(_config(users_storage, "app"), *(arg.format(**fill) for arg in VERBS[verb]))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert f"storage {storage} belongs to {USER}" in result.stderr and f"sudo -u {USER}" in result.stderr
    owned_by_root = [path for path in [storage, *storage.rglob("*")] if path.lstat().st_uid == 0]
    assert owned_by_root == [], owned_by_root


def test_after_roots_refused_attempts_the_service_user_finds_every_backup_complete(users_storage: Path) -> None:
    config = _config(users_storage, "app")
    for args in (("backup",), ("prune",), ("pin", str(_a_backup_file(users_storage)))):
        assert _agent(config, *args).returncode == 2
    listing = json.loads(_agent(config, "list", "--json", as_user=USER).stdout)
    assert listing and {row["status"] for row in listing} == {"good"}, listing
    assert _agent(config, "verify", as_user=USER).returncode == 0
    assert _agent(config, "backup", as_user=USER).returncode == 0


@pytest.mark.parametrize("args", [("list",), ("status",), ("verify",), ("verify", "--incremental")], ids=" ".join)
def test_root_may_read_a_service_users_storage_and_leaves_nothing_there(
    users_storage: Path, args: tuple[str, ...]
) -> None:
    storage = users_storage / "storage"
    result = _agent(_config(users_storage, "app"), *args)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert [path for path in [storage, *storage.rglob("*")] if path.lstat().st_uid == 0] == []


def test_doctor_as_root_on_a_service_users_storage_says_as_whom_to_run(users_storage: Path) -> None:
    result = _agent(_config(users_storage, "app"), "doctor")
    storage_lines = [line for line in result.stdout.splitlines() if line.startswith("PROBLEM  storage:")]
    assert any(f"sudo -u {USER}" in line for line in storage_lines), result.stdout
    assert not any("chown 0 " in line for line in storage_lines), storage_lines
