"""The user install (`scripts/install.sh --user`): no root, no systemd, cron keeps the daemon alive.

Everything runs as an unprivileged user (`nobody`, with a fresh HOME) the way it would on a PaaS
account: the installer, the default config lookup, and the crontab line's command, started twice at
once and again after the daemon was killed. Offline: pip installs from a wheelhouse repacked from
this test's own environment, and the user reads a copy of the source (the clone may be private).
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import io
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from servers.common import skip_or_fail, wait_until

PROJECT = Path(__file__).resolve().parents[2]
USER, GROUP = "nobody", "nogroup"
CRON_PATH = "/usr/bin:/bin"  # what cron gives a job
PRIVATE = re.compile(r"(^|/)(\.venv|\.git|\.mypy_cache|\.pytest_cache|\.ruff_cache|__pycache__|[^/]*\.egg-info|demo)$")


# --------------------------------------------------------------------------------------------------
# An offline wheelhouse: the agent and its runtime dependencies, from this environment


def _runtime_distributions() -> list[metadata.Distribution]:
    """backup-agent and everything its requirements pull in (no extras), as installed here."""
    found: dict[str, metadata.Distribution] = {}
    pending = [Requirement("backup-agent")]
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in found:
            continue
        # an installed dist-info, not the source tree's egg-info that may also be on sys.path
        candidates = list(metadata.distributions(name=requirement.name))
        distribution = next((one for one in candidates if one.read_text("METADATA")), candidates[0])
        found[name] = distribution
        extras = requirement.extras or {""}
        for text in distribution.requires or []:
            needed = Requirement(text)
            if needed.marker is None or any(needed.marker.evaluate({"extra": extra}) for extra in extras):
                pending.append(needed)
    return list(found.values())


def _wheel_tag(distribution: metadata.Distribution) -> str:
    wheel = distribution.read_text("WHEEL") or ""
    tags = [line.split(":", 1)[1].strip() for line in wheel.splitlines() if line.startswith("Tag:")]
    return tags[0] if tags else "py3-none-any"


def _record_line(name: str, data: bytes) -> list[str]:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return [name, f"sha256={digest}", str(len(data))]


def _write_wheel(directory: Path, distribution: metadata.Distribution, files: dict[str, bytes]) -> Path:
    """A wheel of `files` plus the distribution's metadata, with a fresh RECORD."""
    name = canonicalize_name(distribution.metadata["Name"]).replace("-", "_")
    version = distribution.version
    info = f"{name}-{version}.dist-info"
    contents = dict(files)
    contents[f"{info}/METADATA"] = (distribution.read_text("METADATA") or "").encode()
    entry_points = distribution.read_text("entry_points.txt")
    if entry_points:
        contents[f"{info}/entry_points.txt"] = entry_points.encode()
    tag = _wheel_tag(distribution)
    contents[f"{info}/WHEEL"] = f"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: false\nTag: {tag}\n".encode()
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for arcname, data in contents.items():
        writer.writerow(_record_line(arcname, data))
    writer.writerow([f"{info}/RECORD", "", ""])
    contents[f"{info}/RECORD"] = record.getvalue().encode()
    path = directory / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for arcname, data in contents.items():
            archive.writestr(arcname, data)
    return path


def _installed_files(distribution: metadata.Distribution) -> dict[str, bytes]:
    """The distribution's files inside site-packages (scripts are remade by pip from entry points)."""
    files: dict[str, bytes] = {}
    for file in distribution.files or []:
        arcname = file.as_posix()
        if arcname.startswith("..") or ".dist-info/" in arcname or "__pycache__" in arcname:
            continue
        files[arcname] = Path(str(file.locate())).read_bytes()
    return files


def _agent_files(source: Path) -> dict[str, bytes]:
    return {
        path.relative_to(source).as_posix(): path.read_bytes()
        for path in sorted((source / "agent").rglob("*.py"))
        if "__pycache__" not in path.parts
    }


