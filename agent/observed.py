"""What happens around every run, scheduled or manual: hooks, alerts, the agent's records, metrics.

`run_job` is the one entry point for the CLI and the daemon, so both behave the same from this one
place. An `ObservedRun` composes a `runner.JobRun` (which knows nothing of any of this): it hands the
run a `before_dumps` callback for the `before` hook and the start alert under the job lock, and
after the run it runs the `after`/`on_failure` hooks, records the run (agent/records.py), rewrites
the metrics file and sends the final alert. Nothing here can fail a backup, except a failing
`before` hook, which is meant to.
"""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from structlog.contextvars import bound_contextvars

from agent import hooks, metrics, notify
from agent.config import Config, JobConfig
from agent.drill import PASSED, DrillResult, run_drills
from agent.errors import AgentError
from agent.labels import BackupLabel
from agent.log import register_secret
from agent.manifest import manifest_path
from agent.outcome import Reason, RunOutcome, Status, TargetKind, TargetOutcome
from agent.progress import Watcher
from agent.records import DrillFacts, record_databases, record_drills, record_job
from agent.runner import JobRun


class ObservedRun:
    """One job run with its hooks, alerts, records and metrics around it."""

    def __init__(
        self,
        config: Config,
        job: JobConfig,
        should_stop: Callable[[], bool],
        next_run: Callable[[], datetime | None] = lambda: None,
        label: BackupLabel | None = None,
        *,
        progress: Watcher | None = None,
    ) -> None:
        self.config = config
        self.job = job
        self.run = JobRun(config, job, should_stop, before_dumps=self._before_dumps, label=label, progress=progress)
        self.log = self.run.log
        self.next_run = next_run
        self.notifier = notify.Notifier(config.notify, job=job.name, run_id=self.run.run_id, host=self.run.host)
        self.tail = notify.LogTail(self.run.run_id)
        self.requested: str | None = None
        self.started_notified = False
        with contextlib.suppress(AgentError):  # an unreadable password is the run's to report
            secret = job.password.read()
            if secret is not None:
                register_secret(secret.reveal())  # before any hook can echo it into a log line

    def execute(self, database: str | None) -> RunOutcome:
        self.requested = database
        with self.tail.capturing():
            outcome = self.run.execute(database)
            self._after(outcome)
        return outcome

    def _before_dumps(self, database: str | None, outcome: RunOutcome) -> bool:
        self.notifier.send(notify.STARTED, {"database": database, "at": _now()})
        self.started_notified = True
        argv = self.job.hooks.before
        if argv is None:
            return True
        result = hooks.run_hook(
            hooks.BEFORE,
            argv,
            timeout=self.job.hooks.timeout,
            environment=self._environment(hooks.BEFORE, "starting", database or "", TargetKind.DATABASE),
            log=self.log,
        )
        if result.ok:
            return True
        outcome.status, outcome.reason = Status.FAILED, Reason.HOOK_FAILED
        outcome.message = f"the before hook failed: {result.message}"
        self.log.error("backup.failed", reason=Reason.HOOK_FAILED, error=outcome.message)
        return False

    def _after(self, outcome: RunOutcome) -> None:
        """Hooks, the per-database records (the metrics show them), metrics, the alert, and the job's
        state last: once state.json shows the run and the next planned one, the run is over."""
        storage = self.config.storage.path
        self._run_result_hooks(outcome)
        record_databases(storage, outcome, requested=self.requested, configured=self.job.databases)
        if self.config.metrics.textfile is not None:
            metrics.write_textfile(self.config)
        if self.started_notified and not outcome.interrupted and outcome.reason != Reason.NOT_FOUND:
            self._notify_end(outcome)
            self.notifier.wait()
        record_job(storage, outcome, next_run=self.next_run())

    def _run_result_hooks(self, outcome: RunOutcome) -> None:
        settings = self.job.hooks
        for target in outcome.targets:
            if target.status == Status.INTERRUPTED:  # a planned stop is not a failure
                continue
            argv = settings.after if target.status == Status.OK else settings.on_failure
            name = hooks.AFTER if target.status == Status.OK else hooks.ON_FAILURE
            if argv is None:
                continue
            environment = self._environment(
                name, target.status, target.database, target.kind, target=target, reason=target.reason
            )
            hooks.run_hook(name, argv, timeout=settings.timeout, environment=environment, log=self.log)
        if (
            not outcome.targets
            and outcome.status == Status.FAILED
            and outcome.reason != Reason.NOT_FOUND
            and settings.on_failure is not None
        ):
            environment = self._environment(
                hooks.ON_FAILURE,
                Status.FAILED,
                self.requested or "",
                TargetKind.DATABASE,
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
        kind: TargetKind,
        *,
        target: TargetOutcome | None = None,
        reason: str = "",
        message: str | None = None,
    ) -> dict[str, str]:
        path: Path | None = target.path if target is not None else None
        manifest = target.manifest if target is not None else None
        if message is None:
            message = target.message if target is not None else ""
        return hooks.hook_environment(
            hook=hook,
            job=self.job.name,
            engine=self.job.engine,
            database=database,
            kind=kind,
            status=status,
            reason=reason,
            message=notify.masked(message),
            run_id=self.run.run_id,
            storage=self.config.storage.path,
            path=path,
            manifest=manifest_path(path) if path else None,
            sha256=manifest.sha256 if manifest else None,
            size=manifest.stored_bytes if manifest else None,
            raw_size=manifest.raw_bytes if manifest else None,
            created_at=manifest.started_at if manifest else None,
        )

    def _notify_end(self, outcome: RunOutcome) -> None:
        if outcome.ok:
            event = notify.SUCCEEDED
        elif outcome.targets and all(target.status in (Status.OK, Status.REFUSED) for target in outcome.targets):
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
            "status": {notify.SUCCEEDED: Status.OK, notify.REFUSED: Status.REFUSED}.get(event, Status.FAILED),
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


