"""`restore --into all` for Redis: the snapshot goes where the server loads it, the server stopped.

Redis loads its data only when it starts, from `dir`/`dbfilename` (unless AOF is on). So: read
where those are, prove the server runs on this machine from that folder (its process's working
directory is `dir`), write the snapshot beside its file, move the old file aside (never deleted:
`<dbfilename>.before-restore-<time>`), put the snapshot in its place, and stop the server with
SHUTDOWN NOSAVE (which writes nothing over it). The next start, by hand or by its supervisor,
loads the restored keys. docs/redis.md has the same steps by hand.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from agent.engines.redis.client import RedisConnection, ReplyError, parse_info, read_config
from agent.errors import AgentError, DumpError, UsageError
from agent.log import get_logger

if TYPE_CHECKING:
    from agent.manifest import Manifest

_STOP_WAIT_SECONDS = 60.0


class PlacementError(AgentError):
    """The snapshot was not put in place; what was changed (if anything) is in the message."""


@dataclass(frozen=True, slots=True)
class ServerFiles:
    directory: Path
    filename: str
    pid: int
    uid: int
    gid: int
    databases: int

    @property
    def path(self) -> Path:
        return self.directory / self.filename


def server_files(connection: RedisConnection) -> ServerFiles:
    """Where the running server loads its snapshot from, proven to be this machine's folder."""
    try:
        config = read_config(connection)
    except ReplyError as error:
        raise UsageError(
            f"restore --into needs CONFIG GET on the server ({error}); or restore by hand: docs/redis.md"
        ) from None
    if config.get("appendonly") == "yes":
        raise UsageError(
            "the server has appendonly yes: at start it loads its AOF, not the snapshot; "
            "set appendonly no in its config, restore, start it, then CONFIG SET appendonly yes (docs/redis.md)"
        )
    info = parse_info(connection.text("INFO", "server"))
    pid = int(info.get("process_id", "0"))
    directory = Path(config.get("dir", ""))
    try:
        working = Path(os.readlink(f"/proc/{pid}/cwd"))
        owner = os.stat(f"/proc/{pid}")
    except OSError:
        raise UsageError(
            f"cannot see the server's process {pid} on this machine: restore --into works only beside the "
            "server (run the agent where Redis runs, or restore by hand: docs/redis.md)"
        ) from None
    if not directory.is_absolute() or working != directory:
        raise UsageError(
            f"the server's dir {directory} is not its working folder {working}: restore by hand (docs/redis.md)"
        )
    return ServerFiles(
        directory,
        config.get("dbfilename", "dump.rdb"),
        pid,
        owner.st_uid,
        owner.st_gid,
        int(config.get("databases", "16")),
    )


def place_snapshot(connection: RedisConnection, chunks: Iterable[bytes], manifest: Manifest) -> Path:
    """Put the snapshot where the server loads it and stop the server; return the snapshot's path."""
    files = server_files(connection)
    needed = manifest.details.get("databases_in_snapshot")
    if isinstance(needed, int) and needed > files.databases:
        raise UsageError(
            f"the snapshot has keys in database {needed - 1} but the server has only {files.databases} (databases)"
        )
    _refuse_untrusted_folder(files)
    log = get_logger(server_dir=str(files.directory))
    directory = os.open(files.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        temporary = f".backup-agent-restore-{uuid.uuid4().hex}.rdb"
        inode = _write(directory, temporary, chunks, files)
        kept = _move_aside(directory, files.filename)
        try:
            os.link(temporary, files.filename, src_dir_fd=directory, dst_dir_fd=directory, follow_symlinks=False)
        except OSError as error:
            os.unlink(temporary, dir_fd=directory)
            raise PlacementError(
                f"could not put the snapshot at {files.path}: {error.strerror}; nothing is stopped"
            ) from None
        os.unlink(temporary, dir_fd=directory)
        os.fsync(directory)
        try:
            _stop(connection, files)
        except ReplyError as error:
            _put_back(directory, files.filename, kept)
            raise PlacementError(
                f"the server refused SHUTDOWN ({error}); nothing changed. Grant +shutdown, or stop it with "
                "SHUTDOWN NOSAVE yourself and place the file by hand (docs/redis.md)"
            ) from None
    finally:
        os.close(directory)
    if os.stat(files.path, follow_symlinks=False).st_ino != inode:
        raise PlacementError(
            f"{files.path} was replaced while the server stopped: it saved over the snapshot; restore again"
        )
    log.info(
        "restore.placed",
        path=str(files.path),
        previous=kept or "",
        next_step="start the Redis server: it loads the snapshot",
    )
    return files.path


def _refuse_untrusted_folder(files: ServerFiles) -> None:
    info = os.stat(files.directory, follow_symlinks=False)
    if not stat.S_ISDIR(info.st_mode) or info.st_mode & stat.S_IWOTH or info.st_uid not in (0, files.uid):
        raise UsageError(f"{files.directory} is not a folder owned by the server's user or root and closed to others")


def _write(directory: int, name: str, chunks: Iterable[bytes], files: ServerFiles) -> int:
    descriptor = os.open(
        name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=directory
    )
    try:
        with contextlib.suppress(PermissionError):  # not root: the file stays ours, the server's user must read it
            os.fchown(descriptor, files.uid, files.gid)
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(descriptor, view) :]
        os.fsync(descriptor)
        return os.fstat(descriptor).st_ino
    except BaseException:
        os.unlink(name, dir_fd=directory)
        raise
    finally:
        os.close(descriptor)


def _move_aside(directory: int, filename: str) -> str | None:
    """Keep the server's current file as `<name>.before-restore-<time>` (a fresh name, never replacing)."""
    try:
        os.stat(filename, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return None
    kept = f"{filename}.before-restore-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}"
    os.link(filename, kept, src_dir_fd=directory, dst_dir_fd=directory, follow_symlinks=False)
    os.unlink(filename, dir_fd=directory)
    return kept


def _put_back(directory: int, filename: str, kept: str | None) -> None:
    os.unlink(filename, dir_fd=directory)
    if kept is not None:
        os.link(kept, filename, src_dir_fd=directory, dst_dir_fd=directory, follow_symlinks=False)
        os.unlink(kept, dir_fd=directory)
    os.fsync(directory)


def _stop(connection: RedisConnection, files: ServerFiles) -> None:
    """SHUTDOWN NOSAVE (a refusal raises ReplyError), then wait for the process to be gone."""
    with contextlib.suppress(DumpError, OSError):
        connection.call("SHUTDOWN", "NOSAVE")  # the server closes the connection instead of answering
    deadline = time.monotonic() + _STOP_WAIT_SECONDS
    while time.monotonic() < deadline:
        if not _running(files.pid):
            return
        time.sleep(0.1)
    raise PlacementError(f"the snapshot is at {files.path} but the server (pid {files.pid}) did not stop; stop it now")


def _running(pid: int) -> bool:
    """Whether the process exists and is not a zombie (exited, waiting for its parent to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
