"""The storage tree's fixed places: `<storage>/<job>/<folder>/` for backups, `.agent/` for bookkeeping."""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agent import trust
from agent.errors import DumpError, LockedError
from agent.writer import DIRECTORY_MODE, PRIVATE_DIRECTORY_MODE, ensure_directory

# without /proc/locks, lock_held_since probes with a shared lock for microseconds: a run that meets it tries again
_LOCK_ATTEMPTS = 10
_LOCK_RETRY_SECONDS = 0.002


@dataclass(frozen=True, slots=True)
class StorageLayout:
    root: Path

    @property
    def agent_directory(self) -> Path:
        return self.root / ".agent"

    def job_directory(self, job: str) -> Path:
        return self.root / job

    def scratch(self, job: str) -> Path:
        return self.agent_directory / "tmp" / job

    def lock_file(self, name: str) -> Path:
        return self.agent_directory / "locks" / f"{name}.lock"

    @property
    def state_file(self) -> Path:
        return self.agent_directory / "state.json"

    def prepare(self) -> StorageLayout:
        """Create the tree with its documented modes (folders 0750, `.agent` 0700) whatever the umask."""
        ensure_directory(self.root, DIRECTORY_MODE)
        for folder in (self.agent_directory, self.agent_directory / "locks", self.agent_directory / "tmp"):
            private_folder(folder)
        return self

    def prepare_scratch(self, job: str) -> Path:
        """The job's private scratch folder, created 0700 (its locks and temp files live there)."""
        return private_folder(self.scratch(job))


def foreign_owner_problem(root: Path) -> str | None:
    """Root about to write into storage another account owns: refused, never chowned after the fact.

    Files root made there (manifests 0440, the journal, state, locks, `.agent/` itself) would be
    unreadable to the storage's owner, who then sees its backups as incomplete. Chowning each of
    them instead would have root act on names the owner controls, which the agent never does.
    """
    if os.geteuid() != 0:
        return None
    try:
        owner = root.lstat().st_uid
    except OSError:
        return None  # not there yet: root creates it, and owns it
    if owner == 0:
        return None
    name = trust.account_name(owner)
    return (
        f"storage {root} belongs to {name}, and root's files there would be unreadable to it: "
        f"run this as {name} (sudo -u {name} backup-agent ...), or chown -R root {root} to make it root's"
    )


def private_folder(path: Path) -> Path:
    """A 0700 folder of the agent's own; one someone else owns or may write is refused, not used."""
    ensure_directory(path, PRIVATE_DIRECTORY_MODE)
    problem = trust.check_private_folder(path)
    if problem is not None:
        raise DumpError(problem, "unsafe_path")
    return path


@contextlib.contextmanager
def exclusive_lock(path: Path, what: str) -> Iterator[None]:
    """A non-blocking `flock`: released by the kernel when the holder dies, so a crash never wedges it."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        for attempt in range(_LOCK_ATTEMPTS):
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt + 1 == _LOCK_ATTEMPTS:
                    holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip()
                    detail = f" (held by pid {holder})" if holder else ""
                    raise LockedError(f"{what} is already running{detail}") from None
                time.sleep(_LOCK_RETRY_SECONDS)
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def waiting_lock(path: Path) -> Iterator[None]:
    """A blocking `flock`, held only for a short read-modify-write of a shared file."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def lock_held_since(path: Path) -> int | None:
    """When the live holder of the `flock` at `path` took it (st_mtime_ns); None when no one holds it.

    `exclusive_lock` writes its pid into the file as it takes the lock, so the file's mtime is that
    moment. Holders are looked up in /proc/locks, read-only, so asking never takes a lock a starting
    run could then not get. Without /proc, a shared lock is held for microseconds instead, and
    `exclusive_lock` retries for about 20 ms, so even then a run never skips as locked.
    """
    try:
        info = path.lstat()
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    held = _held_in_proc_locks(info.st_ino)
    if held is None:
        held = _probe(path)
    return info.st_mtime_ns if held else None


def _held_in_proc_locks(inode: int) -> bool | None:
    """A holder (not a waiter) of a `flock` on the file with this inode; None when /proc/locks is unreadable."""
    try:
        lines = Path("/proc/locks").read_text(encoding="ascii", errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if "->" in fields:  # a waiter, not a holder
            continue
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF": the device's numbers vary inside
        # containers (overlay), so the inode alone is matched
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
            return True
    return False


def _probe(path: Path) -> bool:
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(descriptor)  # also drops the probe's own shared lock
    return False
