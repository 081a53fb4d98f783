"""The snapshot ledger read from disk: the journal's lines and the backups on disk, for `list
--deleted`, `status`, `doctor` and `restore --at` (the decisions are agent/snapshots.py's).

The journal is untrusted input. Lines that do not decode, or whose path is not one the agent
writes, are left out. When its hash chain is broken at line N, every file with a line from N-1 on
(line N-1 is the one that may have been edited) is marked unverified: it is still shown (the
platform may well hold it), with the break named, because an edited journal can invent or hide
files and only the platform knows. Skips after that point prove nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from agent import journal, prune, retention, snapshots
from agent.budget import Budget, DiskFigures, measure, resolve_budget
from agent.config import Config, RetentionPolicy, SnapshotsConfig
from agent.journal import Event
from agent.snapshots import FileHoldings, Platform
from agent.units import format_duration, format_size, format_time

_LEDGER_EVENTS = {Event.CREATED: snapshots.CREATED, Event.DELETED: snapshots.DELETED}


@dataclass(frozen=True, slots=True)
class Ledger:
    storage: Path
    platform: Platform
    now: datetime
    files: list[FileHoldings]
    first_break: int | None  # the journal's first line where the chain breaks (or does not decode)
    vanished: tuple[str, ...] = ()  # published, never journaled as deleted, and gone: holdings unknown
    proofs: dict[str, list[datetime]] = field(default_factory=dict)  # skip_unchanged: skip times by backup

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.platform.timezone)

    def absolute(self, relative: str) -> Path:
        return self.storage / relative


def platform_of(settings: SnapshotsConfig) -> Platform:
    return Platform(settings.times, settings.timezone, settings.keep)


def load(config: Config, now: datetime | None = None) -> Ledger | None:
    """The ledger of every file the journal says the agent published; None without `[snapshots]`."""
    if config.snapshots is None or not config.snapshots.times:
        return None
    now = now or datetime.now(UTC)
    storage = config.storage.path
    numbered, problems = journal.read_numbered_entries(storage)
    first_break = min((problem.line_number for problem in problems), default=None)
    # a chain broken at line N means line N-1 was edited (or lines removed before N): trust neither
    unverified_from = first_break - 1 if first_break is not None else None
    events: list[snapshots.LedgerEvent] = []
    proofs: dict[str, list[datetime]] = {}
    for number, entry in numbered:
        kind = _LEDGER_EVENTS.get(entry.event)
        at = _instant(entry.at)
        if at is None or entry.path is None:
            continue
        verified = unverified_from is None or number < unverified_from
        if entry.event == Event.SKIPPED and verified and snapshots.safe_relative_path(entry.path) is not None:
            proofs.setdefault(entry.path, []).append(at)
        if kind is None:
            continue
        events.append(snapshots.LedgerEvent(kind, entry.path, at, number, verified, entry.sha256, entry.bytes))
    platform = platform_of(config.snapshots)
    files: list[FileHoldings] = []
    vanished: list[str] = []
    for lifetime in snapshots.lifetimes(events):
        if lifetime.deleted_at is None and not os.path.lexists(storage / lifetime.path):
            # deleted by hand (or a retire without --delete, then by hand): when is unknown, so no claim
            vanished.append(lifetime.path)
            files.append(FileHoldings(lifetime, ()))
        else:
            files.append(snapshots.holdings_of(lifetime, platform, now))
    return Ledger(storage, platform, now, files, first_break, tuple(vanished), proofs)


def _instant(text: str) -> datetime | None:
    with contextlib.suppress(ValueError):
        moment = datetime.fromisoformat(text)
        return moment.astimezone(UTC) if moment.tzinfo is not None else None
    return None


def local_text(moment: datetime, zone: ZoneInfo) -> str:
    """A snapshot time as the platform shows it: local wall clock and zone, e.g. 2026-12-01 06:00 CET."""
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")


def vanished_text(ledger: Ledger) -> str | None:
    if not ledger.vanished:
        return None
    return (
        f"{len(ledger.vanished)} dump(s) the journal lists are gone without a deletion line (deleted by hand?), "
        f"e.g. {ledger.absolute(ledger.vanished[0])}: which snapshots hold them is unknown"
    )


def break_text(ledger: Ledger) -> str | None:
    if ledger.first_break is None:
        return None
    return (
        f"the journal's hash chain breaks at line {ledger.first_break} "
        f"({journal.journal_path(ledger.storage)}): what it says from line {max(1, ledger.first_break - 1)} "
        "on is unverified"
    )


def held_sentence(ledger: Ledger, entry: FileHoldings) -> str:
    """ "deleted locally on …, held by the snapshot of … until …: ask for PATH" for one deleted file."""
    latest = entry.latest
    assert latest is not None and entry.lifetime.deleted_at is not None
    zone = ledger.zone
    others = len(entry.holdings) - 1
    more = f" (and {others} earlier snapshot{'s' if others != 1 else ''})" if others else ""
    unverified = "" if entry.lifetime.verified else " [unverified: the journal was edited]"
    return (
        f"deleted locally on {local_text(entry.lifetime.deleted_at, zone)}, held by the snapshot of "
        f"{local_text(latest.snapshot, zone)} until {local_text(latest.until, zone)}{more}: "
        f"ask for {ledger.absolute(entry.lifetime.path)}{unverified}"
    )


def deleted_rows(ledger: Ledger, job: str | None = None) -> list[dict[str, Any]]:
    """Deleted files the platform still holds, as JSON-able rows (`list --deleted`)."""
    rows = []
    for entry in snapshots.deleted_but_held(ledger.files):
        lifetime = entry.lifetime
        if job is not None and lifetime.job != job:
            continue
        rows.append(
            {
                "job": lifetime.job,
                "folder": lifetime.folder,
                "created_at": _iso(lifetime.created_at),
                "deleted_at": _iso(lifetime.deleted_at),
                "path": str(ledger.absolute(lifetime.path)),
                "stored_bytes": lifetime.bytes,
                "sha256": lifetime.sha256,
                "verified": lifetime.verified,
                "snapshots": [
                    {"taken_at": _iso(holding.snapshot), "kept_until": _iso(holding.until)}
                    for holding in entry.holdings
                ],
                "text": held_sentence(ledger, entry),
            }
        )
    return rows


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat(timespec="seconds") if moment is not None else None


def platform_copy_message(ledger: Ledger, job: str, folders: Collection[str], label: str, at: datetime) -> str | None:
    """What `restore --at` says when no local backup is old enough but a snapshot holds one."""
    found = snapshots.platform_copy_at(ledger.files, job, folders, at)
    if found is None:
        return None
    return (
        f"no local backup of {label!r} in job {job!r} at or before {format_time(at)}; the platform still has "
        f"the one of {local_text(found.lifetime.created_at, ledger.zone)}: {held_sentence(ledger, found)}"
    )


# --------------------------------------------------------------------------------------------------
# Restore points and retention sized to the platform


def series_points(ledger: Ledger, job: str, folder: str) -> dict[str, Any]:
    """How many kept snapshots hold a dump of the series, and how old the newest dump in each is."""
    points = snapshots.restore_points(ledger.files, ledger.platform, ledger.now, job, folder, proofs=ledger.proofs)
    ages = [point.age for point in points if point.age is not None]
    current = [point.current_age for point in points if point.current_age is not None]
    return {
        "snapshots_kept": len(points),
        "restore_points": len(ages),
        "newest_dump_age_min_seconds": min(ages).total_seconds() if ages else None,
        "newest_dump_age_max_seconds": max(ages).total_seconds() if ages else None,
        # with skip_unchanged: how old the database state in each snapshot was at most (a skip proves a dump current)
        "current_age_max_seconds": max(current).total_seconds() if current else None,
        "oldest_restorable": _iso(min((p.newest.created_at for p in points if p.newest), default=None)),
        "points": [
            {
                "snapshot": _iso(point.snapshot),
                "newest_dump": str(ledger.absolute(point.newest.path)) if point.newest else None,
                "newest_dump_age_seconds": point.age.total_seconds() if point.age is not None else None,
                "proven_current_at": _iso(point.proven_at),
            }
            for point in points
        ],
    }


def _plan_kept(series: Sequence[retention.Series], now: datetime) -> dict[str, retention.Backup]:
    """What the policies alone keep (no budget pressure), by key."""
    plan = retention.plan(series, DiskFigures(1, 1, 0), Budget(0, None), now=now)
    return {decision.backup.key: decision.backup for decision in plan.decisions if not decision.delete}


def sizing(config: Config, ledger: Ledger) -> dict[str, Any]:
    """Per job: restore points per series, the smallest local policy with the same protection, what it frees."""
    inventory = prune.take_inventory(config)
    figures = measure(config.storage)
    budget = resolve_budget(config.storage, figures.total_bytes)
    budget_bytes = (
        budget.max_usage_bytes if budget.max_usage_bytes is not None else figures.total_bytes - budget.reserve_bytes
    )
    jobs: list[dict[str, Any]] = []
    total_freed = 0
    for name, job in config.jobs.items():
        own = [one for one in inventory.series if one.name.split("/", 1)[0] == name]
        reduced_policy = snapshots.platform_sized_policy(job.retention, ledger.platform, ledger.now)
        kept_now = _plan_kept(own, ledger.now)
        kept_reduced = _plan_kept([replace(one, policy=reduced_policy) for one in own], ledger.now)
        freed = [backup for key, backup in kept_now.items() if key not in kept_reduced]
        freed_bytes = sum(backup.size_bytes for backup in freed)
        total_freed += freed_bytes
        folders = sorted({one.name.split("/", 1)[1] for one in own} | _ledger_folders(ledger, name))
        jobs.append(
            {
                "job": name,
                "retention": _policy_dict(job.retention),
                "platform_sized_retention": _policy_dict(reduced_policy),
                "changes": snapshots.policy_changes(job.retention, reduced_policy),
                "kept_files": len(kept_now),
                "kept_bytes": sum(backup.size_bytes for backup in kept_now.values()),
                "freed_files": len(freed),
                "freed_bytes": freed_bytes,
                "series": {folder: series_points(ledger, name, folder) for folder in folders},
            }
        )
    return {
        "snapshot_times": [moment.strftime("%H:%M") for moment in ledger.platform.times],
        "timezone": ledger.platform.timezone,
        "keep_seconds": ledger.platform.keep.total_seconds(),
        "snapshots_kept": len(snapshots.kept_snapshots(ledger.platform, ledger.now)),
        "longest_gap_seconds": snapshots.longest_snapshot_gap(ledger.platform, ledger.now).total_seconds(),
        "budget_bytes": budget_bytes,
        "freed_bytes": total_freed,
        "journal_unverified_from_line": ledger.first_break,
        "jobs": jobs,
    }


def _ledger_folders(ledger: Ledger, job: str) -> set[str]:
    return {entry.lifetime.folder for entry in ledger.files if entry.lifetime.job == job and entry.holdings}


def _policy_dict(policy: RetentionPolicy) -> dict[str, Any]:
    described: dict[str, Any] = {
        key: getattr(policy, key)
        for key in ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")
        if getattr(policy, key) is not None
    }
    described["keep_min"] = policy.keep_min
    if policy.max_age is not None:
        described["max_age"] = format_duration(policy.max_age)
    return described


def _age(seconds: float | None) -> str:
    """An age to the nearest minute, "6h30m"."""
    return "?" if seconds is None else format_duration(timedelta(minutes=round(seconds / 60)))


def _keep_text(seconds: float) -> str:
    """The platform's retention as its users say it: "14d"."""
    keep = timedelta(seconds=seconds)
    return f"{keep.days}d" if keep == timedelta(days=keep.days) else format_duration(keep)


