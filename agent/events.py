"""What happens around every run, scheduled or manual: hooks, alerts, per-database records, metrics.

`runner.run_job` runs each job as an `ObservedRun`, so the CLI and the daemon behave the same from
this one place. Nothing here can fail a backup, except a failing `before` hook, which is meant to.

The per-database records (`<storage>/.agent/databases.json`: last success and failure, failure
count, the databases of the last full run) are what `status` and the metrics read besides the
files on disk; like state.json they are informational, the backups on disk stay the truth.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent import hooks, notify
from agent.config import Config, JobConfig
from agent.errors import AgentError
from agent.log import get_logger, register_secret
from agent.manifest import ManifestError, manifest_path, read_manifest
from agent.runner import FAILED, OK, REFUSED, SKIPPED, JobRun, RunOutcome, TargetOutcome
from agent.storage import StorageLayout, waiting_lock
from agent.writer import replace_file_atomically

HOOK_FAILED = "hook_failed"
HISTORY_VERSION = 1


# --------------------------------------------------------------------------------------------------
# Per-database records


@dataclass(slots=True)
class DatabaseRecord:
    """What the agent remembers about one database (or globals/grants file) of a job."""

    kind: str
    database: str
    last_attempt: str | None = None
    last_status: str | None = None  # ok | failed | refused
    last_success: str | None = None
    last_duration: float | None = None
    last_failure: str | None = None
    last_failure_reason: str | None = None
    last_failure_message: str | None = None
    failures_total: int = 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DatabaseRecord:
        known = {item.name for item in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


@dataclass(slots=True)
class JobHistory:
    databases: list[DatabaseRecord] = field(default_factory=list)
    last_full_run: str | None = None  # when a run last listed every database of the job
    last_full_run_databases: list[str] | None = None  # the database names that run covered

    def record(self, kind: str, database: str) -> DatabaseRecord:
        for existing in self.databases:
            if existing.kind == kind and existing.database == database:
                return existing
        created = DatabaseRecord(kind, database)
        self.databases.append(created)
        return created


def history_path(storage: Path) -> Path:
    return StorageLayout(storage).agent_directory / "databases.json"


def read_history(storage: Path) -> dict[str, JobHistory]:
    """Every job's per-database records; an absent or unreadable file reads as empty."""
    try:
        document = json.loads(history_path(storage).read_text(encoding="utf-8"))
        return {
            str(name): JobHistory(
                [DatabaseRecord.from_json(item) for item in entry.get("databases", [])],
                entry.get("last_full_run"),
                entry.get("last_full_run_databases"),
            )
            for name, entry in document["jobs"].items()
        }
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        get_logger().warning("history.unreadable", path=str(history_path(storage)), error=str(error))
        return {}


def _locked(layout: StorageLayout) -> contextlib.AbstractContextManager[None]:
    """Held only for one read-modify-write of the file."""
    return waiting_lock(layout.lock_file("databases"))


def update_history(storage: Path, job: str, change: Callable[[JobHistory], None]) -> None:
    """Read-modify-write one job's records under a lock; a write failure is logged, never fatal."""
    layout = StorageLayout(storage)
    try:
        layout.prepare()
        with _locked(layout):
            jobs = read_history(storage)
            change(jobs.setdefault(job, JobHistory()))
            document = {
                "version": HISTORY_VERSION,
                "jobs": {name: asdict(entry) for name, entry in sorted(jobs.items())},
            }
            replace_file_atomically(history_path(storage), (json.dumps(document, indent=2) + "\n").encode())
    except OSError as error:
        get_logger(job=job).error("history.write_failed", path=str(history_path(storage)), error=str(error))


def apply_outcome(history: JobHistory, job: JobConfig, outcome: RunOutcome, requested: str | None) -> None:
    """Fold one run into the job's records (pure apart from `history`); skipped runs change nothing."""
    if outcome.status == SKIPPED:
        return
    finished = (outcome.started_at + timedelta(seconds=outcome.duration_seconds)).isoformat()
    for target in outcome.targets:
        _apply_target(history.record(target.kind, target.database), target, finished)
    if not outcome.targets and outcome.status == FAILED:
        # the run failed before it reached any database (probe, hook): every database it meant to dump
        if requested is not None:
            names: list[str] = [requested]
        elif job.databases is not None:
            names = list(job.databases)
        else:
            names = list(history.last_full_run_databases or [])
        failed = TargetOutcome("", "database", FAILED, reason=outcome.reason, message=outcome.message)
        for name in names:
            _apply_target(history.record("database", name), failed, finished)
    elif requested is None and outcome.targets:
        history.last_full_run = finished
        history.last_full_run_databases = [target.database for target in outcome.targets if target.kind == "database"]


def _apply_target(record: DatabaseRecord, target: TargetOutcome, finished: str) -> None:
    record.last_attempt = finished
    record.last_status = target.status
    if target.status == OK:
        record.last_success = finished
        manifest = _manifest_of(target)
        record.last_duration = manifest.duration_seconds if manifest else None
        return
    record.last_failure = finished
    record.last_failure_reason = target.reason or target.status
    record.last_failure_message = target.message
    record.failures_total += 1


def _manifest_of(target: TargetOutcome) -> Any:
    if target.path is None:
        return None
    try:
        return read_manifest(manifest_path(target.path))
    except ManifestError:
        return None


