"""`backup-agent status`: are my backups OK? One offline look at disk, journal and the agent's records.

Per job and database: the newest good backup (age, size, path), the last failure, the next run,
the last drill and the newest drilled backup, the predicted next size; and the storage against
its budget. Nothing here connects to a database, so status is fast and works while servers are
down. `collect` builds the whole picture as JSON-able data; `render_text` and the metrics file
are views of it. The freshness rule (`--check`) is the pure function `freshness_problem`.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent import __version__, catalog, journal
from agent.activity import daemon_status, runs_in_progress
from agent.budget import headroom, measure, predict, resolve_budget
from agent.config import Config, JobConfig
from agent.journal import Event, JournalEntry
from agent.naming import parse_backup_filename, series_label
from agent.outcome import Reason, Status
from agent.records import DatabaseRecord, JobHistory, JobState, read_history, read_state
from agent.schedule import (
    INTERVAL,
    Plan,
    first_fire_at_or_after,
    next_fire_after,
    plan_for,
    previous_fire_at_or_before,
)
from agent.units import format_duration, format_size, format_time

DEFAULT_AGE_HORIZON = timedelta(days=7)
_MAX_FIRES_LOOKED_AT = 5000  # a cron firing every minute: about three and a half days of it


# --------------------------------------------------------------------------------------------------
# Pure rules


def default_max_backup_age(plan: Plan, now: datetime) -> timedelta:
    """Twice the longest gap between two consecutive scheduled runs over the coming week.

    The gap before the first coming run counts too, and at least two runs are looked at, so a
    monthly cron or "weekdays only" schedule gets an allowance that covers its longest pause.
    """
    if plan.kind == INTERVAL and plan.every is not None:
        return 2 * plan.every
    fires: list[datetime] = []
    previous = previous_fire_at_or_before(plan, now)
    if previous is not None:
        fires.append(previous)
    moment = first_fire_at_or_after(plan, now)
    horizon = now + DEFAULT_AGE_HORIZON
    while (len(fires) < 2 or moment <= horizon) and len(fires) < _MAX_FIRES_LOOKED_AT:
        fires.append(moment)
        moment = next_fire_after(plan, moment)
    gaps = [later - earlier for earlier, later in itertools.pairwise(fires)]
    return 2 * max(gaps, default=timedelta(days=1))


def freshness_problem(newest_good: datetime | None, max_age: timedelta, now: datetime) -> str | None:
    """Why a database fails `status --check`, or None when its newest good backup is young enough."""
    if newest_good is None:
        return "no good backup yet"
    age = now - newest_good
    if age > max_age:
        return f"newest good backup is {_age_text(age)} old (max_backup_age {format_duration(max_age)})"
    return None


def _age_text(age: timedelta) -> str:
    """A rounded human age: "45s", "3m", "5h10m", "2d3h"."""
    seconds = max(0, int(age.total_seconds()))
    if seconds < 3600:
        return format_duration(timedelta(seconds=seconds if seconds < 60 else seconds // 60 * 60))
    if seconds < 86400:
        return format_duration(timedelta(minutes=seconds // 60))
    return format_duration(timedelta(hours=seconds // 3600))


# --------------------------------------------------------------------------------------------------
# The filesystem under a path


@dataclass(frozen=True, slots=True)
class Filesystem:
    mount_point: str
    type: str
    source: str


def filesystem_of(path: Path) -> Filesystem | None:
    """The mount holding `path` (its nearest existing ancestor), from /proc/self/mountinfo."""
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    resolved = str(probe.resolve())
    best: Filesystem | None = None
    try:
        lines = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        before, _, after = line.partition(" - ")
        parts, tail = before.split(), after.split()
        if len(parts) < 5 or len(tail) < 2:
            continue
        mount_point = parts[4].replace("\\040", " ")
        inside = resolved == mount_point or resolved.startswith(mount_point.rstrip("/") + "/")
        if inside and (best is None or len(mount_point) >= len(best.mount_point)):
            best = Filesystem(mount_point, tail[0], tail[1])
    return best


# --------------------------------------------------------------------------------------------------
# Collecting


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat(timespec="seconds") if moment is not None else None


def _parse_time(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    with contextlib.suppress(ValueError):
        moment = datetime.fromisoformat(text)
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return None


def _created(record: catalog.BackupRecord) -> datetime | None:
    if record.summary is not None:
        started = _parse_time(record.summary.started_at)
        if started is not None:
            return started
    return record.created_at


def schedule_text(job: JobConfig) -> str:
    schedule = job.schedule
    if schedule.kind == "cron":
        return f"cron {schedule.cron} ({job.timezone})"
    if schedule.kind == "interval" and schedule.every is not None:
        return f"every {format_duration(schedule.every)}"
    return schedule.kind


def collect(config: Config, now: datetime | None = None, *, platform: bool = True) -> dict[str, Any]:
    """The whole status as JSON-able data; `ok` is False when some checked database is not fresh.

    `platform=False` leaves out the snapshot ledger (it reads the whole journal): the metrics file,
    rewritten after every run, does without it."""
    now = now or datetime.now(UTC)
    storage = config.storage.path
    records = [record for record in catalog.scan(storage, indexed=True) if record.job in config.jobs]
    drills = journal.read_events(storage, Event.DRILL)
    skips = journal.read_events(storage, Event.SKIPPED)  # skip_unchanged: fresh without a dump
    states = read_state(storage)
    histories = read_history(storage)
    host = socket.gethostname()
    daemon = daemon_status(storage)
    jobs = []
    problems: list[str] = []
    for name, job in config.jobs.items():
        state = states.get(name)
        plan = plan_for(job, config.snapshots, host, state.recent_durations if state else ())
        described = _job_status(
            config=config,
            job=job,
            plan=plan if daemon["running"] else None,
            checked_plan=plan,
            state=state,
            history=histories.get(name),
            records=records,
            drills=drills,
            now=now,
            skips=skips,
        )
        for database in described["databases"]:
            if database["problem"]:
                problems.append(f"{name}/{_label(database)}: {database['problem']}")
        if described["checked"] and not described["databases"]:
            problems.append(f"{name}: no good backup yet")
        drill = described["last_drill"]
        if (
            drill is not None
            and drill["status"] == "failed"
            and not any(database["last_drill"] for database in described["databases"] if database["problem"])
        ):
            problems.append(f"{name}: the last drill failed ({drill['reason'] or 'failed'}): {drill['message'] or ''}")
        jobs.append(described)
    storage_figures = storage_status(config)
    if storage_figures["over_budget"]:
        problems.append(
            f"storage is over budget by {format_size(-storage_figures['headroom_bytes'])}: "
            "new dumps will be refused (see `backup-agent prune --dry-run`)"
        )
    return {
        "ok": not problems,
        "at": _iso(now),
        "version": __version__,
        "host": host,
        "daemon": daemon,
        "running": runs_in_progress(storage, now),
        "storage": storage_figures,
        "jobs": jobs,
        "platform": platform_status(config, now) if platform else None,
        "problems": problems,
    }


def platform_status(config: Config, now: datetime) -> dict[str, Any] | None:
    """With `[snapshots]`: the snapshot ledger's view (agent/ledger.py): restore points, sizing, deleted dumps held."""
    from agent import ledger

    loaded = ledger.load(config, now)
    if loaded is None:
        return None
    sized = ledger.sizing(config, loaded)
    held: dict[str, list[str]] = {}
    for job in sized["jobs"]:
        for folder in job["series"]:
            lines = ledger.status_lines(loaded, job["job"], folder)
            if lines:
                held[f"{job['job']}/{folder}"] = lines
    return {
        **sized,
        "lines": ledger.sizing_lines(sized),
        "deleted_held": ledger.deleted_rows(loaded),
        "deleted_held_lines": held,
        "warning": ledger.break_text(loaded),
        "vanished": ledger.vanished_text(loaded),
    }


