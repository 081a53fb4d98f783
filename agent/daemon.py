"""`backup-agent run`: the foreground daemon that runs every scheduled job, for months.

APScheduler 3 (a BackgroundScheduler) fires the jobs; `agent.schedule` decides when (a custom
trigger wraps its pure plans, so DST and jitter follow our rules, not the library's). The main
thread only sleeps and watches two flags set by signal handlers: SIGTERM/SIGINT stop the daemon,
SIGHUP reloads the config. One daemon per storage path (a `flock`), one run per job at a time
(APScheduler's max_instances plus the runner's per-job lock), at most `max_concurrent_dumps`
dumps per node (a semaphore).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger

from agent import __version__, catalog, journal, log, memory, process
from agent.activity import DaemonRecord, remove_daemon_record, write_daemon_record
from agent.config import Config, JobConfig, load_config
from agent.errors import EXIT_FAILED, EXIT_OK, AgentError, ConfigError, DaemonRunning, LockedError
from agent.observed import drill_job, run_job
from agent.outcome import Reason, RunOutcome, Status
from agent.records import read_history, recent_durations, record_next_runs
from agent.schedule import (
    BEFORE_SNAPSHOTS,
    Plan,
    catch_up,
    first_fire_at_or_after,
    next_fire_after,
    plan_for,
    previous_fire_at_or_before,
)
from agent.storage import StorageLayout, exclusive_lock

CONNECT_RETRIES = 3  # after a failed connection: retries at 1x, 2x, 4x the job's connect_timeout
POLL_SECONDS = 0.2  # how often a retrying job looks at the stop flag
IDLE_SECONDS = 5.0  # nap between clock-jump checks (1 s cost ~1 s of CPU an hour); a signal wakes it at once
SLOT_POLL_SECONDS = 0.5
CLOCK_JUMP_SECONDS = 10.0  # the wall clock moving this much more or less than the monotonic one
DRILL_PREFIX = "drill:"  # APScheduler id of a job's restore drill
MAX_WORKERS = 64  # threads are started lazily; a job waiting for a dump slot holds one


def job_defaults(config: Config) -> dict[str, Any]:
    """The APScheduler job settings, in one place: never two runs of a job, missed runs coalesced."""
    return {
        "coalesce": True,
        "max_instances": 1,
        "misfire_grace_time": max(1, round(config.daemon.misfire_grace_time.total_seconds())),
    }


def clock_jump(previous: tuple[float, float], current: tuple[float, float]) -> float | None:
    """Seconds the wall clock moved beyond the monotonic clock between two (wall, monotonic)
    readings, when that is a jump worth acting on (a pause moves both clocks alike)."""
    drift = (current[0] - previous[0]) - (current[1] - previous[1])
    return drift if abs(drift) >= CLOCK_JUMP_SECONDS else None


def retry_delay(job: JobConfig, attempt: int) -> timedelta:
    """How long to wait before retry number `attempt` (1-based) after a failed connection."""
    return job.connect_timeout * (1 << (attempt - 1))


def configure_logging(config: Config) -> None:
    """(Re)open the log as the config says; called at start and on every reload."""
    log.configure_from(config.log)


def last_good_backup(storage: Path, job: str) -> datetime | None:
    """When the job's newest good backup on disk started (from its manifest), or None; a run that
    found a database unchanged (skip_unchanged, journaled) counts as one at its time."""
    newest: datetime | None = None
    for entry in journal.read_events(storage, journal.Event.SKIPPED):
        with contextlib.suppress(ValueError):
            skipped = datetime.fromisoformat(entry.at)
            if entry.job == job and (storage / (entry.path or "")).is_file() and (newest is None or skipped > newest):
                newest = skipped
    for record in catalog.scan(storage, job):
        if record.status != catalog.GOOD:
            continue
        moment = record.created_at
        if record.manifest is not None:
            with contextlib.suppress(ValueError):  # else the file name's second-precision time
                moment = datetime.fromisoformat(record.manifest.started_at)
        if moment is not None and (newest is None or moment > newest):
            newest = moment
    return newest


def was_interrupted(storage: Path, job: str) -> bool:
    """Whether a planned stop cut the job's last attempt at some database short."""
    history = read_history(storage).get(job)
    return history is not None and any(record.last_status == Status.INTERRUPTED for record in history.databases)


