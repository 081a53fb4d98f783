"""The throwaway redis-server of a drill: the restored snapshot in the job's scratch folder.

It listens on a unix socket in its own 0700 folder and on no TCP port at all, so no other local
user can reach the restored data (or pose as the drill's server) while it runs, and it needs no
password. It starts as a replica of a loopback port the agent holds without listening: a replica
drops no expired key while loading or after, so its key counts equal the snapshot's exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from agent import process
from agent.engines.redis.client import Endpoint, RedisConnection, ReplyError, parse_info, parse_keyspace
from agent.errors import AgentError, ConnectionFailed, DumpError

SNAPSHOT_NAME = "dump.rdb"
PID_FILE = "redis.pid"
_SOCKET_PATH_LIMIT = 100  # sun_path holds 108 bytes
_MINIMUM_DATABASES = 16


class DrillServerError(AgentError):
    """The drill's redis-server would not load the snapshot; carries the end of its log."""


class ScratchServer:
    def __init__(self, folder: Path, binary: str, *, nice: int = 0, ionice: str = "none") -> None:
        self.folder = folder
        self.binary = binary
        self._priority = (nice, ionice)  # the job's: a drill must not take the machine from the application
        self._child: process.Child | None = None
        self._master_hold: socket.socket | None = None
        self._socket_folder: Path | None = None  # a short private folder when the scratch path is too long

    @property
    def socket_path(self) -> Path:
        return (self._socket_folder or self.folder) / "redis.sock"

    def load(self, chunks: Iterable[bytes], *, databases: int, timeout: float) -> None:
        """Write the snapshot, start the server on it and wait until it has loaded every key."""
        self.folder.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # inside the job's private scratch folder
        self.folder.mkdir(mode=0o700)  # a fresh folder: a leftover of the same name is an error
        descriptor = os.open(
            self.folder / SNAPSHOT_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        with os.fdopen(descriptor, "wb") as snapshot:
            for chunk in chunks:
                snapshot.write(chunk)
        if len(str(self.folder / "redis.sock")) > _SOCKET_PATH_LIMIT:
            self._socket_folder = socket_folder_for(self.folder)
            try:
                self._socket_folder.mkdir(mode=0o700)
            except FileExistsError:
                raise DrillServerError(
                    f"{self._socket_folder} exists already: refusing a folder someone else made"
                ) from None
        self._master_hold = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._master_hold.bind(("127.0.0.1", 0))  # bound, never listening: the replica's master refuses
        config = self.folder / "redis.conf"
        descriptor = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(self._config(databases, self._master_hold.getsockname()[1]))
        nice, ionice = self._priority
        command = process.Command((self.binary, str(config)), nice=nice, ionice=ionice)
        self._child = process.start(command, stdout=process.DEVNULL)
        self._wait_loaded(timeout)

    def _config(self, databases: int, master_port: int) -> str:
        return "\n".join(
            [
                "port 0",
                f"unixsocket {_quoted(self.socket_path)}",
                "unixsocketperm 700",
                f"dir {_quoted(self.folder)}",
                f"dbfilename {SNAPSHOT_NAME}",
                'save ""',
                "appendonly no",
                "daemonize no",
                f"logfile {_quoted(self.folder / 'redis.log')}",
                f"pidfile {_quoted(self.folder / PID_FILE)}",
                f"databases {max(_MINIMUM_DATABASES, databases)}",
                f"replicaof 127.0.0.1 {master_port}",
                "replica-serve-stale-data yes",
                "",
            ]
        )

    def _wait_loaded(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "not started"
        while time.monotonic() < deadline:
            assert self._child is not None
            if self._child.popen.poll() is not None:
                raise DrillServerError(
                    f"the drill's {self.binary} exited while loading the snapshot: {self.log_tail()}"
                )
            try:
                with self.connection(timeout=5) as connection:
                    connection.call("PING")
                    return
            except (ConnectionFailed, ReplyError, DumpError, OSError) as error:
                last = str(error)  # LOADING, or the socket is not there yet
            time.sleep(0.1)
        raise DrillServerError(f"the drill's {self.binary} did not finish loading within {timeout:.0f}s ({last})")

    def connection(self, timeout: float = 30) -> RedisConnection:
        return RedisConnection.open(Endpoint(socket=str(self.socket_path)), None, None, timeout=timeout)

    def key_counts(self) -> dict[str, int]:
        with self.connection() as connection:
            keyspace = parse_keyspace(parse_info(connection.text("INFO", "keyspace")))
        return {name: keys for name, (keys, _) in sorted(keyspace.items(), key=lambda item: int(item[0][2:]))}

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = (self.folder / "redis.log").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "no log"
        return " | ".join(line.strip() for line in text.splitlines()[-lines:])

    def remove(self) -> None:
        """Stop the server (SHUTDOWN NOSAVE, then its process group) and delete the scratch folder."""
        if self._child is not None:
            with contextlib.suppress(AgentError, OSError, ReplyError), self.connection(timeout=2) as connection:
                connection.call("SHUTDOWN", "NOSAVE")
            self._child.terminate_group(grace=5)
            self._child = None
        if self._master_hold is not None:
            self._master_hold.close()
            self._master_hold = None
        shutil.rmtree(self.folder, ignore_errors=True)
        if self._socket_folder is not None:
            shutil.rmtree(self._socket_folder, ignore_errors=True)


def _quoted(path: Path) -> str:
    """A config-file string: Redis reads double-quoted values with backslash escapes."""
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def socket_folder_for(folder: Path) -> Path:
    """Where the socket goes when the scratch path is too long for one: a short private folder in the
    temp dir, named after the drill's folder so a later drill can remove it after a crash."""
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"backup-agent-drill-{digest}"


def remove_leftovers(drills: Path, *, older_than: float) -> list[Path]:
    """Remove folders crashed drills left (stopping their server): those whose server is gone, and
    those older than `older_than` seconds (no drill runs longer than the job's timeout)."""
    removed: list[Path] = []
    if not drills.is_dir() or drills.is_symlink():
        return removed
    now = time.time()
    for folder in drills.iterdir():
        if not folder.is_dir() or folder.is_symlink():
            continue
        pid = _server_pid(folder)
        if pid is not None and now - folder.lstat().st_mtime < older_than:
            continue  # another drill's live server
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(socket_folder_for(folder), ignore_errors=True)
        removed.append(folder)
    return removed


def _server_pid(folder: Path) -> int | None:
    """The pid in the folder's pidfile when that process runs in the folder (a redis-server works in
    its `dir`; its command line is rewritten to its title, so that cannot tell)."""
    try:
        pid = int((folder / PID_FILE).read_text().strip())
        working = os.readlink(f"/proc/{pid}/cwd")
    except (OSError, ValueError):
        return None
    return pid if Path(working) == folder.resolve() else None