def storage_status(config: Config) -> dict[str, Any]:
    figures = measure(config.storage)
    budget = resolve_budget(config.storage, figures.total_bytes)
    filesystem = filesystem_of(config.storage.path)
    room = headroom(figures, budget)
    return {
        "path": str(config.storage.path),
        "exists": config.storage.path.is_dir(),
        "filesystem": filesystem.type if filesystem else None,
        "mount_point": filesystem.mount_point if filesystem else None,
        "total_bytes": figures.total_bytes,
        "used_bytes": figures.usage_bytes,
        "max_usage_bytes": budget.max_usage_bytes,
        "free_bytes": figures.free_bytes,
        "reserve_bytes": budget.reserve_bytes,
        "headroom_bytes": room,
        "over_budget": room < 0,
    }


def _job_status(
    *,
    config: Config,
    job: JobConfig,
    plan: Plan | None,
    checked_plan: Plan | None,
    state: JobState | None,
    history: JobHistory | None,
    records: list[catalog.BackupRecord],
    drills: list[JournalEntry],
    now: datetime,
    skips: list[JournalEntry],
) -> dict[str, Any]:
    """`plan` is None when no daemon runs (no next run to show); `checked_plan` sets the age rule either way."""
    if job.max_backup_age is not None:
        max_age: timedelta | None = job.max_backup_age
        source: str | None = "config"
    elif checked_plan is not None:
        max_age, source = default_max_backup_age(checked_plan, now), "schedule"
    else:
        max_age, source = None, None
    next_run = _parse_time(state.next_run) if state is not None else None
    if (next_run is None or next_run < now) and plan is not None:
        next_run = first_fire_at_or_after(plan, now)
    if plan is None:
        next_run = None
    own = [record for record in records if record.job == job.name]
    any_drill = any(entry.job == job.name for entry in drills)  # else no drill asks what is present
    present = (
        {f"{record.job}/{record.folder}/{record.path.name}" for record in own if record.status == catalog.GOOD}
        if any_drill
        else set()
    )
    good_by_key: dict[tuple[str, str], list[catalog.BackupRecord]] = {}  # grouped once: 200 databases, 20,000 files
    for record in own:
        if record.status == catalog.GOOD:
            good_by_key.setdefault((record.kind, record.database), []).append(record)
    keys = _database_keys(job, own, history)
    current_names = _current_names(job, history)
    databases = [
        _database_status(
            (kind, database),
            job=job,
            own=good_by_key.get((kind, database), []),
            history=history,
            drills=drills,
            skips=skips,
            present=present,
            now=now,
            max_age=max_age,
            current=kind != "database" or current_names is None or database in current_names,
            compression=config.storage.compression,
        )
        for kind, database in keys
    ]
    return {
        "job": job.name,
        "engine": job.engine,
        "schedule": schedule_text(job),
        "next_run": _iso(next_run),
        "checked": max_age is not None,
        "max_backup_age_seconds": max_age.total_seconds() if max_age is not None else None,
        "max_backup_age_source": source,
        "last_run": _last_run(state),
        "last_drill": _last_job_drill(state),
        "databases": databases,
        "in_progress": [
            {"database": record.database, "kind": record.kind, "path": str(record.path), "bytes": record.stored_bytes}
            for record in own
            if record.status == catalog.IN_PROGRESS
        ],
    }


