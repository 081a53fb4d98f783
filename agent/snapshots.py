"""The snapshot ledger and retention sized to the platform (pure: journal events, times and `now` in).

A platform snapshot taken at S holds every file that was on disk at S, and keeps it until S plus
the platform's retention. From the journal the agent knows when each file was published (its
`created` line) and deleted (its `deleted` line), so it knows which snapshots hold it, without
asking the platform. Claims are only made where the journal makes them certain: the `created`
line is written after the file is published and the `deleted` line before it goes, with times cut
to the second, so a snapshot counts when it is at least a second after the `created` line and no
later than the `deleted` line. A file published and deleted between two snapshots is held by none.

Snapshot times are local wall-clock times in the `[snapshots]` time zone, read with the schedule's
rules: a time that happens twice (clocks go back) is one snapshot, at its first occurrence; a time
that does not exist (clocks go forward) is the snapshot at the jump.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from agent.config import RETENTION_COUNTS, RetentionPolicy
from agent.naming import ParsedName, parse_backup_filename
from agent.schedule import local_to_instant, wall_clock

CREATED = "created"
DELETED = "deleted"
SKIPPED = "skipped"  # skip_unchanged: the line's path, the backup relied on, still held the database then
JOURNAL_TIME_STEP = timedelta(seconds=1)  # journal times are cut to the second

# Each keep_* rule's period, at its longest (a month of 31 days, a year of 366); keep_last has none.
RULE_PERIODS: dict[str, timedelta] = {
    "keep_hourly": timedelta(hours=1),
    "keep_daily": timedelta(days=1),
    "keep_weekly": timedelta(weeks=1),
    "keep_monthly": timedelta(days=31),
    "keep_yearly": timedelta(days=366),
}


@dataclass(frozen=True, slots=True)
class Platform:
    """The platform's snapshots: local times of day, their time zone, how long each is kept."""

    times: tuple[time, ...]
    timezone: str
    keep: timedelta


@dataclass(frozen=True, slots=True)
class LedgerEvent:
    """One `created` or `deleted` journal line, as the ledger needs it; `verified` when the hash
    chain is intact from the journal's first line to this one."""

    kind: str  # CREATED | DELETED
    path: str  # relative to the storage root
    at: datetime
    line: int
    verified: bool = True
    sha256: str | None = None
    bytes: int | None = None


@dataclass(frozen=True, slots=True)
class Lifetime:
    """One published file from its `created` line to its `deleted` line (None: still on disk)."""

    path: str
    job: str
    folder: str
    created_at: datetime  # the dump's own time, from its file name
    published_at: datetime
    deleted_at: datetime | None
    verified: bool
    sha256: str | None = None
    bytes: int | None = None

    @property
    def first_holding_snapshot(self) -> datetime:
        """The earliest instant a snapshot certainly holds the file."""
        return self.published_at + JOURNAL_TIME_STEP


@dataclass(frozen=True, slots=True)
class Holding:
    snapshot: datetime
    until: datetime


@dataclass(frozen=True, slots=True)
class FileHoldings:
    """Which snapshots taken and still kept at `now` hold a file; the newest one is listed last."""

    lifetime: Lifetime
    holdings: tuple[Holding, ...]

    @property
    def latest(self) -> Holding | None:
        return self.holdings[-1] if self.holdings else None


def safe_relative_path(text: str) -> tuple[str, str, ParsedName] | None:
    """(job, folder, parsed file name) of a journal path the agent could have written, else None.

    Journal lines are untrusted: an absolute path, `..`, or a name the agent never gives is not a
    backup of this storage and never becomes a path to ask the platform for.
    """
    if not text or text.startswith("/") or "\\" in text or "\x00" in text:
        return None
    parts = text.split("/")
    if len(parts) != 3 or any(part in ("", ".", "..") for part in parts):
        return None
    job, folder, name = parts
    parsed = parse_backup_filename(name)
    if parsed is None or parsed.job != job:
        return None
    return job, folder, parsed


