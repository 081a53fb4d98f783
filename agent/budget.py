"""The disk budget: filesystem figures, what `max_usage` and `reserve` resolve to, and dump predictions.

Two limits guard every write. `reserve` is free space that must remain for the application;
`max_usage` caps what the agent's own files (everything under the storage path) may occupy.
Figures come from statvfs on the storage path; an explicit `quota` replaces the filesystem's size
when the filesystem does not show it (free space is then also capped at quota minus usage).
The arithmetic here is pure; `measure` and `free_bytes_now` are the only functions that look at disk.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.config import StorageConfig
from agent.errors import DumpError

MIB = 1 << 20
PREDICTION_HISTORY = 5  # the last N stored sizes of a series
GROWTH_MARGIN = 1.2  # the next dump may be 20% larger than the largest of those
# With no history: stored bytes per byte the server reports. Deliberately pessimistic (databases
# compress 3-10x and a logical dump leaves out indexes); the in-flight check covers a miss.
COMPRESSION_RATIO = {"none": 1.0, "gzip": 0.5, "zstd": 0.5}
UNKNOWN_PREDICTION = MIB  # no history and no estimate (globals, grants): a small dump


@dataclass(frozen=True, slots=True)
class DiskFigures:
    """One look at the disk: its size, the free space writers may use, and the agent's usage."""

    total_bytes: int
    free_bytes: int
    usage_bytes: int


@dataclass(frozen=True, slots=True)
class Budget:
    reserve_bytes: int
    max_usage_bytes: int | None


def resolve_budget(storage: StorageConfig, total_bytes: int) -> Budget:
    """Bytes that `reserve` and `max_usage` stand for on a filesystem (or quota) of `total_bytes`."""
    max_usage = storage.max_usage.resolve(total_bytes) if storage.max_usage is not None else None
    return Budget(reserve_bytes=storage.reserve.resolve(total_bytes), max_usage_bytes=max_usage)


def shortfall(figures: DiskFigures, budget: Budget, need_bytes: int) -> int:
    """Bytes that must be freed before `need_bytes` more can be written within the budget (0: it fits).

    Deleting a file of n bytes raises free space and lowers usage by n, so one number covers both limits.
    """
    missing = need_bytes + budget.reserve_bytes - figures.free_bytes
    if budget.max_usage_bytes is not None:
        missing = max(missing, figures.usage_bytes + need_bytes - budget.max_usage_bytes)
    return max(0, missing)


