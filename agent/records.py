"""The agent's own records between runs, in `<storage>/.agent/`: `state.json` per job, `databases.json` per database.

state.json: each job's last run, last success and failure, next planned run, recent durations.
databases.json: each database's (or globals/grants file's) last attempt, success and failure,
failure count, and the databases the job's last full run covered. Both are informational (status,
metrics, the before-snapshots estimate); the backups on disk stay the truth.

Each write is a read-modify-write under a short `flock`, saved as a whole new file renamed over the
old, so readers from other threads and processes see a consistent picture. Read back, both are
untrusted: every entry is decoded with its types checked (msgspec), and an entry that does not fit
is logged with the field named and left out, never a TypeError later in `status` or the metrics.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from agent.log import get_logger
from agent.outcome import Reason, RunOutcome, Status, TargetKind, TargetOutcome
from agent.schedule import RECENT_DURATIONS_KEPT
from agent.storage import StorageLayout, waiting_lock
from agent.writer import replace_file_atomically

STATE_VERSION = 1
HISTORY_VERSION = 1


class JobState(msgspec.Struct):
    """What the agent remembers about one job; times are ISO 8601 UTC strings."""

    last_start: str | None = None
    last_status: Status | None = None  # ok | failed | skipped | interrupted
    last_reason: str | None = None
    last_duration: float | None = None
    last_success: str | None = None
    last_failure: str | None = None
    last_failure_reason: str | None = None
    last_failure_message: str | None = None
    next_run: str | None = None
    recent_durations: list[float] = msgspec.field(default_factory=list)
    last_drill: str | None = None  # when the job's last drill ended
    last_drill_status: str | None = None  # passed | failed
    last_drill_reason: str | None = None  # the first failed database's reason word
    last_drill_message: str | None = None


class DatabaseRecord(msgspec.Struct):
    """What the agent remembers about one database (or globals/grants file) of a job."""

    kind: TargetKind
    database: str
    last_attempt: str | None = None
    last_status: Status | None = None  # ok | failed | refused | interrupted
    last_success: str | None = None
    last_duration: float | None = None
    last_failure: str | None = None
    last_failure_reason: str | None = None
    last_failure_message: str | None = None
    failures_total: int = 0
    last_drill: str | None = None
    last_drill_status: str | None = None  # passed | failed
    last_drill_reason: str | None = None
    last_drill_message: str | None = None
    last_drill_path: str | None = None  # the drilled backup, relative to storage


class JobHistory(msgspec.Struct):
    databases: list[DatabaseRecord] = msgspec.field(default_factory=list)
    last_full_run: str | None = None  # when a run last listed every database of the job
    last_full_run_databases: list[str] | None = None  # the database names that run covered

    def record(self, kind: TargetKind, database: str) -> DatabaseRecord:
        for existing in self.databases:
            if existing.kind == kind and existing.database == database:
                return existing
        created = DatabaseRecord(kind, database)
        self.databases.append(created)
        return created

    def find(self, kind: str, database: str) -> DatabaseRecord | None:
        return next((item for item in self.databases if item.kind == kind and item.database == database), None)


class _Document(msgspec.Struct):
    """Either file's outer shape; each job's entry is decoded on its own, so one bad entry costs only itself."""

    jobs: dict[str, msgspec.Raw]


Entry = TypeVar("Entry", JobState, JobHistory)


def state_path(storage: Path) -> Path:
    return StorageLayout(storage).state_file


def history_path(storage: Path) -> Path:
    return StorageLayout(storage).agent_directory / "databases.json"


def _read(path: Path, entry_type: type[Entry], what: str) -> dict[str, Entry]:
    """Every job's entry; an absent or unreadable file reads as empty, an invalid entry is left out (logged)."""
    try:
        document = msgspec.json.decode(path.read_bytes(), type=_Document)
    except FileNotFoundError:
        return {}
    except (OSError, msgspec.DecodeError) as error:
        get_logger().warning(f"{what}.unreadable", path=str(path), error=str(error))
        return {}
    entries: dict[str, Entry] = {}
    decoder = msgspec.json.Decoder(entry_type)
    for name, raw in document.jobs.items():
        try:
            entries[name] = decoder.decode(raw)
        except msgspec.DecodeError as error:
            get_logger(job=name).warning(f"{what}.invalid_entry", path=str(path), error=str(error))
    return entries