def _last_job_drill(state: JobState | None) -> dict[str, Any] | None:
    if state is None or state.last_drill_status is None:
        return None
    return {
        "at": state.last_drill,
        "status": state.last_drill_status,
        "reason": state.last_drill_reason,
        "message": state.last_drill_message,
    }


def _last_run(state: JobState | None) -> dict[str, Any] | None:
    if state is None or state.last_status is None:
        return None
    return {
        "status": state.last_status,
        "reason": state.last_reason,
        "started_at": state.last_start,
        "duration_seconds": state.last_duration,
        "last_success": state.last_success,
        "last_failure": state.last_failure,
        "last_failure_reason": state.last_failure_reason,
        "last_failure_message": state.last_failure_message,
    }


def _database_keys(
    job: JobConfig, own: list[catalog.BackupRecord], history: JobHistory | None
) -> list[tuple[str, str]]:
    """Every (kind, database) the job is known for: configured, on disk, or in its records."""
    keys: dict[tuple[str, str], None] = {}
    for name in job.databases or ():
        keys[("database", name)] = None
    for record in own:
        if record.status == catalog.GOOD:
            keys[(record.kind, record.database)] = None
    for item in history.databases if history is not None else ():
        keys[(item.kind, item.database)] = None
    kind_order = {"globals": 0, "grants": 1, "database": 2}
    return sorted(keys, key=lambda key: (kind_order.get(key[0], 3), key[1]))