def lifetimes(events: Iterable[LedgerEvent]) -> list[Lifetime]:
    """Pair each `created` line with the next `deleted` line of the same path, in journal order.

    A `deleted` line without an open `created` (an incomplete file, a line before the journal
    began) publishes nothing; a second `created` for a path still open is ignored (the agent never
    publishes over a file). Unsafe paths are skipped (see `safe_relative_path`).
    """
    open_files: dict[str, tuple[LedgerEvent, str, str, datetime]] = {}
    closed: list[Lifetime] = []
    for event in events:
        if event.kind == CREATED:
            if event.path in open_files:
                continue
            parts = safe_relative_path(event.path)
            if parts is not None:
                open_files[event.path] = (event, parts[0], parts[1], parts[2].created_at)
        elif event.kind == DELETED and event.path in open_files:
            opened = open_files.pop(event.path)
            closed.append(_lifetime(*opened, deleted=event))
    still_open = [_lifetime(*opened, deleted=None) for opened in open_files.values()]
    return sorted([*closed, *still_open], key=lambda item: (item.published_at, item.path))


def _lifetime(
    created: LedgerEvent, job: str, folder: str, created_at: datetime, *, deleted: LedgerEvent | None
) -> Lifetime:
    return Lifetime(
        path=created.path,
        job=job,
        folder=folder,
        created_at=created_at,
        published_at=created.at,
        deleted_at=deleted.at if deleted is not None else None,
        verified=created.verified and (deleted is None or deleted.verified),
        sha256=created.sha256,
        bytes=created.bytes,
    )


def snapshot_instants(platform: Platform, start: datetime, end: datetime) -> list[datetime]:
    """Every snapshot instant S with start <= S <= end, ascending, in UTC."""
    if not platform.times or end < start:
        return []
    zone = ZoneInfo(platform.timezone)
    day = wall_clock(start, zone).date() - timedelta(days=1)
    last_day = wall_clock(end, zone).date() + timedelta(days=1)
    instants: list[datetime] = []
    while day <= last_day:
        for moment in platform.times:
            instant = local_to_instant(datetime.combine(day, moment), zone)
            if start <= instant <= end and (not instants or instant > instants[-1]):
                instants.append(instant)
        day += timedelta(days=1)
    return instants


def kept_snapshots(platform: Platform, now: datetime) -> list[datetime]:
    """The snapshots taken by `now` that the platform still keeps: the platform's restore points."""
    return [
        instant for instant in snapshot_instants(platform, now - platform.keep, now) if instant + platform.keep > now
    ]


def holdings_of(lifetime: Lifetime, platform: Platform, now: datetime) -> FileHoldings:
    """The kept snapshots that hold `lifetime`'s file, each with the instant the platform drops it."""
    end = now if lifetime.deleted_at is None else min(now, lifetime.deleted_at)
    start = max(lifetime.first_holding_snapshot, now - platform.keep)
    held = tuple(
        Holding(instant, instant + platform.keep)
        for instant in snapshot_instants(platform, start, end)
        if instant + platform.keep > now
    )
    return FileHoldings(lifetime, held)


def ledger(events: Iterable[LedgerEvent], platform: Platform, now: datetime) -> list[FileHoldings]:
    """Every file the journal says was published, with the kept snapshots that hold it."""
    return [holdings_of(lifetime, platform, now) for lifetime in lifetimes(events)]


def deleted_but_held(entries: Iterable[FileHoldings]) -> list[FileHoldings]:
    """Files deleted locally that some kept snapshot still holds, oldest dump first."""
    return sorted(
        (entry for entry in entries if entry.lifetime.deleted_at is not None and entry.holdings),
        key=lambda entry: (entry.lifetime.created_at, entry.lifetime.path),
    )


def platform_copy_at(
    entries: Iterable[FileHoldings], job: str, folders: Collection[str], at: datetime
) -> FileHoldings | None:
    """The newest dump of a series created at or before `at` that is deleted locally and held by a snapshot."""
    candidates = [
        entry
        for entry in deleted_but_held(entries)
        if entry.lifetime.job == job and entry.lifetime.folder in folders and entry.lifetime.created_at <= at
    ]
    return max(candidates, key=lambda entry: (entry.lifetime.created_at, entry.lifetime.path), default=None)


# --------------------------------------------------------------------------------------------------
# Restore points and retention sized to the platform


