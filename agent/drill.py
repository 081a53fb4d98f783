"""Restore drills: restore the newest backup into a scratch database, compare, always drop it.

A drill proves a backup restores: the table list and row counts of the restored copy must equal
the counts recorded in the manifest at dump time. The result goes to the log and the journal
(manifests stay immutable); `status` reads the newest drill per database from the journal.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from agent import catalog, journal
from agent.config import Config
from agent.engines.base import MISSING
from agent.errors import AgentError, ConnectionFailed
from agent.log import get_logger
from agent.progress import Watcher, counted
from agent.restore import (
    NO_PRIVILEGE,
    VERIFYING,
    Chosen,
    decompressed_chunks,
    engine_for,
    is_privilege_error,
    missing_privileges,
    new_meter,
    refuse_missing,
    reverify,
)

DRILL_MARKER = "__drill_"
_SCRATCH = re.compile(r"__drill_\d{8}T\d{6}Z$")  # only names the agent made; never a user's database
PASSED = "passed"
FAILED = "failed"
SKIPPED = "skipped"


@dataclass(slots=True)
class DrillResult:
    database: str
    status: str
    path: str = ""
    differences: list[str] = field(default_factory=list)
    reason: str = ""  # a word: no_privilege, restore_failed, counts_differ, tables_differ, connection_failed, ...
    message: str = ""
    notes: list[str] = field(default_factory=list)  # row drift where counts were not in the dump's snapshot


def compare_counts(expected: dict[str, int], actual: dict[str, int]) -> tuple[list[str], list[str]]:
    """(table differences, row-count differences) between the manifest and the restored database."""
    tables = [f"table {name} is missing after restore" for name in sorted(set(expected) - set(actual))]
    tables += [f"table {name} appeared that the backup did not record" for name in sorted(set(actual) - set(expected))]
    rows = [
        f"table {name}: {expected[name]} rows recorded, {actual[name]} restored"
        for name in sorted(set(expected) & set(actual))
        if expected[name] != actual[name]
    ]
    return tables, rows


def scratch_name(database: str, now: datetime, limit: int = 63) -> str:
    """`<db>__drill_<stamp>`, the database part cut so the whole fits the server's name limit (63 bytes)."""
    suffix = f"{DRILL_MARKER}{now.strftime('%Y%m%dT%H%M%SZ')}"
    head = database.encode()[: limit - len(suffix)].decode(errors="ignore")
    return head + suffix


def failure_reason(error: BaseException, step: str) -> str:
    """The reason word of a drill that raised during `step` (create, restore, count, verify).

    The engines' own reason words win; a refused privilege reads the same on every engine
    (PostgreSQL SQLSTATE 42501, MySQL access-denied codes, or the servers' wording).
    """
    reason = getattr(error, "reason", None)
    if isinstance(reason, str) and reason:
        return reason
    if isinstance(error, ConnectionFailed):
        return "connection_failed"
    if is_privilege_error(error):
        return NO_PRIVILEGE
    if step == "verify":
        return "backup_invalid"
    if not isinstance(error, AgentError | OSError):
        return "internal_error"
    return f"{step}_failed"


def run_drills(
    config: Config, job: str, *, now: datetime | None = None, progress: Watcher | None = None
) -> list[DrillResult]:
    """Drill the newest good backup of every database of `job`; never raises.

    A drill that cannot start (no server, no engine) is one failed result with an empty database
    name; a failed database never stops the others.
    """
    now = now or datetime.now(UTC)
    log = get_logger(job=job)
    try:
        engine = engine_for(config, job)
        with contextlib.suppress(AgentError):
            for leftover in [name for name in engine.discover() if _SCRATCH.search(name)]:
                engine.drop_database(leftover)
                log.warning("drill.leftover_dropped", database=leftover)
        records = catalog.scan(config.storage.path, job)
    except Exception as error:  # a drill must never take the other jobs' drills down
        reason = failure_reason(error, "start")
        message = str(error) if reason != "internal_error" else f"{type(error).__name__}: {error}"
        log.error("drill.failed", reason=reason, error=message, exc_info=error if reason == "internal_error" else None)
        return [DrillResult("", FAILED, reason=reason, message=message)]
    databases = sorted(
        {record.database for record in records if record.status == catalog.GOOD and record.kind == "database"}
    )
    results: list[DrillResult] = []
    for database in databases:
        newest = catalog.latest_good(records, job, database)
        assert newest is not None and newest.manifest is not None
        results.append(_drill_one(config, job, Chosen(newest, newest.manifest), now, progress))
    return results


def _drill_one(config: Config, job: str, chosen: Chosen, now: datetime, progress: Watcher | None) -> DrillResult:
    database = chosen.manifest.database
    log = get_logger(job=job, database=database)
    relative = str(chosen.record.path.relative_to(config.storage.path))
    scratch = scratch_name(database, now)
    result = DrillResult(database, FAILED, relative)
    step = "verify"
    try:
        engine = engine_for(config, job)
        reverify(chosen, new_meter(config, chosen, "drill", log, progress, step=VERIFYING))
        step = "create"
        refuse_missing(engine, scratch, missing_privileges(engine, scratch, MISSING))
        engine.create_database(scratch)
        try:
            step = "restore"
            with new_meter(config, chosen, "drill", log, progress) as meter:
                chunks = decompressed_chunks(chosen.record.path, chosen.manifest.compression)
                engine.restore(counted(chunks, meter), chosen.manifest, scratch, drill=True)
            step = "count"
            tables, rows = compare_counts(chosen.manifest.counts, engine.count_rows(scratch))
            # counts taken outside the dump's snapshot (MySQL, MongoDB without one) may drift on a busy
            # server: there only the table list must match, and row drift is reported, not failed
            result.differences = tables + rows if chosen.manifest.counts_consistent else tables
            result.notes = [] if chosen.manifest.counts_consistent else rows
        finally:
            with contextlib.suppress(Exception):  # a drop that fails leaves a leftover the next drill drops
                engine.drop_database(scratch)
        if not result.differences:
            result.status = PASSED
        else:
            result.reason = "tables_differ" if tables else "counts_differ"
            result.message = "; ".join(result.differences)
    except Exception as error:  # one database's drill, even a bug's, never stops the others
        result.reason = failure_reason(error, step)
        result.message = str(error) if result.reason != "internal_error" else f"{type(error).__name__}: {error}"
    if result.status == PASSED:
        log.info("drill.passed", path=relative, tables=len(chosen.manifest.counts), row_drift=result.notes)
    else:
        log.error(
            "drill.failed", path=relative, reason=result.reason, differences=result.differences, error=result.message
        )
    try:
        journal.append(
            config.storage.path,
            journal.Event.DRILL,
            path=relative,
            database=database,
            job=job,
            result=result.status,
            reason=result.reason,
            differences=result.differences,
            error=result.message,
        )
    except OSError as error:
        log.error("journal.write_failed", error=str(error), path=relative)
    return result