def drill_job(config: Config, job_name: str, *, progress: Watcher | None = None) -> list[DrillResult]:
    """Drill one job (agent/drill.py), record the results, and alert a failed drill like a failed backup.

    Never raises: the CLI's `drill` over every job and the daemon's scheduled drills go on to the next.
    """
    run_id = uuid.uuid4().hex[:12]
    notifier = notify.Notifier(config.notify, job=job_name, run_id=run_id, host=socket.gethostname())
    tail = notify.LogTail(run_id)
    with tail.capturing(), bound_contextvars(run_id=run_id):
        results = run_drills(config, job_name, progress=progress)
        facts = [DrillFacts(item.database, item.status, item.reason, item.message, item.path) for item in results]
        record_drills(config.storage.path, job_name, facts, datetime.now(UTC))
        failed = [item for item in results if item.status != PASSED]
        if failed:
            databases = [
                {"database": item.database, "status": item.status, "reason": item.reason, "message": item.message}
                for item in failed
            ]
            fields = {"at": _now(), "status": Status.FAILED, "reason": failed[0].reason, "databases": databases}
            notifier.send(notify.DRILL_FAILED, {**fields, "log_tail": list(tail.lines)}, tail.text())
            notifier.wait()
    return results


def run_job(
    config: Config,
    job_name: str,
    *,
    database: str | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    next_run: Callable[[], datetime | None] = lambda: None,
    label: BackupLabel | None = None,
    progress: Watcher | None = None,
) -> RunOutcome:
    """Back up one job now (all its databases, or just `database`), with its hooks, alerts, records and metrics.

    `next_run` tells the daemon's next planned run of the job, recorded with this one's outcome;
    `label` (`backup --label`) goes into every manifest the run writes; `progress` is told how each
    dump advances (the CLI's terminal line).
    """
    return ObservedRun(config, config.jobs[job_name], should_stop, next_run, label, progress=progress).execute(database)