class PlanTrigger(BaseTrigger):  # type: ignore[misc]  # APScheduler 3 ships no type hints
    """Fires on the job's plan (read afresh each time), after an optional one-off catch-up run.

    After a long pause (a suspended machine) it returns the latest missed time instead of every
    one of them, so APScheduler neither loops through them nor starts more than one run.
    """

    def __init__(self, plan_of: Callable[[], Plan | None], catch_up_at: datetime | None = None) -> None:
        self._plan_of = plan_of
        self._catch_up_at = catch_up_at

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        plan = self._plan_of()
        if plan is None:
            return None
        if previous_fire_time is None:
            first = first_fire_at_or_after(plan, now)
            if self._catch_up_at is not None and self._catch_up_at < first:
                return self._catch_up_at
            return first
        following = next_fire_after(plan, previous_fire_time)
        if following < now:
            latest = previous_fire_at_or_before(plan, now)
            if latest is not None and latest > following:
                return latest
        return following

    def __str__(self) -> str:
        return "backup-agent plan"


# APScheduler logs job outcomes the daemon reports itself as structured events (job.error, job.missed,
# job.overlap_skipped) through its listener: its executor's lines are all about jobs, the scheduler's
# warnings are the overlap skip; its errors (a broken executor or listener) still reach the log.
_SCHEDULER_LOG_LEVELS = {"apscheduler.executors": logging.CRITICAL, "apscheduler.scheduler": logging.ERROR}


