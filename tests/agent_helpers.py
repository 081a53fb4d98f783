"""Helpers shared by the integration tests: write a config, run the CLI, read the JSON log."""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from servers.common import skip_or_fail

from agent import cli
from agent.compression import method_for_path, open_decompressed


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items()) + " }"
    return json.dumps(str(value), ensure_ascii=False)


def write_config(
    directory: Path,
    jobs: dict[str, dict[str, Any]],
    *,
    storage: dict[str, Any] | None = None,
    sections: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """A private config file with storage and a JSON log under `directory`."""
    lines = ["[storage]", f"path = {toml_value(directory / 'storage')}"]
    lines += [f"{key} = {toml_value(value)}" for key, value in (storage or {}).items()]
    lines += ["", "[log]", f"file = {toml_value(directory / 'agent.log')}", 'level = "debug"']
    for name, values in (sections or {}).items():
        lines += ["", f"[{name}]", *(f"{key} = {toml_value(value)}" for key, value in values.items())]
    for job, values in jobs.items():
        lines += ["", f"[jobs.{job}]", *(f"{key} = {toml_value(value)}" for key, value in values.items())]
    path = directory / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.chmod(path, 0o600)
    return path


def password_file(directory: Path, password: str) -> Path:
    path = directory / "db.password"
    path.write_text(password + "\n", encoding="utf-8")
    os.chmod(path, 0o600)
    return path


def run_cli(config: Path, *args: str) -> int:
    return cli.main(["-c", str(config), *args])


def log_events(directory: Path) -> list[dict[str, Any]]:
    path = directory / "agent.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def events_named(directory: Path, name: str) -> list[dict[str, Any]]:
    return [event for event in log_events(directory) if event.get("event") == name]


def stored_files(storage: Path) -> list[Path]:
    """Every file under storage except the agent's own bookkeeping."""
    return sorted(path for path in storage.rglob("*") if path.is_file() and ".agent" not in path.parts)


def data_files(storage: Path) -> list[Path]:
    return [path for path in stored_files(storage) if not path.name.endswith((".json", ".partial"))]


def decompressed(path: Path) -> bytes:
    reader = open_decompressed(io.BytesIO(path.read_bytes()), method_for_path(path.name))
    out = bytearray()
    while chunk := reader.read(1 << 20):
        out += chunk
    return bytes(out)


def descends_from(pid: str, ancestor: str) -> bool:
    """Whether process `pid` is a child (or grandchild...) of `ancestor`: other programs' tools don't count."""
    while pid not in ("0", "1"):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = stat.rsplit(")", 1)[1].split()[1]
        if pid == ancestor:
            return True
    return False


@dataclass
class ProcessWatch:
    """What a watch of /proc saw: the argv of this process's children running `tool`, and any
    process whose argv or environment held the secret."""

    tool_argvs: list[list[bytes]] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)


@contextmanager
def watching_processes(tool: bytes, secret: bytes, interval: float = 0.02) -> Iterator[ProcessWatch]:
    """Poll every process's cmdline and environ while the block runs."""
    seen = ProcessWatch()
    stop = threading.Event()
    own = str(os.getpid())

    def watch() -> None:
        while not stop.is_set():
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit() or entry.name == own:
                    continue
                try:
                    cmdline = (entry / "cmdline").read_bytes()
                    environ = (entry / "environ").read_bytes()
                except OSError:
                    continue
                if tool in cmdline and descends_from(entry.name, own):
                    seen.tool_argvs.append(cmdline.split(b"\0"))
                if secret in cmdline or secret in environ:
                    seen.leaks.append(cmdline.decode(errors="replace"))
            time.sleep(interval)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        yield seen
    finally:
        stop.set()
        watcher.join()


def free_bytes(path: Path) -> int:
    """Free space an unprivileged writer may use on the filesystem holding `path` (statvfs)."""
    figures = os.statvfs(path)
    return figures.f_bavail * figures.f_frsize


_SAMPLER = """
import os, select, sys
path, interval, lowest, samples = sys.argv[1], float(sys.argv[2]), 1 << 62, 0
print("sampling", flush=True)
while not select.select([sys.stdin], [], [], interval)[0]:
    figures = os.statvfs(path)
    lowest, samples = min(lowest, figures.f_bavail * figures.f_frsize), samples + 1
print(lowest, samples)
"""