@dataclass(frozen=True, slots=True)
class RestorePoint:
    """One kept snapshot and the newest dump of a series inside it (None: it holds none); `proven_at`,
    the last skip_unchanged check before the snapshot that found the database still as in that dump."""

    snapshot: datetime
    newest: Lifetime | None
    proven_at: datetime | None = None

    @property
    def age(self) -> timedelta | None:
        """How old the newest dump was when the snapshot was taken."""
        return None if self.newest is None else self.snapshot - self.newest.created_at

    @property
    def current_age(self) -> timedelta | None:
        """How old the database state in the snapshot was: the dump's age, or less after a skip proved it current."""
        if self.newest is None:
            return None
        since = max(self.newest.created_at, self.proven_at) if self.proven_at else self.newest.created_at
        return self.snapshot - since


def restore_points(
    entries: Sequence[FileHoldings],
    platform: Platform,
    now: datetime,
    job: str,
    folder: str,
    *,
    proofs: Mapping[str, Sequence[datetime]] | None = None,
) -> list[RestorePoint]:
    """For each kept snapshot, the newest dump of the series `job`/`folder` it holds, and the last
    skip (`proofs`: times of `skipped` lines by the path they rely on) that proved it current."""
    points: list[RestorePoint] = []
    own = [entry for entry in entries if entry.lifetime.job == job and entry.lifetime.folder == folder]
    held_by: dict[datetime, list[Lifetime]] = {}
    for entry in own:
        for holding in entry.holdings:
            held_by.setdefault(holding.snapshot, []).append(entry.lifetime)
    for snapshot in kept_snapshots(platform, now):
        inside = held_by.get(snapshot, [])
        newest = max(inside, key=lambda item: (item.created_at, item.path), default=None)
        proven = None
        if newest is not None and proofs:
            before = [moment for moment in proofs.get(newest.path, ()) if moment + JOURNAL_TIME_STEP <= snapshot]
            proven = max(before, default=None)
        points.append(RestorePoint(snapshot, newest, proven))
    return points


def longest_snapshot_gap(platform: Platform, now: datetime) -> timedelta:
    """The longest time between two consecutive snapshots over the platform's retention (DST included)."""
    instants = snapshot_instants(platform, now - platform.keep - timedelta(days=2), now + timedelta(days=2))
    gaps = [later - earlier for earlier, later in itertools.pairwise(instants)]
    return max(gaps, default=timedelta(days=1))


def platform_sized_policy(policy: RetentionPolicy, platform: Platform, now: datetime) -> RetentionPolicy:
    """The smallest local policy with the same protection, given the platform's snapshots.

    A keep_* rule is dropped when the platform alone gives what it promises: its period is at least
    the longest gap between snapshots (each period holds a snapshot, and each snapshot holds the
    newest dump, which `keep_min` never deletes) and all its periods, plus one gap for the first
    snapshot to catch a dump, fall within the platform's retention. Rules reaching further back are
    kept whole (a rule cannot skip its first periods); keep_last, keep_min, max_age stay as they are.
    """
    gap = longest_snapshot_gap(platform, now)
    changes: dict[str, int] = {}
    for rule, period in RULE_PERIODS.items():
        count = getattr(policy, rule)
        if not count:
            continue
        if period >= gap and count * period + gap <= platform.keep:
            changes[rule] = 0
    if not changes:
        return policy
    reduced = replace(policy, **changes)  # type: ignore[arg-type]  # keys are RetentionPolicy's count fields
    if not any((getattr(reduced, rule) or 0) > 0 for rule in RETENTION_COUNTS):
        # with every count at 0 retention keeps everything ("no keep_* rule"): keep_last = 1 keeps
        # nothing beyond the keep_min newest, which is what the platform leaves to local disk
        reduced = replace(reduced, keep_last=1)
    return reduced


def policy_changes(policy: RetentionPolicy, reduced: RetentionPolicy) -> dict[str, int | None]:
    """The keep_* counts that differ, as `key: new value`."""
    return {
        rule: getattr(reduced, rule) for rule in RETENTION_COUNTS if getattr(policy, rule) != getattr(reduced, rule)
    }