class Daemon:
    """Runs the scheduled jobs of one config until a stop signal; see docs/daemon.md."""

    def __init__(self, config: Config, config_path: Path, *, host: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.layout = StorageLayout(config.storage.path)
        self.host = host or socket.gethostname()
        self.log = log.get_logger()
        self._stop_signal: int | None = None
        self._reload_requested = False
        self._wake = threading.Event()  # set by the signal handlers so the idle main thread reacts at once
        self._slots = threading.BoundedSemaphore(config.daemon.max_concurrent_dumps)
        self._active: dict[str, int] = {}
        self._active_lock = threading.Lock()
        self.scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(MAX_WORKERS)},
            job_defaults=job_defaults(config),
        )

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stop_signal is not None

    def run(self) -> int:
        """Take the storage's daemon lock and run until SIGTERM/SIGINT; the exit code."""
        self.layout.prepare()
        root = self.layout.root
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(exclusive_lock(self.layout.lock_file("daemon"), f"a daemon for storage {root}"))
            except LockedError as error:
                # Every minute under cron: not worth a line in the log, nor a mail from cron.
                self.log.debug("daemon.already_running", error=str(error))
                raise DaemonRunning(str(error)) from None
            return self._run_locked()

    def _run_locked(self) -> int:
        previous_handlers = self._install_signal_handlers()
        started = time.monotonic()
        try:
            for name, level in _SCHEDULER_LOG_LEVELS.items():
                logging.getLogger(name).setLevel(level)
            self.scheduler.add_listener(
                self._on_scheduler_event, EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES
            )
            self.scheduler.start(paused=True)
            self._write_record()
            self.log.info(
                "daemon.started",
                pid=os.getpid(),
                version=__version__,
                config=str(self.config_path),
                storage=str(self.layout.root),
                jobs=sorted(self.config.jobs),
                max_concurrent_dumps=self.config.daemon.max_concurrent_dumps,
            )
            self._schedule(catch_up_for=set(self.config.jobs))
            self.scheduler.resume()
            clocks = (time.time(), time.monotonic())
            while self._stop_signal is None:
                if self._reload_requested:
                    self._reload_requested = False
                    self.reload()
                self._wake.wait(IDLE_SECONDS)  # signal handlers set it: no polling while idle
                self._wake.clear()
                previous, clocks = clocks, (time.time(), time.monotonic())
                jump = clock_jump(previous, clocks)
                if jump is not None:
                    self._clock_jumped(jump)
            return self._shutdown(started)
        finally:
            remove_daemon_record(self.layout.root)
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)

    def _write_record(self) -> None:
        """`.agent/daemon.json` for `status` (pid, since, config); running only while the lock is held."""
        record = DaemonRecord(
            pid=os.getpid(),
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
            config=str(self.config_path),
            version=__version__,
            host=self.host,
        )
        try:
            write_daemon_record(self.layout.root, record)
        except OSError as error:
            self.log.error("daemon.record_failed", error=str(error))

    def _install_signal_handlers(self) -> dict[int, Any]:
        def stop(signum: int, _frame: FrameType | None) -> None:
            if self._stop_signal is None:
                self._stop_signal = signum
            self._wake.set()

        def reload(_signum: int, _frame: FrameType | None) -> None:
            self._reload_requested = True
            self._wake.set()

        handlers: dict[int, Any] = {}
        for signum, handler in ((signal.SIGTERM, stop), (signal.SIGINT, stop), (signal.SIGHUP, reload)):
            handlers[signum] = signal.signal(signum, handler)
        return handlers

    def _shutdown(self, started: float) -> int:
        """Stop scheduling; running dumps see the flag, kill their tools and remove their partials."""
        signum = self._stop_signal or signal.SIGTERM
        signal_name = signal.Signals(signum).name
        timeout = self.config.daemon.shutdown_timeout.total_seconds()
        deadline = time.monotonic() + timeout
        self.log.info("daemon.stopping", signal=signal_name, running=self._running_jobs())
        self.scheduler.shutdown(wait=False)
        while self._running_jobs() and time.monotonic() < deadline:
            time.sleep(0.1)
        left = self._running_jobs()
        uptime = round(time.monotonic() - started, 1)
        if left:
            killed = process.kill_running_children()  # no dump tool may outlive the daemon
            self.log.error("daemon.shutdown_timeout", jobs=left, shutdown_timeout=timeout, killed_pids=killed)
            self.log.info("daemon.stopped", signal=signal_name, clean=False, uptime=uptime)
            logging.shutdown()
            # a pool thread is stuck; a normal exit would wait for it forever (the next run sweeps
            # whatever partial file it leaves)
            os._exit(EXIT_FAILED)
        self.log.info("daemon.stopped", signal=signal_name, clean=True, uptime=uptime)
        return EXIT_OK

    def _clock_jumped(self, seconds: float) -> None:
        """The wall clock was set (or the machine resumed): plan every job afresh, as at a start,
        so a jump forward costs at most one catch-up run and a jump back does not stall the jobs."""
        self.log.warning(
            "daemon.clock_jumped",
            seconds=round(seconds, 1),
            direction="forward" if seconds > 0 else "backward",
            now=datetime.now(UTC).isoformat(),
        )
        self._schedule(catch_up_for=set(self.config.jobs))

    # --- planning ------------------------------------------------------------------------------

    def plan(self, name: str) -> Plan | None:
        """The job's current plan (the before-snapshots estimate from its recent durations)."""
        config = self.config
        job = config.jobs.get(name)
        if job is None:
            return None
        durations: list[float] = []
        if job.schedule.kind == BEFORE_SNAPSHOTS:
            durations = recent_durations(config.storage.path, name)
        return plan_for(job, config.snapshots, self.host, durations)

    def _schedule(self, catch_up_for: set[str]) -> None:
        """(Re)add every scheduled job of the current config; owed catch-up runs come first."""
        config = self.config
        now = datetime.now(UTC)
        for job in self.scheduler.get_jobs():
            is_drill = job.id.startswith(DRILL_PREFIX)
            if (self.drill_plan(job.id.removeprefix(DRILL_PREFIX)) if is_drill else self.plan(job.id)) is None:
                job.remove()
        for name in config.jobs:
            plan = self.plan(name)
            if plan is None:
                self.log.info("schedule.manual", job=name)
                continue
            try:
                first_fire_at_or_after(plan, now)
            except ValueError as error:  # a cron date that never comes, e.g. "0 0 31 2 *"
                self.log.error("schedule.invalid", job=name, error=str(error))
                if self.scheduler.get_job(name) is not None:
                    self.scheduler.remove_job(name)
                continue
            self._add(config, name, plan, now, check_catch_up=name in catch_up_for)
        self._schedule_drills(config)
        record_next_runs(config.storage.path, {name: self._next_run(name) for name in config.jobs})

    def drill_plan(self, name: str) -> Plan | None:
        """A job's restore-drill schedule (`[jobs.NAME.drill]`), planned like any job's."""
        job = self.config.jobs.get(name)
        if job is None or job.drill is None:
            return None
        as_job = dataclasses.replace(job, schedule=job.drill.schedule, timezone=job.drill.timezone)
        return plan_for(as_job, None, self.host)

    def _schedule_drills(self, config: Config) -> None:
        for name in config.jobs:
            plan = self.drill_plan(name)
            if plan is None:
                continue
            scheduled = self.scheduler.add_job(
                self._run_drill,
                PlanTrigger(functools.partial(self.drill_plan, name)),
                args=(name,),
                id=f"{DRILL_PREFIX}{name}",
                name=f"drill of {name}",
                replace_existing=True,
                **job_defaults(config),
            )
            self.log.info(
                "schedule.planned", job=name, drill=True, next_run=_iso(scheduled.next_run_time), **plan.describe()
            )

    def _run_drill(self, name: str) -> None:
        """A scheduled drill takes a dump slot too: it restores a whole database on the same server."""
        config = self.config
        if name not in config.jobs or self.stopping:
            return
        logger = log.get_logger(job=name)
        with self._slots:
            if self.stopping:
                return
            try:
                drill_job(config, name)  # records, alerts, and never raises for a failed drill
            except Exception as error:  # a bug: one structured line, never APScheduler's job.error
                logger.error("drill.failed", reason="internal_error", error=f"{type(error).__name__}: {error}")

    def _add(self, config: Config, name: str, plan: Plan, now: datetime, *, check_catch_up: bool) -> None:
        last_good = last_good_backup(config.storage.path, name) if check_catch_up else None
        if check_catch_up and was_interrupted(config.storage.path, name):
            last_good = None  # the last run was cut short by a stop: its databases are owed a run
        owed = catch_up(plan, now, last_good) if check_catch_up else None
        trigger = PlanTrigger(functools.partial(self.plan, name), owed.run_at if owed else None)
        scheduled = self.scheduler.add_job(
            self._run_scheduled,
            trigger,
            args=(name,),
            id=name,
            name=name,
            replace_existing=True,
            **job_defaults(config),
        )
        self.log.info("schedule.planned", job=name, next_run=_iso(scheduled.next_run_time), **plan.describe())
        if owed is not None:
            self.log.info(
                "schedule.catch_up",
                job=name,
                run_at=_iso(owed.run_at),
                missed=_iso(owed.missed),
                last_good=_iso(last_good),
            )

    def _next_run(self, name: str) -> datetime | None:
        job = self.scheduler.get_job(name)
        moment = getattr(job, "next_run_time", None) if job is not None else None
        return moment if isinstance(moment, datetime) else None

    # --- reload --------------------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: a valid config replaces the jobs; an invalid one is logged and the old one kept."""
        self.log.info("config.reload_requested", config=str(self.config_path))
        try:
            config = load_config(self.config_path)
        except AgentError as error:
            problems = error.problems if isinstance(error, ConfigError) else [str(error)]
            self.log.error("config.reload_failed", config=str(self.config_path), errors=problems)
            return
        if config.storage.path != self.config.storage.path:
            self.log.error(
                "config.reload_failed",
                config=str(self.config_path),
                errors=[f"storage.path changed to {config.storage.path}; restart the daemon to move storage"],
            )
            return
        configure_logging(config)
        old = self.config
        self.config = config
        if config.daemon.max_concurrent_dumps != old.daemon.max_concurrent_dumps:
            self._slots = threading.BoundedSemaphore(config.daemon.max_concurrent_dumps)
        added = sorted(set(config.jobs) - set(old.jobs))
        removed = sorted(set(old.jobs) - set(config.jobs))
        changed = sorted(name for name in config.jobs if name in old.jobs and old.jobs[name] != config.jobs[name])
        self._schedule(catch_up_for=set(added))
        self.log.info("config.reloaded", config=str(self.config_path), added=added, removed=removed, changed=changed)

    # --- one scheduled run -----------------------------------------------------------------------

    def _running_jobs(self) -> list[str]:
        with self._active_lock:
            return sorted(name for name, count in self._active.items() if count)

    def _mark_active(self, name: str, change: int) -> None:
        with self._active_lock:
            self._active[name] = self._active.get(name, 0) + change

    def _run_scheduled(self, name: str) -> None:
        """What APScheduler calls: one run, retried a few times if the server cannot be reached."""
        config = self.config
        job = config.jobs.get(name)
        if job is None or self.stopping:
            return
        logger = log.get_logger(job=name)
        self._mark_active(name, 1)
        try:
            for attempt in range(CONNECT_RETRIES + 1):
                outcome = self._run_once(config, name, logger)
                if outcome is None or not _connection_failed(outcome) or self.stopping:
                    return
                if attempt == CONNECT_RETRIES:
                    logger.error("job.gave_up", attempts=attempt + 1, reason=outcome.reason, error=outcome.message)
                    return
                delay = retry_delay(job, attempt + 1)
                next_run = self._next_run(name)
                if next_run is not None and datetime.now(UTC) + delay >= next_run:
                    logger.error(
                        "job.gave_up",
                        attempts=attempt + 1,
                        reason=outcome.reason,
                        error=outcome.message,
                        next_run=_iso(next_run),
                    )
                    return
                logger.warning(
                    "job.retry",
                    attempt=attempt + 1,
                    delay=delay.total_seconds(),
                    reason=outcome.reason,
                    error=outcome.message,
                )
                if not self._sleep(delay.total_seconds()):
                    return
        finally:
            self._mark_active(name, -1)

    def _run_once(self, config: Config, name: str, logger: Any) -> RunOutcome | None:
        slots = self._slots
        if not slots.acquire(blocking=False):
            waiting_since = time.monotonic()
            logger.info("job.waiting_for_slot", max_concurrent_dumps=config.daemon.max_concurrent_dumps)
            while not slots.acquire(timeout=SLOT_POLL_SECONDS):
                if self.stopping:
                    logger.info("job.cancelled", reason="shutdown")
                    return None
            logger.info("job.slot_acquired", waited=round(time.monotonic() - waiting_since, 3))
        if self.stopping:
            slots.release()
            logger.info("job.cancelled", reason="shutdown")
            return None
        try:
            logger.info("job.started")
            outcome = run_job(config, name, should_stop=lambda: self.stopping, next_run=lambda: self._next_run(name))
        finally:
            slots.release()
        next_run = self._next_run(name)
        fields: dict[str, Any] = {
            "run_id": outcome.run_id,
            "status": _status_of(outcome),
            "duration": outcome.duration_seconds,
            "databases_ok": sum(1 for target in outcome.targets if target.status == Status.OK),
            "databases_failed": sum(1 for target in outcome.targets if target.status != Status.OK),
            "next_run": _iso(next_run),
        }
        if outcome.ok:
            logger.info("job.finished", **fields)
        else:
            reasons = [outcome.reason] if outcome.reason else []
            reasons += [target.reason for target in outcome.targets if target.status != Status.OK]
            level = logger.warning if outcome.status == Status.SKIPPED or outcome.interrupted else logger.error
            level("job.finished", reason=",".join(dict.fromkeys(reasons)) or outcome.status, **fields)
        return outcome

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless the daemon is stopping; False when it is."""
        deadline = time.monotonic() + seconds
        while not self.stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            time.sleep(min(POLL_SECONDS, remaining))
        return False

    # --- APScheduler's own events -----------------------------------------------------------------

    def _on_scheduler_event(self, event: Any) -> None:
        logger = log.get_logger(job=event.job_id)
        if event.code == EVENT_JOB_ERROR:
            logger.error(
                "job.error",
                scheduled=_iso(event.scheduled_run_time),
                error=repr(event.exception),
                traceback=event.traceback,
            )
        elif event.code == EVENT_JOB_MISSED:
            logger.warning(
                "job.missed",
                scheduled=_iso(event.scheduled_run_time),
                misfire_grace_time=self.config.daemon.misfire_grace_time.total_seconds(),
            )
        elif event.code == EVENT_JOB_MAX_INSTANCES:
            logger.warning(
                "job.overlap_skipped",
                scheduled=[_iso(moment) for moment in event.scheduled_run_times],
                reason="the previous run of this job is still going",
            )


def _status_of(outcome: RunOutcome) -> Status:
    """ok, skipped, interrupted (a planned stop), or failed (also when only some databases failed)."""
    if outcome.ok:
        return Status.OK
    if outcome.interrupted:
        return Status.INTERRUPTED
    return Status.SKIPPED if outcome.status == Status.SKIPPED else Status.FAILED


def _connection_failed(outcome: RunOutcome) -> bool:
    return outcome.status == Status.FAILED and outcome.reason == Reason.CONNECTION_FAILED


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment is not None else None


def run_daemon(config: Config, config_path: Path) -> int:
    """The `run` verb: the daemon in the foreground until SIGTERM/SIGINT; 0 after a clean stop."""
    memory.use_one_arena()  # before the scheduler's threads: what a run frees can all go back
    return Daemon(config, config_path).run()
