"""Hostile configs through the installed console script: each broken config exits 78 before it
touches the storage path, names the key and its line, and never echoes a secret.

tests/unit/test_config.py checks many of these at the parse level; here they go through
`backup-agent backup` as a user runs it. In each config the line marked `# <-` is the line the
error must name.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from agent_helpers import data_files
from fault_helpers import sqlite_database

AGENT = str(Path(sys.executable).parent / "backup-agent")
MARK = "# <-"


@dataclass(frozen=True)
class Broken:
    key: str | None  # the key path the error names; None for a TOML syntax error (only a line)
    body: str  # the config after [storage]; {storage}, {password_file}, {database} are filled in
    secret: str | None = None  # must not appear in stdout or stderr
    mode: int = 0o600  # the config file's permissions
    storage: str = "{work}/storage"  # storage.path, before any setup
    setup: Callable[[Path], None] | None = None  # prepares the work folder (symlinks, open folders)


def _symlinked_storage(work: Path) -> None:
    (work / "real-storage").mkdir(mode=0o750)
    (work / "storage").symlink_to(work / "real-storage")


def _world_writable_storage(work: Path) -> None:
    (work / "storage").mkdir()
    (work / "storage").chmod(0o777)


def _world_writable_parent(work: Path) -> None:
    (work / "open").mkdir()
    (work / "open").chmod(0o777)  # no sticky bit: anyone may rename storage away and put their own
    (work / "open" / "storage").mkdir(mode=0o750)


def _world_writable_grandparent_of_a_new_path(work: Path) -> None:
    (work / "open").mkdir()
    (work / "open").chmod(0o777)


JOB = '[jobs.main]\nengine = "postgresql"\nhost = "127.0.0.1"\npassword_file = "{password_file}"\n'
SQLITE_JOB = '[jobs.files]\nengine = "sqlite"\ndatabases = ["{database}"]\n'
NO_PASSWORD_FILE = JOB.replace("password_file", "user")


def job(line: str, head: str = JOB) -> str:
    """A PostgreSQL job of every database whose last line, `line`, is the marked one."""
    return head + f'databases = "*"\n{line}  {MARK}\n'


def section(name: str, line: str) -> str:
    """A valid sqlite job, then a [name] table whose one line is the marked one."""
    return SQLITE_JOB + f"[{name}]\n{line}  {MARK}\n"


BROKEN: dict[str, Broken] = {
    # TOML syntax
    "an unterminated list": Broken(None, JOB + f'databases = ["app"  {MARK}\n'),
    "a bare word as a value": Broken(None, "[jobs.main]\nengine = postgresql  " + MARK + '\ndatabases = "*"\n'),
    "a table declared twice": Broken(None, JOB + 'databases = "*"\n[jobs.main]  ' + MARK + "\nport = 1\n"),
    "a key given twice": Broken(None, JOB + 'databases = "*"\nhost = "10.0.0.1"  ' + MARK + "\n"),
    "a password on a broken line": Broken(
        None,
        JOB.replace("password_file", "user") + f'databases = "*"\npassword = "Pw-Syntax-77 {MARK}\n',
        secret="Pw-Syntax-77",
    ),
    # unknown keys
    "an unknown section": Broken("storgae", SQLITE_JOB + f'[storgae]  {MARK}\ncompression = "gzip"\n'),
    "an unknown storage key": Broken("storage.compresion", f'compresion = "gzip"  {MARK}\n' + SQLITE_JOB),
    "an unknown job key": Broken("jobs.main.databse", job('databse = "app"')),
    "another engine's key": Broken("jobs.main.include_grants", job("include_grants = true")),
    "an unknown engine": Broken("jobs.main.engine", f'[jobs.main]\nengine = "oracle"  {MARK}\ndatabases = "*"\n'),
    # wrong types
    "a port that is text": Broken("jobs.main.port", job('port = "abc"')),
    "a nice level that is text": Broken("jobs.main.nice", job('nice = "high"')),
    "a boolean that is text": Broken("storage.immutable", f'immutable = "yes"  {MARK}\n' + SQLITE_JOB),
    "databases that are a number": Broken("jobs.main.databases", JOB + f"databases = 7  {MARK}\n"),
    "a password that is a number": Broken(
        "jobs.main.password",
        job("password = 918273645", NO_PASSWORD_FILE),
        secret="918273645",
    ),
    # sizes, durations and counts that are negative or zero
    "a negative max_usage": Broken("storage.max_usage", f'max_usage = "-5GiB"  {MARK}\n' + SQLITE_JOB),
    "a zero quota": Broken("storage.quota", f'quota = "0B"  {MARK}\n' + SQLITE_JOB),
    "a zero log size": Broken("log.max_size", section("log", 'max_size = "0"')),
    "a zero log keep": Broken("log.keep", section("log", "keep = 0")),
    "a zero timeout": Broken("jobs.main.timeout", job('timeout = "0s"')),
    "a negative stall timeout": Broken("jobs.main.stall_timeout", job('stall_timeout = "-1m"')),
    "zero concurrent dumps": Broken("daemon.max_concurrent_dumps", section("daemon", "max_concurrent_dumps = 0")),
    "a negative keep_daily": Broken("retention.keep_daily", section("retention", "keep_daily = -1")),
    "a zero interval": Broken("jobs.main.every", job('every = "0s"')),
    # schedules and time zones
    "a cron minute of 61": Broken("jobs.main.schedule", job('schedule = "61 * * * *"')),
    "a cron in words": Broken("jobs.main.schedule", job('schedule = "every day"')),
    "an unknown time zone": Broken("jobs.main.timezone", job('timezone = "Mars/Olympus"')),
    "a snapshot at 25:00": Broken("snapshots.times", section("snapshots", 'times = ["25:00"]')),
    # names
    "a database listed twice": Broken("jobs.main.databases", JOB + f'databases = ["app", "app"]  {MARK}\n'),
    "an empty database name": Broken("jobs.main.databases", JOB + f'databases = [""]  {MARK}\n'),
    "an empty job name": Broken('jobs.""', f'[jobs.""]  {MARK}\nengine = "sqlite"\ndatabases = ["{{database}}"]\n'),
    "a job name with a slash": Broken(
        'jobs."a/b"', f'[jobs."a/b"]  {MARK}\nengine = "sqlite"\ndatabases = ["{{database}}"]\n'
    ),
    "a job without databases": Broken("jobs.main.databases", f'[jobs.main]  {MARK}\nengine = "postgresql"\n'),
    "a job without an engine": Broken("jobs.main.engine", f'[jobs.main]  {MARK}\ndatabases = "*"\n'),
    "two sqlite files with one file name": Broken(
        "jobs.files.databases",
        f'[jobs.files]\nengine = "sqlite"\ndatabases = ["{{database}}", "{{work}}/other/app.db"]  {MARK}\n',
    ),
    # secrets
    "an inline password in a readable file": Broken(
        "jobs.main.password",
        job('password = "Pw-Readable-42"', NO_PASSWORD_FILE),
        secret="Pw-Readable-42",
        mode=0o644,
    ),
    "a password in extra_args": Broken(
        "jobs.main.extra_args",
        job('extra_args = ["--password=Pw-Argv-31"]'),
        secret="Pw-Argv-31",
    ),
    "a password inside a MongoDB URI": Broken(
        "jobs.main.uri",
        job('uri = "mongodb://u:Pw-Uri-19@db/"', '[jobs.main]\nengine = "mongodb"\n'),
        secret="Pw-Uri-19",
    ),
    "a ping URL that is not http": Broken(
        "notify.healthchecks_url",
        section("notify", 'healthchecks_url = "ftp://hc.example/Tok-3141"'),
        secret="Tok-3141",
    ),
    "a password variable that is not a name": Broken(
        "jobs.main.password_env",
        job('password_env = "1 BAD"', NO_PASSWORD_FILE),
    ),
    # the storage path
    "a relative storage path": Broken("storage.path", SQLITE_JOB, storage="relative/storage"),
    "a storage path that is a symlink": Broken("storage.path", SQLITE_JOB, setup=_symlinked_storage),
    "a storage folder others can write": Broken("storage.path", SQLITE_JOB, setup=_world_writable_storage),
    "a storage folder whose parent others can write": Broken(
        "storage.path",
        SQLITE_JOB,
        storage="{work}/open/storage",
        setup=_world_writable_parent,
    ),
    "a new storage path under a folder others can write": Broken(
        "storage.path",
        SQLITE_JOB,
        storage="{work}/open/new/storage",
        setup=_world_writable_grandparent_of_a_new_path,
    ),
}


def _console(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AGENT, "-c", str(config), *args], capture_output=True, text=True, timeout=60, check=False)


def _write(work: Path, case: Broken) -> tuple[Path, Path, int]:
    """The config file, its storage path, and the line the error must name."""
    (work / "other").mkdir()
    database = sqlite_database(work / "app.db", rows=3)
    sqlite_database(work / "other" / "app.db", rows=3)
    password = work / "db.password"
    password.write_text("Pw-File-0\n")
    password.chmod(0o600)
    storage = case.storage.format(work=work)
    head = f'[storage]\npath = "{storage}"  {MARK if case.key == "storage.path" else ""}\n'
    body = case.body.replace("{password_file}", str(password)).replace("{database}", str(database))
    text = head + body.replace("{work}", str(work)).replace("{{database}}", str(database))
    lines = [number for number, line in enumerate(text.splitlines(), start=1) if MARK in line]
    assert len(lines) == 1, f"mark exactly one line: {text}"
    config = work / "config.toml"
    config.write_text(text)
    config.chmod(case.mode)
    return config, Path(storage) if storage.startswith("/") else work / storage, lines[0]


def _tree(path: Path) -> list[str]:
    if path.is_symlink() or not path.exists():
        return ["<symlink>"] if path.is_symlink() else []
    return sorted(str(item.relative_to(path)) for item in path.rglob("*"))


@pytest.mark.parametrize("name", list(BROKEN))
def test_a_broken_config_exits_78_naming_key_and_line_before_touching_storage(name: str, tmp_path: Path) -> None:
    case = BROKEN[name]
    if case.setup is not None:
        case.setup(tmp_path)
    config, storage, line = _write(tmp_path, case)
    existed, before = storage.exists() or storage.is_symlink(), _tree(storage)

    result = _console(config, "backup")

    output = result.stdout + result.stderr
    assert result.returncode == 78, output
    assert (storage.exists() or storage.is_symlink()) == existed and _tree(storage) == before, "storage was touched"
    assert not (tmp_path / "real-storage").exists() or _tree(tmp_path / "real-storage") == []
    problems = [text for text in result.stderr.splitlines() if text.startswith("backup-agent: config error:")]
    assert problems, result.stderr
    if case.key is None:
        assert any(f"line {line}:" in problem for problem in problems), problems
    else:
        assert any(f"{case.key} (line {line})" in problem for problem in problems), problems
    if case.secret is not None:
        assert case.secret not in output
        assert case.secret not in _console(config, "check-config", "--offline").stdout


@pytest.fixture
def under_tmp() -> Iterator[Path]:
    """A fresh folder straight under /tmp (root-owned, sticky, world-writable)."""
    folder = Path(tempfile.mkdtemp(prefix="backup-agent-fault-", dir="/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


@pytest.mark.parametrize("exists", [False, True], ids=["new", "existing"])
def test_a_storage_path_straight_under_a_root_owned_sticky_tmp_is_fine(exists: bool, under_tmp: Path) -> None:
    if os.stat("/tmp").st_uid != 0 or not os.stat("/tmp").st_mode & 0o1000:
        pytest.skip("/tmp is not root-owned and sticky here")
    database = sqlite_database(under_tmp / "app.db", rows=3)
    storage = Path("/tmp") / f"{under_tmp.name}-storage"
    if exists:
        storage.mkdir(mode=0o750)
    config = under_tmp / "config.toml"
    config.write_text(f'[storage]\npath = "{storage}"\n\n[jobs.files]\nengine = "sqlite"\ndatabases = ["{database}"]\n')
    config.chmod(0o600)
    try:
        result = _console(config, "backup")
        assert result.returncode == 0, result.stdout + result.stderr
        assert len(data_files(storage)) == 1
    finally:
        shutil.rmtree(storage, ignore_errors=True)


def test_the_table_has_at_least_thirty_broken_configs() -> None:
    assert len(BROKEN) >= 30