@dataclass
class FreeSpaceWatch:
    """Samples free space on a filesystem every `interval` seconds while the block runs, so "the disk
    never fell below its reserve" is observed from outside, not taken from the agent's own log.

    The sampler is its own small process: it keeps sampling while the agent (in this process or
    another) holds the GIL, and costs the agent nothing.
    """

    path: Path
    interval: float = 0.001
    lowest: int = 1 << 62
    samples: int = 0
    _process: subprocess.Popen[str] | None = None

    def __enter__(self) -> FreeSpaceWatch:
        self._process = subprocess.Popen(
            [sys.executable, "-c", _SAMPLER, str(self.path), str(self.interval)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        assert self._process.stdout.readline() == "sampling\n", "the free-space sampler did not start"
        return self

    def __exit__(self, *_exc: object) -> None:
        assert self._process is not None
        output, _ = self._process.communicate("stop\n", timeout=30)
        lowest, samples = output.split()
        self.lowest, self.samples = int(lowest), int(samples)


def reachable_by_others(path: Path) -> bool:
    """A user with no rights of its own can reach `path`: every folder above it searchable, it readable."""
    path = Path(os.path.realpath(path))
    if any(not folder.stat().st_mode & stat.S_IXOTH for folder in path.parents):
        return False
    return bool(path.stat().st_mode & stat.S_IROTH)


def _runtime_distributions() -> list[importlib.metadata.Distribution]:
    """backup-agent's installed runtime dependencies, transitively (extras followed, test extras not)."""
    wanted: dict[str, frozenset[str]] = {}
    waiting: list[tuple[str, frozenset[str]]] = [("backup-agent", frozenset())]
    while waiting:
        name, extras = waiting.pop()
        key = canonicalize_name(name)
        if key in wanted and extras <= wanted[key]:
            continue
        wanted[key] = wanted.get(key, frozenset()) | extras
        for text in importlib.metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is None or any(
                requirement.marker.evaluate({"extra": extra}) for extra in (extras or {""})
            ):
                waiting.append((requirement.name, frozenset(requirement.extras)))
    return [importlib.metadata.distribution(key) for key in sorted(wanted) if key != "backup-agent"]


def _link_or_copy(source: str | Path, target: str | Path) -> None:
    """A hard link where the file is readable by others already (instant, nothing duplicated), else a 0644 copy."""
    if os.stat(source).st_mode & stat.S_IROTH:
        try:
            os.link(source, target)
            return
        except OSError:
            pass  # another filesystem
    shutil.copy2(source, target)
    os.chmod(target, 0o644)


def agent_command_for_another_user(directory: Path) -> tuple[list[str], dict[str, str]]:
    """argv and environment that run `python -m agent` as a user who may not read this checkout.

    Cloned under a private folder (as /root is), neither the package nor the venv can be read by
    that user: then the agent and its installed dependencies are copied into `directory` (which must
    be reachable by others) and run by an interpreter of the same version that user can reach.
    """
    import agent

    package = Path(agent.__file__).parent
    distributions = _runtime_distributions()
    environment = dict(os.environ)
    places = [package, Path(sys.executable), *(Path(d.locate_file("")) for d in distributions)]
    if all(reachable_by_others(place) for place in places):
        return [sys.executable, "-m", "agent"], environment
    site = directory / "python"
    shutil.copytree(package, site / "agent", copy_function=_link_or_copy)
    for distribution in distributions:
        root = Path(distribution.locate_file(""))
        for relative in distribution.files or []:
            source = root / relative
            if not source.is_file() or ".." in relative.parts:  # byte code kept: that user cannot write it
                continue
            target = site / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(source, target)
    for folder in [site, *(path for path in site.rglob("*") if path.is_dir())]:
        folder.chmod(0o755)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [sys.executable, os.path.realpath(sys.executable), shutil.which(version, path="/usr/bin:/bin")]
    interpreter = next((c for c in candidates if c and reachable_by_others(Path(c))), None)
    if interpreter is None:
        skip_or_fail(f"no {version} interpreter another user can run ({', '.join(filter(None, candidates))})")
    environment["PYTHONPATH"] = str(site)
    return [str(interpreter), "-m", "agent"], environment