def sizing_lines(sized: dict[str, Any]) -> list[str]:
    """The sizing for people: one line for the platform, then per job and series."""
    times = ", ".join(sized["snapshot_times"])
    keep = _keep_text(sized["keep_seconds"])
    lines = [
        f"platform: snapshots at {times} ({sized['timezone']}), each kept {keep}: "
        f"{sized['snapshots_kept']} restore points now"
    ]
    for job in sized["jobs"]:
        for folder, points in job["series"].items():
            if points["restore_points"]:
                ages = (
                    f"the newest dump in each {_age(points['newest_dump_age_min_seconds'])}"
                    f" to {_age(points['newest_dump_age_max_seconds'])} old"
                )
                if points["current_age_max_seconds"] != points["newest_dump_age_max_seconds"]:
                    ages += f"; proven current by skip_unchanged to within {_age(points['current_age_max_seconds'])}"
            else:
                lines.append(f"platform: {job['job']}/{folder}: no snapshot holds a dump yet")
                continue
            lines.append(
                f"platform: {job['job']}/{folder}: {points['restore_points']} of {points['snapshots_kept']} "
                f"snapshots hold a dump ({ages})"
            )
        lines.append(_retention_line(job, sized["budget_bytes"]))
    return lines


def _retention_line(job: dict[str, Any], budget_bytes: int) -> str:
    if not job["kept_files"]:
        return f"platform: {job['job']}: no dumps on disk yet to size local retention against"
    if not job["changes"]:
        return f"platform: {job['job']}: local retention is already as small as the same protection allows"
    changed = ", ".join(f"{key} = {value}" for key, value in job["changes"].items())
    if not job["freed_files"]:
        return (
            f"platform: {job['job']}: the same protection with {changed} in [retention] "
            f"(the platform's snapshots hold those dumps): frees nothing yet ({job['kept_files']} file(s) kept)"
        )
    share = f", {_share(job['freed_bytes'], budget_bytes)} of the budget" if budget_bytes > 0 else ""
    return (
        f"platform: {job['job']}: the same protection with {changed} in [retention] "
        f"(the platform's snapshots hold those dumps): frees {format_size(job['freed_bytes'])} now "
        f"({job['freed_files']} of the {job['kept_files']} files it keeps{share})"
    )


def _share(part: int, whole: int) -> str:
    percent = 100 * part / whole
    return f"{percent:.1f}%" if percent >= 0.1 or part == 0 else "under 0.1%"


def status_lines(ledger: Ledger, job: str, folder: str, shown: int = 3) -> list[str]:
    """For `status`: the newest deleted dumps of a series the platform still holds, one sentence each."""
    held = [
        entry
        for entry in snapshots.deleted_but_held(ledger.files)
        if entry.lifetime.job == job and entry.lifetime.folder == folder
    ]
    lines = [held_sentence(ledger, entry) for entry in held[-shown:][::-1]]
    if len(held) > shown:
        lines.append(f"… and {len(held) - shown} older: `backup-agent list --deleted --job {job}`")
    return lines
