"""One job run: lock -> sweep partials -> probe -> for each target: dump -> check -> publish -> manifest.

A failure of one database never stops the others; each ends as exactly one log event
(`backup.finished` or `backup.failed`) and a failed dump leaves no file behind.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from structlog.stdlib import BoundLogger

from agent import __version__, engines, journal, unchanged
from agent.activity import PROGRESS_EVERY_SECONDS, ProgressRecorder
from agent.budget import InsufficientSpaceError
from agent.busy import BusyReading, BusySampler
from agent.catalog import GOOD, BackupRecord
from agent.compression import CompressionSettings, worker_threads
from agent.config import Config, JobConfig
from agent.engines.base import ChangeToken, DumpTarget, Engine, EngineContext, ServerInfo, StreamCheck
from agent.errors import AgentError, ConnectionFailed, DumpError, LockedError, UntrustedServer, permission_problem
from agent.immutable import ImmutableUnsupported, set_immutable
from agent.labels import BackupLabel
from agent.limits import current_memory_limit, current_usable_cpus
from agent.log import get_logger, register_secret
from agent.manifest import Manifest, ManifestError, manifest_path, manifest_scope, read_manifest, write_manifest
from agent.naming import PARTIAL_SUFFIX, backup_filename, encode_name, parse_backup_filename
from agent.outcome import Reason, RunOutcome, Status, TargetKind, TargetOutcome
from agent.pressure import Pacer, new_pacer
from agent.process import KILL_GRACE, StreamLimits, own_priority
from agent.progress import CallbackWatcher, LogWatcher, Meter, Watcher
from agent.prune import DumpSpace, Inventory, apply_after_dump, prepare_dump, take_inventory
from agent.storage import StorageLayout, exclusive_lock
from agent.verify import OK, verify_file
from agent.writer import DumpWriter, PublishedFile, ensure_directory

BeforeDumps = Callable[[str | None, RunOutcome], bool]
"""Called under the job lock before anything else; False (with the outcome set) ends the run."""


def folder_for(target: DumpTarget, engine_name: str) -> str:
    """The folder (and file-name component) of a target: `_globals`, `_grants`, or the encoded name."""
    if target.kind != "database":
        return f"_{target.kind}"
    return encode_name(engines.family(engine_name).folder_name(target.database))


GENTLE = "gentle"
# zstd workers `impact = "gentle"` leaves to the application. 0: leaving one of two cores made the
# niced backup 3x slower on a busy machine with no gain in the application's p99 (docs/performance.md)
GENTLE_SPARE_CORES = 0


def impact_of(config: Config, job: JobConfig) -> str:
    return job.impact or config.storage.impact


def compression_of(config: Config, job: JobConfig | None = None) -> CompressionSettings:
    """The storage's compression; `threads = -1` resolved to the cores and memory the container allows."""
    storage = config.storage
    spare = GENTLE_SPARE_CORES if job is not None and impact_of(config, job) == GENTLE else 0
    settings = CompressionSettings(storage.compression, storage.level)
    level = settings.effective_level if storage.compression == "zstd" else None
    threads = worker_threads(
        storage.threads,
        current_usable_cpus(),
        spare_cores=spare,
        memory_limit=current_memory_limit(),
        level=level if level is not None else 3,
    )
    return CompressionSettings(storage.compression, storage.level, threads)


def _reason_for(error: BaseException) -> str:
    if not isinstance(error, AgentError | OSError):
        return Reason.INTERNAL_ERROR
    if isinstance(error, DumpError | UntrustedServer):
        return error.reason
    if isinstance(error, ConnectionFailed):
        return Reason.CONNECTION_FAILED
    if isinstance(error, OSError):
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            return Reason.NO_SPACE
        return Reason.PERMISSION if isinstance(error, PermissionError) else Reason.IO_ERROR
    return type(error).__name__.removesuffix("Error").lower() or "error"


def _message_for(error: BaseException, reason: str) -> str:
    if isinstance(error, PermissionError):
        return permission_problem(error)
    return str(error) if reason != Reason.INTERNAL_ERROR else f"{type(error).__name__}: {error}"