def _current_names(job: JobConfig, history: JobHistory | None) -> set[str] | None:
    """The databases the job dumps now (None: unknown, treat all as current)."""
    if job.databases is not None:
        return set(job.databases)
    if history is not None and history.last_full_run_databases is not None:
        return set(history.last_full_run_databases)
    return None


def _database_status(
    key: tuple[str, str],
    *,
    job: JobConfig,
    own: list[catalog.BackupRecord],
    history: JobHistory | None,
    drills: list[JournalEntry],
    skips: list[JournalEntry],
    present: set[str],
    now: datetime,
    max_age: timedelta | None,
    current: bool,
    compression: str,
) -> dict[str, Any]:
    kind, database = key
    good = sorted(
        (
            record
            for record in own
            if record.status == catalog.GOOD and record.kind == kind and record.database == database
        ),
        key=lambda record: (_created(record) or now, record.path.name),
    )
    newest = good[-1] if good else None
    newest_at = _created(newest) if newest is not None else None
    record = history.find(kind, database) if history is not None else None
    sizes = [item.summary.stored_bytes for item in good if item.summary is not None]
    prediction = predict(sizes, None, compression).stored_bytes if sizes else None
    checked = max_age is not None and kind == "database" and current
    skipped_at = _last_skip(skips, good)
    fresh_at = max(filter(None, (newest_at, skipped_at)), default=None)
    freshness = freshness_problem(fresh_at, max_age, now) if checked and max_age is not None else None
    drill, drilled = _drills_of(job.name, database, drills, present, now) if kind == "database" else (None, None)
    found = [freshness] if freshness else []
    if current and record is not None and record.last_status in (Status.FAILED, Status.REFUSED):
        found.append(f"last attempt {record.last_status} ({record.last_failure_reason or record.last_status})")
    if current and drill is not None and drill["result"] == "failed":
        found.append(f"drill failed ({drill['reason'] or 'failed'})")
    problem = "; ".join(found) or None
    last_failure = None
    if record is not None and record.last_failure is not None:
        failed_at = _parse_time(record.last_failure)
        last_failure = {
            "at": record.last_failure,
            "age_seconds": round((now - failed_at).total_seconds()) if failed_at else None,
            "reason": record.last_failure_reason,
            "message": record.last_failure_message,
        }
    if not current:
        state = "retired"
    elif freshness is not None:
        state = "missing" if newest is None else "stale"
    elif record is not None and record.last_status not in (None, Status.OK):
        state = str(record.last_status)
    else:
        state = "ok" if newest is not None else "none"
    return {
        "database": database,
        "kind": kind,
        "state": state,
        "current": current,
        "checked": checked,
        "problem": problem,
        "backups": len(good),
        "used_bytes": sum(item.stored_bytes for item in good),
        "last_good": _backup_summary(newest, newest_at, now),
        "last_unchanged": {"at": _iso(skipped_at), "age_seconds": round((now - skipped_at).total_seconds())}
        if skipped_at is not None
        else None,
        "last_status": record.last_status if record else None,
        "last_attempt": _last_attempt(record),
        "warnings": list(newest.summary.warnings) if newest is not None and newest.summary is not None else [],
        "last_failure": last_failure,
        "failures_total": record.failures_total if record else 0,
        "last_duration_seconds": newest.summary.duration_seconds if newest and newest.summary else None,
        "predicted_next_bytes": prediction,
        "last_drill": drill,
        "newest_drilled_backup": drilled,
    }