@pytest.fixture(scope="module")
def user_home() -> Iterator[dict[str, Path]]:
    """A readable copy of the source, a wheelhouse, and an empty HOME owned by the test user."""
    if os.geteuid() != 0:
        skip_or_fail("running the install as another user needs root (CI runs the tests as root)")
    if shutil.which("setpriv") is None:
        skip_or_fail("setpriv (util-linux) is needed to run the install as another user")
    base = Path(tempfile.mkdtemp(prefix="user-install-"))
    try:
        base.chmod(0o755)
        source = base / "source"
        shutil.copytree(PROJECT, source, ignore=lambda folder, names: [n for n in names if PRIVATE.search(n)])
        wheels = base / "wheels"
        wheels.mkdir()
        for distribution in _runtime_distributions():
            if canonicalize_name(distribution.metadata["Name"]) == "backup-agent":
                _write_wheel(wheels, distribution, _agent_files(source))
            else:
                _write_wheel(wheels, distribution, _installed_files(distribution))
        home = base / "home"
        home.mkdir(mode=0o700)
        for path in (source, wheels, home):
            subprocess.run(["chown", "-R", f"{USER}:{GROUP}", str(path)], check=True)
        yield {"source": source, "wheels": wheels, "home": home}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def as_user(home: Path, argv: list[str], **extra: str) -> list[str]:
    """argv run as the test user with a cron-like environment (HOME, LOGNAME, a short PATH)."""
    environment = [f"HOME={home}", f"LOGNAME={USER}", "SHELL=/bin/sh", f"PATH={CRON_PATH}"]
    environment += [f"{key}={value}" for key, value in extra.items()]
    return ["setpriv", f"--reuid={USER}", f"--regid={GROUP}", "--clear-groups", "env", "-i", *environment, *argv]


