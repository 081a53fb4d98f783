"""The only code that creates dump files.

Bytes go through the compressor and SHA-256 into `<final>.partial` (O_EXCL, O_NOFOLLOW, 0600).
Every write to the partial passes one gate that knows the bytes about to land: compressor output
(a multi-threaded zstd flush can be several MiB) is cut into pieces of at most `burst_bytes`, and
the gate (`SpaceGate`, the disk budget's) is asked for room before a piece lands, never after.
On commit: fsync, chmod 0440, publish with `os.link` (which fails on an existing name where
`os.rename` would silently replace), unlink the partial, fsync the folder. A failed fsync is
never retried: the data may already be lost, so the run fails and the partial goes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent import memory
from agent.compression import CompressionSettings, new_compressor
from agent.errors import DumpError
from agent.naming import MANIFEST_SUFFIX, PARTIAL_SUFFIX

FILE_MODE = 0o440
DIRECTORY_MODE = 0o750
PRIVATE_DIRECTORY_MODE = 0o700
_MAX_SEQUENCE = 99


def ensure_directory(path: Path, mode: int = DIRECTORY_MODE) -> Path:
    """Create `path` (and parents) with `mode` whatever the umask; refuse a symlink in its place."""
    missing: list[Path] = []
    current = path
    while not current.exists() and not current.is_symlink():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=mode)
        os.chmod(directory, mode, follow_symlinks=False)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise DumpError(f"{path} is not a real directory (a symlink or a file is in its place)", "unsafe_path")
    return path


def fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@dataclass(frozen=True, slots=True)
class PublishedFile:
    path: Path
    sha256: str
    raw_bytes: int
    stored_bytes: int


class SpaceGate(Protocol):
    """Room on disk for a dump's bytes, asked for before they are written."""

    def room(self, file_bytes: int, upcoming_bytes: int) -> int:
        """Make room for `upcoming_bytes` more after the `file_bytes` the partial occupies; return how
        many bytes (at least `upcoming_bytes`) may now be written before asking again, or raise."""
        ...

    def settle(self, kept_bytes: int) -> None:
        """The dump is over: `kept_bytes` stay on disk (0 when the partial was removed)."""
        ...


DEFAULT_BURST = 1 << 20