def _last_skip(skips: Iterable[JournalEntry], good: list[catalog.BackupRecord]) -> datetime | None:
    """When a run last found the database unchanged since one of these good backups (still on disk)."""
    relied_on = {"/".join(record.path.parts[-3:]) for record in good}
    moments = [_parse_time(entry.at) for entry in skips if entry.path in relied_on]
    return max(filter(None, moments), default=None)


def _last_attempt(record: DatabaseRecord | None) -> dict[str, Any] | None:
    """ok, failed, refused, interrupted: how the latest try at this database ended."""
    if record is None or record.last_status is None:
        return None
    failed = record.last_status in (Status.FAILED, Status.REFUSED)
    return {
        "status": record.last_status,
        "at": record.last_attempt,
        "reason": record.last_failure_reason
        if failed
        else (Reason.SHUTDOWN if record.last_status == Status.INTERRUPTED else None),
    }


def _backup_summary(
    record: catalog.BackupRecord | None, created: datetime | None, now: datetime
) -> dict[str, Any] | None:
    if record is None or record.summary is None:
        return None
    manifest = record.summary
    return {
        "path": str(record.path),
        "created_at": _iso(created),
        "age_seconds": round((now - created).total_seconds()) if created else None,
        "stored_bytes": manifest.stored_bytes,
        "raw_bytes": manifest.raw_bytes,
        "sha256": manifest.sha256,
    }


