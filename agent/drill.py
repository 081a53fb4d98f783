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
from agent.errors import AgentError
from agent.log import get_logger
from agent.restore import Chosen, decompressed_chunks, engine_for, reverify

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
    reason: str = ""
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


def run_drills(config: Config, job: str, *, now: datetime | None = None) -> list[DrillResult]:
    """Drill the newest good backup of every database of `job`."""
    now = now or datetime.now(UTC)
    engine = engine_for(config, job)
    log = get_logger(job=job)
    with contextlib.suppress(AgentError):
        for leftover in [name for name in engine.discover() if _SCRATCH.search(name)]:
            engine.drop_database(leftover)
            log.warning("drill.leftover_dropped", database=leftover)
    records = catalog.scan(config.storage.path, job)
    databases = sorted(
        {record.database for record in records if record.status == catalog.GOOD and record.kind == "database"}
    )
    results: list[DrillResult] = []
    for database in databases:
        newest = catalog.latest_good(records, job, database)
        assert newest is not None and newest.manifest is not None
        results.append(_drill_one(config, job, Chosen(newest, newest.manifest), now))
    return results


def _drill_one(config: Config, job: str, chosen: Chosen, now: datetime) -> DrillResult:
    engine = engine_for(config, job)
    database = chosen.manifest.database
    log = get_logger(job=job, database=database)
    relative = str(chosen.record.path.relative_to(config.storage.path))
    scratch = scratch_name(database, now)
    result = DrillResult(database, FAILED, relative)
    try:
        reverify(chosen)
        engine.create_database(scratch)
        try:
            engine.restore(
                decompressed_chunks(chosen.record.path, chosen.manifest.compression),
                chosen.manifest,
                scratch,
                drill=True,
            )
            tables, rows = compare_counts(chosen.manifest.counts, engine.count_rows(scratch))
            # counts taken outside the dump's snapshot (MySQL, MongoDB without one) may drift on a busy
            # server: there only the table list must match, and row drift is reported, not failed
            result.differences = tables + rows if chosen.manifest.counts_consistent else tables
            result.notes = [] if chosen.manifest.counts_consistent else rows
        finally:
            engine.drop_database(scratch)
        result.status = PASSED if not result.differences else FAILED
    except AgentError as error:
        result.reason = str(error)
    if result.status == PASSED:
        log.info("drill.passed", path=relative, tables=len(chosen.manifest.counts), row_drift=result.notes)
    else:
        log.error("drill.failed", path=relative, differences=result.differences, error=result.reason)
    journal.append(
        config.storage.path,
        journal.Event.DRILL,
        path=relative,
        database=database,
        job=job,
        result=result.status,
        differences=result.differences,
        error=result.reason,
    )
    return result