def check_interval(total_bytes: int, budget: Budget) -> int:
    """Stored bytes a dump writes between two free-space checks: 1/1024 of the disk (or of max_usage
    when smaller), between 1 and 64 MiB. A statvfs call costs microseconds; this is cheap."""
    scale = min(total_bytes, budget.max_usage_bytes or total_bytes)
    return min(64 * MIB, max(MIB, scale // 1024))


# Room every in-flight check keeps on top of what it grants: the manifest, directory entries and
# the last block of the file are written without a check of their own.
FINISHING_BYTES = 64 << 10
# Free space that may go missing while a dump runs without anyone else being blamed: the agent's
# journal and log lines, filesystem metadata.
UNEXPLAINED_TOLERANCE = 256 << 10

WRITE = "write"  # the next stretch fits
DELETE = "delete"  # the agent's own bytes need room: delete the next backup in the queue
CONTENDED = "contended"  # another writer took the room: deleting would only feed it; stop


@dataclass(frozen=True, slots=True)
class InFlightRoom:
    """What a running dump may do before its next `need_bytes` land."""

    action: str  # WRITE | DELETE | CONTENDED
    shortfall_bytes: int  # bytes to free before `need_bytes` fit the budget (0: they fit)
    taken_by_others_bytes: int  # free space gone since the pre-flight that the agent's own bytes do not explain


def in_flight_room(
    baseline: DiskFigures,
    budget: Budget,
    *,
    agent_bytes: int,
    free_bytes: int,
    need_bytes: int,
    allowance_bytes: int = UNEXPLAINED_TOLERANCE,
) -> InFlightRoom:
    """Whether `need_bytes` more may be written now, and if not, whose bytes took the room.

    `baseline` is the pre-flight look at the disk; `agent_bytes` what the agent's running dumps have
    put on disk since then, less what their in-flight deletions gave back; `free_bytes` free space
    now. The agent's own usage (max_usage) is only ever its own doing, so room for it is deleted
    for. Free space that fell by more than `agent_bytes` (plus `allowance_bytes`) went to another
    writer: deleting a backup then only gives that writer more, so the dump must stop instead.
    """
    usage = baseline.usage_bytes + agent_bytes
    missing_usage = 0 if budget.max_usage_bytes is None else usage + need_bytes - budget.max_usage_bytes
    missing_free = need_bytes + budget.reserve_bytes - free_bytes
    missing = max(0, missing_usage, missing_free)
    taken = max(0, baseline.free_bytes - agent_bytes - free_bytes)
    if missing == 0:
        return InFlightRoom(WRITE, 0, taken)
    if missing_usage <= 0 and taken > allowance_bytes:
        return InFlightRoom(CONTENDED, missing, taken)
    return InFlightRoom(DELETE, missing, taken)


# --------------------------------------------------------------------------------------------------
# Looking at the disk


def allocated_bytes(path: Path) -> int:
    """Bytes a file occupies on disk (what deleting it gives back); 0 when it is gone."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return 0
    return _allocated(info)


def _allocated(info: os.stat_result) -> int:
    blocks = getattr(info, "st_blocks", None)
    return blocks * 512 if blocks is not None else info.st_size


def usage_of(root: Path) -> int:
    """Bytes allocated to every regular file under `root` (backups, manifests, journal, partials, scratch)."""
    total = 0
    pending = [str(root)]
    while pending:
        directory = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(info.st_mode):
                pending.append(entry.path)
            elif stat.S_ISREG(info.st_mode):
                total += _allocated(info)
    return total


def _filesystem(path: Path) -> tuple[int, int]:
    """(size, bytes an unprivileged writer may still use) of the filesystem holding `path`."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    figures = os.statvfs(probe)
    return figures.f_blocks * figures.f_frsize, figures.f_bavail * figures.f_frsize


def free_bytes_now(storage: StorageConfig, usage_bytes: int) -> int:
    """Free space this instant; cheap enough to call every few MiB of a dump."""
    size, available = _filesystem(storage.path)
    if storage.quota is not None:
        quota = storage.quota.resolve(size)
        available = min(available, quota - usage_bytes)
    return max(0, available)


def measure(storage: StorageConfig) -> DiskFigures:
    """The disk as it is now; with a quota set, the quota is the size and caps the free space."""
    usage = usage_of(storage.path)
    size, _available = _filesystem(storage.path)
    total = storage.quota.resolve(size) if storage.quota is not None else size
    return DiskFigures(total_bytes=total, free_bytes=free_bytes_now(storage, usage), usage_bytes=usage)


# --------------------------------------------------------------------------------------------------
# Predicting the next dump


@dataclass(frozen=True, slots=True)
class Prediction:
    stored_bytes: int  # the predicted size of the dump file
    basis: str  # history | estimate | unknown
    scratch_bytes: int = 0  # a scratch copy the engine makes on the same disk while it runs


def predict(history: Sequence[int], size_estimate: int | None, compression: str) -> Prediction:
    """The next dump's size: the largest of the last few stored sizes times a growth margin, or,
    with no history, the server's size estimate times a pessimistic compression ratio."""
    recent = [size for size in history[-PREDICTION_HISTORY:] if size > 0]
    if recent:
        return Prediction(math.ceil(max(recent) * GROWTH_MARGIN), "history")
    if size_estimate is not None and size_estimate > 0:
        ratio = COMPRESSION_RATIO.get(compression, 1.0)
        return Prediction(max(UNKNOWN_PREDICTION, math.ceil(size_estimate * ratio)), "estimate")
    return Prediction(UNKNOWN_PREDICTION, "unknown")


# --------------------------------------------------------------------------------------------------
# Refusal and reporting


class InsufficientSpaceError(DumpError):
    """A dump was refused before it started: it cannot fit the budget without going below keep_min."""

    def __init__(self, message: str, figures: dict[str, int | None]) -> None:
        super().__init__(message, reason="insufficient_space")
        self.figures = figures


def headroom(figures: DiskFigures, budget: Budget) -> int:
    """Bytes that still fit before a limit is reached; negative when the disk is over budget."""
    room = figures.free_bytes - budget.reserve_bytes
    if budget.max_usage_bytes is not None:
        room = min(room, budget.max_usage_bytes - figures.usage_bytes)
    return room