def _failed(target: DumpTarget, error: Exception, log: BoundLogger, *, stopping: bool = False) -> TargetOutcome:
    """Log one target's failure (reason, message, the tool's stderr tail; the traceback of an
    unexpected error) and return its outcome. A dump cut short by a planned stop (`stopping`, or
    the tool stopped for shutdown) is interrupted, not failed: a warning, rerun at the next start."""
    reason = _reason_for(error)
    if stopping or reason == Reason.SHUTDOWN:
        log.warning("backup.interrupted", reason=Reason.SHUTDOWN, error=str(error))
        return TargetOutcome(
            target.database, TargetKind(target.kind), Status.INTERRUPTED, reason=Reason.SHUTDOWN, message=str(error)
        )
    message = _message_for(error, reason)
    tail = error.stderr_tail if isinstance(error, DumpError) else ""
    traceback = error if reason == Reason.INTERNAL_ERROR else None
    log.error("backup.failed", reason=reason, error=message, stderr_tail=tail[-2000:], exc_info=traceback)
    return TargetOutcome(target.database, TargetKind(target.kind), Status.FAILED, reason=reason, message=message)


def _abandon(check: StreamCheck | None, writer: DumpWriter | None) -> None:
    """A dump that ends early: stop its check and remove its partial file."""
    if check is not None:
        check.abort()
    if writer is not None:
        writer.abort()


def _pacing_fields(pacer: Pacer | None, paused_before: float, busy_before: float) -> dict[str, float]:
    """How long the gentle impact paused this dump because the machine (agent/pressure.py) or the
    database (agent/busy.py) was busy."""
    if pacer is None or pacer.paused_seconds <= paused_before:
        return {}
    paused = round(pacer.paused_seconds - paused_before, 2)
    fields = {"paced_seconds": paused, "paced_share": round(pacer.highest_share, 2)}
    if pacer.busy_paused_seconds > busy_before:
        fields["paced_database_busy_seconds"] = round(pacer.busy_paused_seconds - busy_before, 2)
    return fields


@contextlib.contextmanager
def busy_pacing(engine: Engine, pacer: Pacer | None, log: BoundLogger) -> Iterator[None]:
    """While the run dumps, a gentle pacer also follows the database's own load (agent/busy.py)."""
    if pacer is None:
        yield
        return
    try:
        probe = engine.busy_probe()
    except Exception as error:  # no sampler is no reason to fail a backup: pressure pacing remains
        log.warning("backup.busy_unavailable", error=str(error))
        probe = None
    if probe is None:
        yield
        return
    sampler = BusySampler(probe, log).start()
    pacer.busy = sampler
    try:
        yield
    finally:
        pacer.busy = None
        sampler.close()


def sweep_partials(layout: StorageLayout, job: str, run_id: str) -> list[Path]:
    """Remove a crashed run's `.partial` files and scratch copies; call only under the job lock."""
    log = get_logger(run_id=run_id, job=job)
    removed: list[Path] = []
    job_directory = layout.job_directory(job)
    candidates: list[Path] = []
    if job_directory.is_dir() and not job_directory.is_symlink():  # never sweep through a planted link
        for folder in job_directory.iterdir():
            if folder.is_dir() and not folder.is_symlink():
                candidates.extend(path for path in folder.iterdir() if path.name.endswith(PARTIAL_SUFFIX))
    scratch = layout.scratch(job)
    if scratch.is_dir():
        candidates.extend(scratch.iterdir())
    for path in candidates:
        try:
            size = path.lstat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
        log.warning("backup.partial_removed", path=str(path), bytes=size)
    return removed


