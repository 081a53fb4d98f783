"""The storage tree's fixed places: `<storage>/<job>/<folder>/` for backups, `.agent/` for bookkeeping."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agent import trust
from agent.errors import DumpError, LockedError
from agent.writer import DIRECTORY_MODE, PRIVATE_DIRECTORY_MODE, ensure_directory


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
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip()
            detail = f" (held by pid {holder})" if holder else ""
            raise LockedError(f"{what} is already running{detail}") from None
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