def _drills_of(
    job: str, database: str, drills: Iterable[JournalEntry], present: set[str], now: datetime
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The last drill of a database, and the newest backup still on disk that passed one (with its age).

    A drill of a backup retention has since deleted is never shown as a backup's: its path is
    dropped and `backup_present` says so.
    """
    own = [entry for entry in drills if entry.job == job and entry.database == database]
    last = own[-1] if own else None
    summary = None
    if last is not None:
        on_disk = last.path is not None and last.path in present
        summary = {
            "at": last.at,
            "result": last.result,
            "reason": last.reason or None,
            "path": last.path if on_disk else None,
            "backup_present": on_disk,
            "differences": last.differences,
            "error": last.error,
        }
    newest: tuple[datetime, str, str] | None = None
    for entry in own:
        if entry.result != "passed" or entry.path is None or entry.path not in present:
            continue
        parsed = parse_backup_filename(Path(entry.path).name)
        if parsed is not None and (newest is None or parsed.created_at > newest[0]):
            newest = (parsed.created_at, entry.path, entry.at)
    drilled = None
    if newest is not None:
        drilled = {
            "path": newest[1],
            "created_at": _iso(newest[0]),
            "drilled_at": newest[2],
            "age_seconds": round((now - newest[0]).total_seconds()),
        }
    return summary, drilled


# --------------------------------------------------------------------------------------------------
# Text for people


def _label(database: dict[str, Any]) -> str:
    # the name as it is: the CLI escapes control characters in every line it prints, JSON escapes its own
    return series_label(database["kind"], str(database["database"]))


def _ago(seconds: float | None) -> str:
    return "?" if seconds is None else f"{_age_text(timedelta(seconds=seconds))} ago"


def render_text(status: dict[str, Any]) -> list[str]:
    """The status for a terminal, one line per item; the CLI escapes what it prints."""
    lines: list[str] = []
    storage = status["storage"]
    limit = f" of max {format_size(storage['max_usage_bytes'])}" if storage["max_usage_bytes"] is not None else ""
    where = f" on {storage['filesystem']}" if storage["filesystem"] else ""
    lines.append(
        f"storage {storage['path']}{where}: {format_size(storage['used_bytes'])} used on disk{limit}; "
        f"free {format_size(storage['free_bytes'])} (reserve {format_size(storage['reserve_bytes'])})"
        + ("; OVER BUDGET" if storage["over_budget"] else "")
    )
    daemon = status["daemon"]
    if daemon["running"]:
        since, config_file = format_time(daemon["since"]), daemon["config"] or "?"
        lines.append(f"daemon running: pid {daemon['pid'] or '?'} since {since}, config {config_file}")
    else:
        lines.append("daemon: no daemon running (no scheduled runs happen; start one with `backup-agent run`)")
    for run in status["running"]:
        label = run["database"].encode("unicode_escape").decode("ascii")
        expected = run.get("expected_bytes")
        total = f" of ~{format_size(expected)}" if expected and expected >= run["raw_bytes"] else ""
        lines.append(
            f"running: {run['job']}/{label}: {format_size(run['raw_bytes'])}{total} so far, "
            f"{format_duration(timedelta(seconds=int(run['elapsed_seconds'])))} elapsed (pid {run['pid']})"
        )
    for job in status["jobs"]:
        if job["next_run"]:
            next_run = f"next run {format_time(job['next_run'])}"
        elif not daemon["running"] and job["schedule"] != "manual":
            next_run = "no daemon running"
        else:
            next_run = "no scheduled runs"
        age = (
            f"max age {format_duration(timedelta(seconds=job['max_backup_age_seconds']))}"
            if job["checked"]
            else "not checked"
        )
        last = job["last_run"]
        last_text = f"; last run {last['status']}" + (f" ({last['reason']})" if last["reason"] else "") if last else ""
        drill = job["last_drill"]
        if drill is not None:
            last_text += f"; last drill {drill['status']}" + (f" ({drill['reason']})" if drill["reason"] else "")
        lines.append(f"job {job['job']} ({job['engine']}, {job['schedule']}): {next_run}; {age}{last_text}")
        if not job["databases"]:
            lines.append("  (no backups yet)")
        for database in job["databases"]:
            lines.append("  " + _database_line(database))
        for running in job["in_progress"]:
            label = _label(running)
            lines.append(f"  DUMPING  {label}: {format_size(running['bytes'])} written so far {running['path']}")
    lines.extend(_platform_lines(status.get("platform")))
    verdict = "OK" if status["ok"] else "CRITICAL"
    lines.append(f"STATUS {verdict} - {len(status['problems'])} problem(s)")
    lines.extend(f"  {problem}" for problem in status["problems"])
    return lines


def _platform_lines(platform: dict[str, Any] | None) -> list[str]:
    if platform is None:
        return []
    lines = list(platform["lines"])
    for series, held in platform["deleted_held_lines"].items():
        lines.extend(f"  {series}: {line}" for line in held)
    lines.extend(f"platform: warning: {platform[key]}" for key in ("warning", "vanished") if platform[key])
    return lines


def _database_line(database: dict[str, Any]) -> str:
    parts: list[str] = []
    good = database["last_good"]
    if good is not None:
        parts.append(f"last good {_ago(good['age_seconds'])} ({format_size(good['stored_bytes'])}) {good['path']}")
    else:
        parts.append("no good backup")
    skipped = database.get("last_unchanged")
    if skipped is not None:
        parts.append(f"found unchanged {_ago(skipped['age_seconds'])} (no new dump)")
    attempt = database["last_attempt"]
    if attempt is not None and attempt["status"] != "ok":
        parts.append(f"last attempt {attempt['status']}" + (f" ({attempt['reason']})" if attempt["reason"] else ""))
    failure = database["last_failure"]
    if failure is not None:
        parts.append(f"last failure {_ago(failure['age_seconds'])}: {failure['reason']}")
    if database["warnings"]:
        parts.append("warnings: " + " | ".join(database["warnings"]))
    if database["predicted_next_bytes"] is not None:
        parts.append(f"next ~{format_size(database['predicted_next_bytes'])}")
    drill = database["last_drill"]
    if drill is not None:
        reason = f" ({drill['reason']})" if drill["reason"] else ""
        gone = "" if drill["backup_present"] else " of a backup since deleted"
        parts.append(f"drill {drill['result']}{reason} {format_time(drill['at'])}{gone}")
    drilled = database["newest_drilled_backup"]
    if drilled is not None:
        parts.append(f"newest drilled backup {_ago(drilled['age_seconds'])}")
    if database["problem"]:
        parts.append(database["problem"])
    return f"{database['state'].upper():8} {_label(database)}: " + "; ".join(parts)
