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
from agent.units import format_size

MIB = 1 << 20
PREDICTION_HISTORY = 5  # the last N stored sizes of a series
GROWTH_MARGIN = 1.2  # the next dump may be 20% larger than the largest of those
# With no history and no measured ratio for the engine (EngineFamily.first_dump_ratios): stored bytes per
# byte the server reports, deliberately pessimistic; the in-flight check covers a miss.
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


def allocated_of(info: os.stat_result) -> int:
    """Bytes a file occupies on disk, from its lstat."""
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
    stored_bytes: int  # the predicted size of the dump file: what room is planned for
    basis: str  # history | estimate | unknown
    scratch_bytes: int = 0  # a scratch copy the engine makes on the same disk while it runs
    # the smallest size the dump plausibly has: when only this fits, the dump starts and the
    # in-flight checks decide (they stop it at the reserve and remove the partial)
    least_bytes: int = 0


def predict(
    history: Sequence[int],
    size_estimate: int | None,
    compression: str,
    first_dump_ratio: tuple[float, float] | None = None,
) -> Prediction:
    """The next dump's size: the largest of the last few stored sizes times a growth margin (at least
    the newest size), or with no history the server's size estimate times the engine's measured
    first-dump ratio (lowest, highest), else a pessimistic compression ratio."""
    recent = [size for size in history[-PREDICTION_HISTORY:] if size > 0]
    if recent:
        return Prediction(math.ceil(max(recent) * GROWTH_MARGIN), "history", least_bytes=recent[-1])
    if size_estimate is not None and size_estimate > 0:
        fallback = COMPRESSION_RATIO.get(compression, 1.0)
        low, high = first_dump_ratio or (fallback, fallback)
        return Prediction(
            max(UNKNOWN_PREDICTION, math.ceil(size_estimate * high)),
            "estimate",
            least_bytes=max(UNKNOWN_PREDICTION, math.ceil(size_estimate * low)),
        )
    return Prediction(UNKNOWN_PREDICTION, "unknown", least_bytes=UNKNOWN_PREDICTION)


# --------------------------------------------------------------------------------------------------
# Refusal and reporting


class InsufficientSpaceError(DumpError):
    """A dump was refused before it started: it cannot fit the budget without going below keep_min."""

    def __init__(self, message: str, figures: dict[str, int | None]) -> None:
        super().__init__(message, reason="insufficient_space")
        self.figures = figures


@dataclass(frozen=True, slots=True)
class Shortage:
    """Why a dump cannot start: what it needs at the least, and what the budget can give it."""

    what: str  # "the first backup of main/shop"
    prediction: Prediction
    least_need_bytes: int  # the smallest plausible dump, its scratch copy and the check slack
    freeable_bytes: int  # what the budget may delete
    protected_backups: int  # backups kept by keep_min or a pin
    protected_bytes: int
    keep_min: int


def explain_shortage(shortage: Shortage, figures: DiskFigures, budget: Budget, storage: StorageConfig) -> str:
    """One message that says why the dump cannot start and exactly what to change, by how much
    (which setting, to what value); it reads right with no backups at all."""
    prediction, need, freeable = shortage.prediction, shortage.least_need_bytes, shortage.freeable_bytes
    room_free = figures.free_bytes + freeable - budget.reserve_bytes
    room, limit = (
        room_free,
        f"{format_size(figures.free_bytes)} free - storage.reserve {format_size(budget.reserve_bytes)}",
    )
    if freeable:
        limit += f" + {format_size(freeable)} of old backups it may delete"
    room_usage = None if budget.max_usage_bytes is None else budget.max_usage_bytes - figures.usage_bytes + freeable
    if budget.max_usage_bytes is not None and room_usage is not None and room_usage < room:
        kept = figures.usage_bytes - freeable
        room, limit = room_usage, f"storage.max_usage {format_size(budget.max_usage_bytes)} - {format_size(kept)} kept"
    likely = "predicted" if prediction.basis == "history" else "likely up to"
    needs = f"at least {format_size(need)} (the dump {format_size(prediction.least_bytes)}, {likely} "
    needs += f"{format_size(prediction.stored_bytes)}"
    if prediction.scratch_bytes:
        needs += f"; its scratch copy {format_size(prediction.scratch_bytes)}"
    slack = need - prediction.least_bytes - prediction.scratch_bytes
    needs += f"; {format_size(slack)} between free-space checks)"
    backups = ""
    if shortage.protected_backups == 0 and freeable == 0:
        backups = "; there are no backups to delete yet"
    elif shortage.protected_backups:
        backups = (
            f"; {shortage.protected_backups} backup(s) ({format_size(shortage.protected_bytes)}) are kept by "
            f"retention.keep_min = {shortage.keep_min} or a pin"
        )
    needed = []  # every limit that binds must change; within one, any of its remedies will do
    if room_free < need:
        remedies = []
        highest_reserve = figures.free_bytes + freeable - need
        if highest_reserve >= MIB:
            remedies.append(f'set storage.reserve = "{highest_reserve // MIB}MiB" or less (now "{storage.reserve}")')
        remedies.append(f"free {format_size(need - room_free)} more on the filesystem holding {storage.path}")
        needed.append(" or ".join(remedies))
    if room_usage is not None and room_usage < need:
        lowest = figures.usage_bytes - freeable + need
        needed.append(f'set storage.max_usage = "{-(-lowest // MIB)}MiB" or more (now "{storage.max_usage}")')
    advice = "; and ".join(needed)
    if shortage.protected_bytes and shortage.protected_bytes >= need - room:
        advice += f"; or lower retention.keep_min (now {shortage.keep_min}) or unpin a backup"
    return (
        f"not enough disk space for {shortage.what}: it needs {needs}, but {format_size(max(0, room))} can be "
        f"used ({limit}){backups}. To let it run: {advice}"
    )


def headroom(figures: DiskFigures, budget: Budget) -> int:
    """Bytes that still fit before a limit is reached; negative when the disk is over budget."""
    room = figures.free_bytes - budget.reserve_bytes
    if budget.max_usage_bytes is not None:
        room = min(room, budget.max_usage_bytes - figures.usage_bytes)
    return room