# --------------------------------------------------------------------------------------------------
# The observed run


class ObservedRun(JobRun):
    """A job run with the `before` hook and the start alert under the job lock, and afterwards:
    `after`/`on_failure` hooks, the per-database records, the metrics file and the final alert."""

    def __init__(self, config: Config, job: JobConfig, should_stop: Callable[[], bool]) -> None:
        super().__init__(config, job, should_stop)
        self.notifier = notify.Notifier(config.notify, job=job.name, run_id=self.run_id, host=self.host)
        self.tail = notify.LogTail(self.run_id)
        self.requested: str | None = None
        self.started_notified = False
        with contextlib.suppress(AgentError):  # an unreadable password is the run's to report
            secret = job.password.read()
            if secret is not None:
                register_secret(secret.reveal())  # before any hook can echo it into a log line

    def execute(self, database: str | None) -> RunOutcome:
        self.requested = database
        with self.tail.capturing():
            outcome = super().execute(database)
            self._after(outcome)
        return outcome

    def before_dumps(self, database: str | None, outcome: RunOutcome) -> bool:
        self.notifier.send(notify.STARTED, {"database": database, "at": _now()})
        self.started_notified = True
        argv = self.job.hooks.before
        if argv is None:
            return True
        result = hooks.run_hook(
            hooks.BEFORE,
            argv,
            timeout=self.job.hooks.timeout,
            environment=self._environment(hooks.BEFORE, "starting", database or "", "database"),
            log=self.log,
        )
        if result.ok:
            return True
        outcome.status, outcome.reason = FAILED, HOOK_FAILED
        outcome.message = f"the before hook failed: {result.message}"
        self.log.error("backup.failed", reason=HOOK_FAILED, error=outcome.message)
        return False

    def _after(self, outcome: RunOutcome) -> None:
        self._run_result_hooks(outcome)
        update_history(
            self.config.storage.path,
            self.job.name,
            lambda history: apply_outcome(history, self.job, outcome, self.requested),
        )
        self._write_metrics()
        if self.started_notified:
            self._notify_end(outcome)
            self.notifier.wait()

    def _run_result_hooks(self, outcome: RunOutcome) -> None:
        settings = self.job.hooks
        for target in outcome.targets:
            argv = settings.after if target.status == OK else settings.on_failure
            name = hooks.AFTER if target.status == OK else hooks.ON_FAILURE
            if argv is None:
                continue
            environment = self._environment(
                name,
                target.status,
                target.database,
                target.kind,
                path=target.path,
                reason=target.reason,
                message=target.message,
            )
            hooks.run_hook(name, argv, timeout=settings.timeout, environment=environment, log=self.log)
        if not outcome.targets and outcome.status == FAILED and settings.on_failure is not None:
            environment = self._environment(
                hooks.ON_FAILURE,
                FAILED,
                self.requested or "",
                "database",
                reason=outcome.reason,
                message=outcome.message,
            )
            hooks.run_hook(
                hooks.ON_FAILURE, settings.on_failure, timeout=settings.timeout, environment=environment, log=self.log
            )

    def _environment(
        self,
        hook: str,
        status: str,
        database: str,
        kind: str,
        *,
        path: Path | None = None,
        reason: str = "",
        message: str = "",
    ) -> dict[str, str]:
        manifest = None
        if path is not None:
            with contextlib.suppress(ManifestError):
                manifest = read_manifest(manifest_path(path))
        return hooks.hook_environment(
            hook=hook,
            job=self.job.name,
            engine=self.job.engine,
            database=database,
            kind=kind,
            status=status,
            reason=reason,
            message=notify.masked(message),
            run_id=self.run_id,
            storage=self.config.storage.path,
            path=path,
            manifest=manifest_path(path) if path else None,
            sha256=manifest.sha256 if manifest else None,
            size=manifest.stored_bytes if manifest else None,
            raw_size=manifest.raw_bytes if manifest else None,
            created_at=manifest.started_at if manifest else None,
        )

    def _write_metrics(self) -> None:
        if self.config.metrics.textfile is None:
            return
        from agent import metrics

        metrics.write_textfile(self.config)

    def _notify_end(self, outcome: RunOutcome) -> None:
        if outcome.ok:
            event = notify.SUCCEEDED
        elif outcome.targets and all(target.status in (OK, REFUSED) for target in outcome.targets):
            event = notify.REFUSED
        else:
            event = notify.FAILED
        databases = [
            {
                "database": target.database,
                "kind": target.kind,
                "status": target.status,
                "path": str(target.path) if target.path else None,
                "reason": target.reason,
                "message": target.message,
            }
            for target in outcome.targets
        ]
        fields: dict[str, Any] = {
            "at": _now(),
            "status": {notify.SUCCEEDED: OK, notify.REFUSED: REFUSED}.get(event, FAILED),
            "reason": outcome.reason,
            "message": outcome.message,
            "duration": outcome.duration_seconds,
            "databases": databases,
        }
        if event == notify.SUCCEEDED:
            body = f"{len(databases)} backup(s) written in {outcome.duration_seconds:.1f}s"
        else:
            fields["log_tail"] = list(self.tail.lines)
            body = self.tail.text()
        self.notifier.send(event, fields, body)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