class JobRun:
    """One run's shared pieces, so each target's dump is a short method.

    It knows nothing of hooks, alerts, records or metrics: agent/observed.py composes it with them,
    and hands in `before_dumps` for what must happen under the job lock.
    """

    def __init__(
        self,
        config: Config,
        job: JobConfig,
        should_stop: Callable[[], bool],
        *,
        before_dumps: BeforeDumps | None = None,
        label: BackupLabel | None = None,
        progress: Watcher | None = None,
    ) -> None:
        self.config = config
        self.label = label  # `backup --label`: in every manifest of the run
        self.progress = progress  # the CLI's terminal line, when a person watches
        self.job = job
        self.run_id = uuid.uuid4().hex[:12]
        self.layout = StorageLayout(config.storage.path)
        self.log = get_logger(run_id=self.run_id, job=job.name)
        self.limits = StreamLimits(
            timeout=job.timeout.total_seconds(),
            stall_timeout=job.stall_timeout.total_seconds(),
            should_stop=should_stop,
            # a tool ignoring SIGTERM is SIGKILLed well within the shutdown timeout
            kill_grace=min(KILL_GRACE, config.daemon.shutdown_timeout.total_seconds() / 2),
            pacer=new_pacer() if impact_of(config, job) == GENTLE else None,
        )
        self.host = socket.gethostname()
        self._before_dumps = before_dumps
        self._inventory: Inventory | None = None  # what is on disk: scanned once, then kept up to date
        self._immutable_warned = False  # one warning per run when the attribute cannot be set

    def execute(self, database: str | None) -> RunOutcome:
        outcome = RunOutcome(self.job.name, self.run_id)
        started = time.monotonic()
        try:
            self.layout.prepare()
            with (
                exclusive_lock(self.layout.lock_file(f"job-{self.job.name}"), f"a backup of job {self.job.name}"),
                self._priority(),
            ):
                self._run_locked(database, outcome)
        except LockedError as error:
            outcome.status, outcome.reason, outcome.message = Status.SKIPPED, Reason.LOCKED, str(error)
            self.log.warning("backup.skipped", reason=Reason.LOCKED, error=str(error))
        except Exception as error:  # a bug outside any one dump: a failed run (alerted), never a crash
            reason = _reason_for(error)  # an unwritable storage folder is `permission`, not a bug
            outcome.status, outcome.reason = Status.FAILED, reason
            outcome.message = _message_for(error, reason)
            traceback = error if reason == Reason.INTERNAL_ERROR else None
            self.log.error("backup.failed", reason=reason, error=outcome.message, exc_info=traceback)
        outcome.duration_seconds = round(time.monotonic() - started, 3)
        return outcome

    def _priority(self) -> contextlib.AbstractContextManager[None]:
        """Gentle: the whole run (this thread, zstd's workers, the dump tool) at the job's nice;
        fastest: only the dump tool (agent/process.py)."""
        if impact_of(self.config, self.job) == GENTLE:
            return own_priority(self.job.nice)
        return contextlib.nullcontext()

    def _run_locked(self, database: str | None, outcome: RunOutcome) -> None:
        if self._before_dumps is not None and not self._before_dumps(database, outcome):
            return
        sweep_partials(self.layout, self.job.name, self.run_id)
        scratch = self.layout.prepare_scratch(self.job.name)
        engine = engines.engine_class(self.job.engine)(self.job, EngineContext(self.layout.root, scratch, self.limits))
        try:
            secret = self.job.password.read()
            if secret is not None:
                register_secret(secret.reveal())
            info = engine.probe()
            targets = engine.targets(database)
        except AgentError as error:
            if self.limits.should_stop():
                outcome.status, outcome.reason, outcome.message = Status.INTERRUPTED, Reason.SHUTDOWN, str(error)
                self.log.warning("backup.interrupted", reason=Reason.SHUTDOWN, error=str(error))
                return
            outcome.status, outcome.reason, outcome.message = Status.FAILED, _reason_for(error), str(error)
            self.log.error("backup.failed", reason=outcome.reason, error=str(error))
            return
        with engine.around_dumps(), busy_pacing(engine, self.limits.pacer, self.log):
            self._dump_targets(engine, info, targets, outcome)
        self._apply_retention(outcome)

    def _dump_targets(self, engine: Engine, info: ServerInfo, targets: list[DumpTarget], outcome: RunOutcome) -> None:
        for target in targets:
            if self.limits.should_stop():  # a planned stop: what is left is interrupted, not failed
                outcome.targets.append(
                    TargetOutcome(
                        target.database,
                        TargetKind(target.kind),
                        Status.INTERRUPTED,
                        reason=Reason.SHUTDOWN,
                        message="not started: the agent is shutting down",
                    )
                )
                continue
            outcome.targets.append(self.dump_target(engine, info, target))

    def dump_target(self, engine: Engine, info: ServerInfo, target: DumpTarget) -> TargetOutcome:
        folder = folder_for(target, self.job.engine)
        log = self.log.bind(database=target.database or folder, kind=target.kind)
        token = self._change_token(engine, target, log)
        if self.job.skip_unchanged:
            skipped = self._skip_if_unchanged(info, target, folder, token, log)
            if skipped is not None:
                return skipped
        space = self._preflight(engine, target, folder, log)
        if isinstance(space, TargetOutcome):
            return space
        outcome = self._dump(engine, info, target, folder=folder, space=space, log=log, token=token)
        self._keep_inventory(space, outcome, folder)
        return outcome

    def _change_token(self, engine: Engine, target: DumpTarget, log: BoundLogger) -> ChangeToken | None:
        """With skip_unchanged, the engine's change token, read before the dump (so it never claims a
        change the dump may have missed); it goes into the new manifest. None: nothing proved."""
        if not self.job.skip_unchanged:
            return None
        try:
            token = engine.change_token(target)
        except (AgentError, OSError) as error:
            log.warning("backup.change_token_failed", error=str(error))  # then dumped: nothing is proved
            return None
        if token is None:
            return None
        return {**token, unchanged.SETTINGS_PART: unchanged.settings_digest(self.job, target.database)}

    def _skip_if_unchanged(
        self, info: ServerInfo, target: DumpTarget, folder: str, token: ChangeToken | None, log: BoundLogger
    ) -> TargetOutcome | None:
        """A skip (journaled, logged), when the newest good backup provably still holds the database."""
        if self.label is not None:
            log.info("backup.change_check", unchanged=False, reason=unchanged.LABELLED)
            return None
        if self._inventory is None:
            self._inventory = take_inventory(self.config)
        newest = unchanged.newest_good(self._inventory.records.values(), self.job.name, folder)
        manifest = None
        if newest is not None:  # read afresh: the token is in the whole manifest, not a listing's summary
            with contextlib.suppress(ManifestError):
                manifest = read_manifest(manifest_path(newest.path))
        why = unchanged.why_not_unchanged(token, manifest, engine=self.job.engine, server=info.server, target=target)
        if why is not None or newest is None or manifest is None:
            log.info("backup.change_check", unchanged=False, reason=why)
            return None
        finding = verify_file(newest.path, self.layout.root)
        if finding.status != OK:
            log.warning(
                "backup.change_check",
                unchanged=False,
                reason=unchanged.NOT_VERIFIED,
                path=str(newest.path),
                problem=f"{finding.status}: {finding.message}",
            )
            return None
        relative = str(newest.path.relative_to(self.layout.root))
        try:
            journal.append(
                self.layout.root,
                journal.Event.SKIPPED,
                path=relative,
                sha256=manifest.sha256,
                run_id=self.run_id,
                job=self.job.name,
                database=target.database,
                reason=unchanged.UNCHANGED,
            )
        except OSError as error:  # a skip nobody can see later would make status lie: dump instead
            log.error("journal.write_failed", error=str(error), path=relative)
            return None
        log.info(
            "backup.skipped",
            reason=unchanged.UNCHANGED,
            path=str(newest.path),
            relies_on=relative,
            sha256=manifest.sha256,
            backup_started_at=manifest.started_at,
        )
        return TargetOutcome(
            target.database,
            TargetKind(target.kind),
            Status.OK,
            path=newest.path,
            reason=unchanged.UNCHANGED,
            message=f"unchanged since the backup of {manifest.started_at}",
            manifest=manifest,
            unchanged=True,
        )

    def _keep_inventory(self, space: DumpSpace, outcome: TargetOutcome, folder: str) -> None:
        """The run's own changes to the disk, so the next target's prediction needs no new scan."""
        if self._inventory is None:
            return
        added = []
        if outcome.status == Status.OK and outcome.path is not None and outcome.manifest is not None:
            parsed = parse_backup_filename(outcome.path.name)
            created = parsed.created_at if parsed else None
            added.append(BackupRecord(self.job.name, folder, outcome.path, created, GOOD, outcome.manifest))
        removed = [decision.backup.key for decision in space.deleted]
        self._inventory = self._inventory.changed(self.config, added=added, removed=removed)

    def _dump(
        self,
        engine: Engine,
        info: ServerInfo,
        target: DumpTarget,
        *,
        folder: str,
        space: DumpSpace,
        log: BoundLogger,
        token: ChangeToken | None = None,
    ) -> TargetOutcome:
        compression = compression_of(self.config, self.job)
        started_at = datetime.now(UTC)
        started = time.monotonic()
        log.info("backup.started", compression_threads=compression.threads)  # the container's cores, not the host's
        paused_before, busy_before = self._pacing_start(log)
        extension = target.extension + compression.extension

        def name_for(sequence: int) -> str:
            return backup_filename(self.job.name, folder, started_at, extension, sequence)

        writer: DumpWriter | None = None
        check = None
        progress = ProgressRecorder(  # `status` shows the dump in progress from this small record
            self.layout.root,
            self.job.name,
            database=target.database or folder,
            kind=target.kind,
            run_id=self.run_id,
            expected_bytes=space.expected_raw_bytes,
        ).start()
        meter = self._meter(target.database or folder, space, progress, log)
        try:
            job_directory = ensure_directory(self.layout.job_directory(self.job.name))  # never a symlink
            writer = DumpWriter(
                job_directory / folder,
                name_for,
                compression,
                max_write_rate=self.config.storage.max_write_rate,
                space=space,  # asked for room before every stretch of bytes lands
                burst_bytes=space.check_every,
            )
            check = engine.new_check(target.format, info.tool)
            active_writer, active_check = writer, check

            def sink(data: bytes) -> None:
                active_check.feed(data)
                active_writer.write(data)
                meter.advance(len(data))

            details = engine.dump(target, space.watch(sink))
            if writer.raw_bytes == 0:
                raise DumpError("the dump is empty", "empty")
            check.finish()
            details = engine.checked(check, details)
            published = writer.commit()
        except Exception as error:  # one database's failure, even a bug's, never stops the others
            _abandon(check, writer)
            return _failed(target, error, log, stopping=self.limits.should_stop())
        except BaseException:
            _abandon(check, writer)
            log.warning("backup.interrupted", reason=Reason.INTERRUPTED, error="the run was interrupted")
            raise
        finally:
            meter.finish()
            progress.finish()
        finished_at = datetime.now(UTC)
        manifest = Manifest(
            job=self.job.name,
            engine=self.job.engine,
            kind=TargetKind(target.kind),
            database=target.database,
            file=published.path.name,
            host=self.host,
            server=info.server,
            server_version=info.server_version,
            tool=info.tool,
            tool_version=info.tool_version,
            format=target.format,
            compression=compression.method,
            compression_level=compression.effective_level,
            started_at=started_at.isoformat(),
            finished_at=finished_at.isoformat(),
            duration_seconds=round(time.monotonic() - started, 3),
            raw_bytes=published.raw_bytes,
            stored_bytes=published.stored_bytes,
            predicted_bytes=space.predicted_bytes,
            sha256=published.sha256,
            run_id=self.run_id,
            agent_version=__version__,
            counts=details.counts,
            counts_consistent=details.counts_consistent,
            point_in_time=details.point_in_time,
            warnings=details.warnings,
            details=details.details,
            label=self.label.name if self.label is not None else None,
            keep_until=self.label.keep_until(finished_at) if self.label is not None else None,
            scope=manifest_scope(details.scope),
            change_token=token,
        )
        try:
            manifest_file = write_manifest(published.path, manifest)
        except (AgentError, OSError) as error:  # a full disk, a failed fsync, a name taken by someone
            writer.retract(published)
            return _failed(target, error, log)
        if self.config.storage.immutable:
            self._make_immutable((published.path, manifest_file), log)
        self._journal_created(published, log)
        for warning in details.warnings:
            log.warning("backup.warning", message=warning)
        log.info(
            "backup.finished",
            path=str(published.path),
            bytes=published.raw_bytes,
            stored_bytes=published.stored_bytes,
            sha256=published.sha256,
            duration=manifest.duration_seconds,
            **_pacing_fields(self.limits.pacer, paused_before, busy_before),
        )
        return TargetOutcome(
            target.database, TargetKind(target.kind), Status.OK, path=published.path, manifest=manifest
        )

    def _meter(self, database: str, space: DumpSpace, record: ProgressRecorder, log: BoundLogger) -> Meter:
        """One dump's progress: the status record, the log's `backup.progress`, and the terminal line."""
        watchers: list[Watcher] = [
            CallbackWatcher(PROGRESS_EVERY_SECONDS, record.record),
            LogWatcher(log, self.config.log.progress_every.total_seconds()),
        ]
        if self.progress is not None:
            watchers.append(self.progress)
        return Meter("backup", database, space.expected_raw_bytes, watchers, clock=time.monotonic)

    def _pacing_start(self, log: BoundLogger) -> tuple[float, float]:
        """The pacer's totals before this dump; its busy episodes are logged with this dump's fields."""
        pacer = self.limits.pacer
        if pacer is None:
            return 0.0, 0.0

        def log_busy(reading: BusyReading) -> None:
            log.info(
                "backup.paced",
                reason="database_busy",
                signal=reading.signal,
                busy=reading.value,
                threshold=reading.threshold,
            )

        pacer.on_busy = log_busy
        return pacer.paused_seconds, pacer.busy_paused_seconds

    def _journal_created(self, published: PublishedFile, log: BoundLogger) -> None:
        """The journal's `created` line; the backup is whole without it (its manifest says so),
        so a journal that cannot be written is logged, not fatal to the run's other databases."""
        try:
            journal.append(
                self.layout.root,
                journal.Event.CREATED,
                path=str(published.path.relative_to(self.layout.root)),
                sha256=published.sha256,
                bytes=published.stored_bytes,
                run_id=self.run_id,
            )
        except OSError as error:
            log.error("journal.write_failed", error=str(error), path=str(published.path))

    def _preflight(
        self, engine: Engine, target: DumpTarget, folder: str, log: BoundLogger
    ) -> DumpSpace | TargetOutcome:
        """Predict the dump and plan its room before it starts (retention and budget: agent/prune.py)."""
        kind = TargetKind(target.kind)
        try:
            if self._inventory is None:
                self._inventory = take_inventory(self.config)
            inventory = self._inventory
            return prepare_dump(self.config, self.job, engine, target, folder=folder, inventory=inventory, log=log)
        except InsufficientSpaceError as refusal:
            # The one place a refused dump is reported; alerts hook in here.
            log.error("backup.refused", reason=refusal.reason, error=str(refusal), **refusal.figures)
            return TargetOutcome(target.database, kind, Status.REFUSED, reason=refusal.reason, message=str(refusal))
        except (AgentError, OSError) as error:
            reason = _reason_for(error)
            log.error("backup.failed", reason=reason, error=f"before the dump: {error}")
            return TargetOutcome(target.database, kind, Status.FAILED, reason=reason, message=str(error))

    def _make_immutable(self, paths: tuple[Path, ...], log: BoundLogger) -> None:
        """`chattr +i` when configured; without the capability, one warning per run, then carry on."""
        try:
            for path in paths:
                set_immutable(path)
        except ImmutableUnsupported as error:
            if not self._immutable_warned:
                self._immutable_warned = True
                log.warning("storage.immutable_unavailable", error=error.strerror)

    def _apply_retention(self, outcome: RunOutcome) -> None:
        """After good dumps: their series' policy, and the disk budget."""
        folders = {
            target.path.parent.name
            for target in outcome.targets
            if target.status == Status.OK and target.path and not target.unchanged
        }
        if not folders:
            return
        try:
            apply_after_dump(self.config, self.job.name, folders, self.log)
        except (AgentError, OSError) as error:
            self.log.error("retention.failed", error=str(error))