def read_state(storage: Path) -> dict[str, JobState]:
    return _read(state_path(storage), JobState, "state")


def read_history(storage: Path) -> dict[str, JobHistory]:
    return _read(history_path(storage), JobHistory, "history")


def recent_durations(storage: Path, job: str) -> list[float]:
    """Seconds taken by the job's recent successful runs, oldest first."""
    state = read_state(storage).get(job)
    return list(state.recent_durations) if state else []


def _update(storage: Path, entry_type: type[Entry], change: Callable[[dict[str, Entry]], None]) -> None:
    """Read-modify-write one file under its lock; a write failure is logged, never fatal."""
    layout = StorageLayout(storage)
    is_state = entry_type is JobState
    path, what = (state_path(storage), "state") if is_state else (history_path(storage), "history")
    try:
        layout.prepare()
        with waiting_lock(layout.lock_file("state" if is_state else "databases")):
            entries = _read(path, entry_type, what)
            change(entries)
            document: dict[str, Any] = {"version": STATE_VERSION if is_state else HISTORY_VERSION}
            if is_state:
                document["updated_at"] = datetime.now(UTC).isoformat()
            document["jobs"] = {name: msgspec.to_builtins(entry) for name, entry in sorted(entries.items())}
            replace_file_atomically(path, (json.dumps(document, indent=2) + "\n").encode())
    except OSError as error:
        get_logger().error(f"{what}.write_failed", path=str(path), error=str(error))


# --------------------------------------------------------------------------------------------------
# Folding a run into the records (pure apart from the record they change)


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment is not None else None


def apply_to_state(state: JobState, outcome: RunOutcome, next_run: datetime | None) -> JobState:
    """The job's state after `outcome`: a skipped run changes only the last status."""
    if next_run is not None:
        state.next_run = _iso(next_run)
    if outcome.status == Status.SKIPPED:
        state.last_status, state.last_reason = Status.SKIPPED, outcome.reason or None
        return state
    if outcome.reason == Reason.NOT_FOUND:  # `backup --database TYPO`: nothing about the job changed
        return state
    state.last_start = _iso(outcome.started_at)
    state.last_duration = outcome.duration_seconds
    if outcome.ok:
        state.last_status, state.last_reason = Status.OK, None
        state.last_success = _iso(outcome.finished_at)
        state.recent_durations = [*state.recent_durations, outcome.duration_seconds][-RECENT_DURATIONS_KEPT:]
        return state
    if outcome.interrupted:  # a planned stop: not a failure
        state.last_status, state.last_reason = Status.INTERRUPTED, Reason.SHUTDOWN
        return state
    reason, message = outcome.failure()
    state.last_status, state.last_reason = Status.FAILED, reason
    state.last_failure = _iso(outcome.finished_at)
    state.last_failure_reason, state.last_failure_message = reason, message
    return state


def apply_to_history(
    history: JobHistory, outcome: RunOutcome, requested: str | None, configured: Sequence[str] | None
) -> None:
    """Fold one run into the job's per-database records; skipped runs change nothing.

    A run that failed before it reached any database (probe, hook) counts against every database it
    meant to dump: `requested`, else the `configured` list, else those of the last full run.
    """
    if outcome.status == Status.SKIPPED or outcome.reason == Reason.NOT_FOUND:  # no series for a typo
        return
    finished = outcome.finished_at.isoformat()
    for target in outcome.targets:
        _apply_target(history.record(target.kind, target.database), target, finished)
    if not outcome.targets and outcome.status in (Status.FAILED, Status.INTERRUPTED):
        if requested is not None:
            names: list[str] = [requested]
        elif configured is not None:
            names = list(configured)
        else:
            names = list(history.last_full_run_databases or [])
        failed = TargetOutcome("", TargetKind.DATABASE, outcome.status, reason=outcome.reason, message=outcome.message)
        for name in names:
            _apply_target(history.record(TargetKind.DATABASE, name), failed, finished)
    elif requested is None and outcome.targets:
        history.last_full_run = finished
        history.last_full_run_databases = [
            target.database for target in outcome.targets if target.kind == TargetKind.DATABASE
        ]