class DumpWriter:
    """Streams one dump into a partial file and publishes it under a name no one else has."""

    def __init__(
        self,
        directory: Path,
        name_for: Callable[[int], str],
        compression: CompressionSettings,
        *,
        max_write_rate: int | None = None,
        space: SpaceGate | None = None,
        burst_bytes: int = DEFAULT_BURST,
    ) -> None:
        self.directory = ensure_directory(directory)
        self._name_for = name_for
        self.partial_path = directory / (name_for(0) + PARTIAL_SUFFIX)
        self._compressor = new_compressor(compression)
        self._hash = hashlib.sha256()
        self.raw_bytes = 0
        self.stored_bytes = 0
        self._max_write_rate = max_write_rate
        self._space = space
        self._burst = max(1, burst_bytes)
        self._granted_until = 0  # stored_bytes up to which the gate has made room
        self._started = time.monotonic()
        self._descriptor: int | None = os.open(
            self.partial_path,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
        )
        os.fchmod(self._descriptor, 0o600)

    def write(self, data: bytes) -> None:
        self.raw_bytes += len(data)
        self._store(self._compressor.compress(data))

    def _store(self, data: bytes) -> None:
        if not data:
            return
        descriptor = self._descriptor
        assert descriptor is not None, "writer already closed"
        self._hash.update(data)
        whole = memoryview(data)
        for start in range(0, len(whole), self._burst):
            view = whole[start : start + self._burst]
            if self._space is not None and self.stored_bytes + len(view) > self._granted_until:
                self._granted_until = self.stored_bytes + self._space.room(self._on_disk(), len(view))
            while view:
                written = os.write(descriptor, view)
                view = view[written:]
                self.stored_bytes += written
            if self._max_write_rate:
                ahead = self.stored_bytes / self._max_write_rate - (time.monotonic() - self._started)
                if ahead > 0:
                    time.sleep(ahead)

    def _on_disk(self) -> int:
        """What the partial occupies: its allocated blocks, and never less than the bytes written."""
        assert self._descriptor is not None, "writer already closed"
        blocks = getattr(os.fstat(self._descriptor), "st_blocks", 0) * 512
        return max(self.stored_bytes, blocks)

    def _settle(self, kept_bytes: int) -> None:
        space, self._space = self._space, None
        if space is not None:
            space.settle(kept_bytes)

    def commit(self) -> PublishedFile:
        """Finish, fsync once (never retried), and publish read-only under a fresh name."""
        self._store(self._compressor.flush())
        self._release_compressor()
        descriptor = self._descriptor
        assert descriptor is not None, "writer already closed"
        kept = self._on_disk()
        try:
            os.fsync(descriptor)
            os.fchmod(descriptor, FILE_MODE)
        finally:
            os.close(descriptor)
            self._descriptor = None
        final = link_without_replacing(self.partial_path, self.directory, self._name_for)
        os.unlink(self.partial_path)
        fsync_directory(self.directory)
        self._settle(kept)
        return PublishedFile(final, self._hash.hexdigest(), self.raw_bytes, self.stored_bytes)

    def _release_compressor(self) -> None:
        """Free zstd's context and job buffers now and hand the freed heap back to the system, which
        glibc otherwise keeps: three 94 MB backups in one process left it at 70 MiB, with this 53 MiB
        (docs/performance.md)."""
        self._compressor = new_compressor(_NO_COMPRESSION)
        memory.trim()

    def retract(self, published: PublishedFile) -> None:
        """Unpublish the file `commit` made when its manifest could not be written: without one
        it never counted as a backup, and a data file nobody can vouch for must not linger."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(published.path)
        fsync_directory(self.directory)

    def abort(self) -> None:
        """Close and remove the partial; safe to call more than once."""
        self._release_compressor()
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.partial_path)
        self._settle(0)


_NO_COMPRESSION = CompressionSettings("none")


def link_without_replacing(source: Path, directory: Path, name_for: Callable[[int], str]) -> Path:
    """Give `source` the first free name of `name_for(0)`, `name_for(1)`, ...; never overwrite.

    A name counts as free only when its manifest's name is free too (anything may sit there).
    """
    for sequence in range(_MAX_SEQUENCE + 1):
        candidate = directory / name_for(sequence)
        if os.path.lexists(candidate.with_name(candidate.name + MANIFEST_SUFFIX)):
            continue
        try:
            os.link(source, candidate, follow_symlinks=False)
        except FileExistsError:
            continue
        return candidate
    raise DumpError(f"no free file name for {name_for(0)} in {directory}", "name_taken")


def write_small_file(directory: Path, name: str, data: bytes, mode: int = FILE_MODE) -> Path:
    """Write a small file (a manifest) the same careful way: partial, fsync, link, never replace."""
    partial = directory / (name + PARTIAL_SUFFIX)
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(descriptor, view) :]
        os.fsync(descriptor)
        os.fchmod(descriptor, mode)
    except BaseException:
        os.close(descriptor)
        os.unlink(partial)
        raise
    os.close(descriptor)
    try:
        os.link(partial, directory / name, follow_symlinks=False)
    except FileExistsError:
        os.unlink(partial)
        raise DumpError(f"{directory / name} already exists; refusing to replace it", "name_taken") from None
    os.unlink(partial)
    fsync_directory(directory)
    return directory / name


def replace_file_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """For the agent's own state (state.json, metrics): write a temp file, fsync, rename over."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)  # a crashed run's leftover; a name planted there is removed, never opened
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(descriptor, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(descriptor, view) :]
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(temporary, path)
    fsync_directory(path.parent)