@pytest.fixture(scope="module")
def installed(user_home: dict[str, Path]) -> dict[str, Path]:
    home, source, wheels = user_home["home"], user_home["source"], user_home["wheels"]
    result = subprocess.run(
        as_user(
            home,
            ["bash", str(source / "scripts" / "install.sh"), "--user"],
            PACKAGE="backup-agent",
            PIP_NO_INDEX="1",
            PIP_FIND_LINKS=str(wheels),
            PIP_NO_COMPILE="1",  # the first imports compile instead: a faster test, the same install
        ),
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/",
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return {
        "home": home,
        "config": home / ".config" / "backup-agent" / "config.toml",
        "crontab": home / ".config" / "backup-agent" / "crontab",
        "storage": home / ".local" / "share" / "backup-agent" / "storage",
        "log": home / ".local" / "state" / "backup-agent" / "agent.log",
        "program": home / ".local" / "bin" / "backup-agent",
        "output": Path(result.stdout),
    }


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_the_user_install_puts_everything_under_the_home_and_private(installed: dict[str, Path]) -> None:
    home, config = installed["home"], installed["config"]
    text = config.read_text()

    assert f'path = "{installed["storage"]}"' in text
    assert f'file = "{installed["log"]}"' in text
    assert not [place for place in ("/var/backups", "/var/log", "/etc/backup-agent") if place in text]
    assert _mode(config) == 0o600 and _mode(config.parent) == 0o700
    assert _mode(installed["storage"]) == 0o750
    assert installed["program"].resolve().is_relative_to(home / ".local" / "share" / "backup-agent")
    assert all(path.stat().st_uid == pwd_uid(USER) for path in (config, installed["storage"], installed["program"]))


def pwd_uid(name: str) -> int:
    import pwd

    return pwd.getpwnam(name).pw_uid


def _user_config(installed: dict[str, Path]) -> Path:
    """The installed config with its example jobs replaced by one SQLite job in the home."""
    home = installed["home"]
    database = home / "app.db"
    with contextlib.closing(sqlite3.connect(database)) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS item (id INTEGER PRIMARY KEY, name TEXT)")
        connection.executemany("INSERT INTO item (name) VALUES (?)", [(f"item {n}",) for n in range(50)])
        connection.commit()
    config = installed["config"]
    head = re.split(r"^\[(?:retention|jobs\.)", config.read_text(), maxsplit=1, flags=re.M)[0]  # [storage], [log]
    job = f'[jobs.app]\nengine = "sqlite"\ndatabases = ["{database}"]\nevery = "1h"\njitter = "0s"\n'
    config.write_text(head + job)
    shutil.chown(database, USER, GROUP)
    return config


def test_the_agent_finds_the_user_config_without_being_told(installed: dict[str, Path]) -> None:
    _user_config(installed)

    result = subprocess.run(
        as_user(installed["home"], [str(installed["program"]), "check-config", "--offline"]),
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert str(installed["storage"]) in result.stdout


def _cron_command(installed: dict[str, Path]) -> str:
    """The command of the every-minute crontab line the installer wrote (the @reboot one is the same)."""
    lines = [line for line in installed["crontab"].read_text().splitlines() if line and not line.startswith("#")]
    every_minute = [line.removeprefix("* * * * * ") for line in lines if line.startswith("* * * * * ")]
    at_boot = [line.removeprefix("@reboot ") for line in lines if line.startswith("@reboot ")]
    assert len(every_minute) == len(at_boot) == 1 and every_minute == at_boot, lines
    return every_minute[0]


def _daemon_pids(program: Path) -> list[int]:
    """Processes running the installed program's `run` (the daemon), from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if argv[-2:-1] == [b"run"] and any(str(program.resolve()).encode() in part for part in argv):
                pids.append(int(entry.name))
    return pids


def _started_pids(log: Path) -> list[int]:
    import json

    if not log.exists():
        return []
    events = [json.loads(line) for line in log.read_text().splitlines()]
    return [event["pid"] for event in events if event.get("event") == "daemon.started"]


def test_the_crontab_line_keeps_exactly_one_daemon_alive(installed: dict[str, Path]) -> None:
    _user_config(installed)
    home, log = installed["home"], installed["log"]
    program = installed["program"].resolve()
    line = as_user(home, ["/bin/sh", "-c", _cron_command(installed)])
    started: list[subprocess.Popen[bytes]] = []

    def cron_fires() -> subprocess.Popen[bytes]:
        process = subprocess.Popen(line, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(home))
        started.append(process)
        return process

    try:
        first, second = cron_fires(), cron_fires()  # two minutes' lines at once
        wait_until(lambda: first.poll() is not None or second.poll() is not None, timeout=30, what="one to exit")
        time.sleep(1)
        quitter, daemon = (first, second) if first.poll() is not None else (second, first)
        stdout, stderr = quitter.communicate(timeout=5)

        assert quitter.returncode == 75, stderr  # a daemon already runs: at once, without a word for cron to mail
        assert (stdout, stderr) == (b"", b"")
        assert daemon.poll() is None
        wait_until(lambda: len(_started_pids(log)) == 1, timeout=30, what="daemon.started in the log")
        (daemon_pid,) = _daemon_pids(program)
        assert _started_pids(log) == [daemon_pid]
        wait_until(lambda: list((installed["storage"] / "app").rglob("*.sqlite.zst.json")), timeout=60, what="backup")

        os.kill(daemon_pid, signal.SIGKILL)  # a crash
        daemon.wait(10)
        assert _daemon_pids(program) == []
        again = cron_fires()  # the next minute's line

        wait_until(lambda: len(_started_pids(log)) == 2, timeout=30, what="the daemon back")
        (back_pid,) = _daemon_pids(program)
        assert back_pid != daemon_pid and again.poll() is None
        os.kill(back_pid, signal.SIGTERM)
        assert again.wait(30) == 0
    finally:
        for process in started:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                process.wait(10)
        for pid in _daemon_pids(program):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