def _apply_target(record: DatabaseRecord, target: TargetOutcome, finished: str) -> None:
    record.last_attempt = finished
    record.last_status = target.status
    if target.status == Status.OK:
        record.last_success = finished
        record.last_duration = target.manifest.duration_seconds if target.manifest else None
        return
    if target.status == Status.INTERRUPTED:  # a planned stop is no failure: rerun at the next start
        return
    record.last_failure = finished
    record.last_failure_reason = target.reason or target.status
    record.last_failure_message = target.message
    record.failures_total += 1


# --------------------------------------------------------------------------------------------------
# Recording


def record_databases(
    storage: Path, outcome: RunOutcome, *, requested: str | None = None, configured: Sequence[str] | None = None
) -> None:
    """Fold one run into its databases' records (agent/observed.py: for the CLI's and the daemon's runs)."""

    def change(jobs: dict[str, JobHistory]) -> None:
        apply_to_history(jobs.setdefault(outcome.job, JobHistory()), outcome, requested, configured)

    _update(storage, JobHistory, change)


def record_job(storage: Path, outcome: RunOutcome, *, next_run: datetime | None = None) -> None:
    """Fold one run into its job's state, with the job's next planned run when the daemon has one."""

    def change(jobs: dict[str, JobState]) -> None:
        jobs[outcome.job] = apply_to_state(jobs.get(outcome.job, JobState()), outcome, next_run)

    _update(storage, JobState, change)


def record_next_runs(storage: Path, next_runs: Mapping[str, datetime | None]) -> None:
    """Remember when each job runs next (None: not scheduled); jobs not named are left alone."""

    def change(jobs: dict[str, JobState]) -> None:
        for name, moment in next_runs.items():
            jobs.setdefault(name, JobState()).next_run = _iso(moment)

    _update(storage, JobState, change)


class DrillFacts(msgspec.Struct, frozen=True):
    """One drilled database (empty name: the drill could not start), as records.py keeps it."""

    database: str
    status: str
    reason: str = ""
    message: str = ""
    path: str = ""


def apply_drills(state: JobState, history: JobHistory, results: Sequence[DrillFacts], at: datetime) -> None:
    """Fold one drill of a job into its state (the drill as a whole) and its databases' records."""
    moment = _iso(at)
    failed = [result for result in results if result.status != "passed"]
    state.last_drill = moment
    state.last_drill_status = "failed" if failed else "passed"
    state.last_drill_reason = failed[0].reason if failed else None
    state.last_drill_message = failed[0].message if failed else None
    for result in results:
        if not result.database:
            continue
        record = history.record(TargetKind.DATABASE, result.database)
        record.last_drill, record.last_drill_status, record.last_drill_path = moment, result.status, result.path
        record.last_drill_reason = result.reason or None
        record.last_drill_message = result.message or None


def record_drills(storage: Path, job: str, results: Sequence[DrillFacts], at: datetime) -> None:
    """Remember one drill of `job` (agent/observed.py: for the CLI's and the daemon's drills)."""

    def change_history(jobs: dict[str, JobHistory]) -> None:
        apply_drills(JobState(), jobs.setdefault(job, JobHistory()), results, at)

    def change_state(jobs: dict[str, JobState]) -> None:
        state = jobs.setdefault(job, JobState())
        apply_drills(state, JobHistory(), results, at)

    _update(storage, JobHistory, change_history)
    _update(storage, JobState, change_state)


def forget(storage: Path, job: str, database: str | None) -> None:
    """`backup-agent retire`: drop a database's record (or the whole job's state and records)."""

    def change_history(jobs: dict[str, JobHistory]) -> None:
        if database is None:
            jobs.pop(job, None)
            return
        history = jobs.get(job)
        if history is None:
            return
        history.databases = [
            item for item in history.databases if not (item.kind == TargetKind.DATABASE and item.database == database)
        ]
        if history.last_full_run_databases is not None:
            history.last_full_run_databases = [name for name in history.last_full_run_databases if name != database]

    def change_state(jobs: dict[str, JobState]) -> None:
        jobs.pop(job, None)

    _update(storage, JobHistory, change_history)
    if database is None:
        _update(storage, JobState, change_state)
