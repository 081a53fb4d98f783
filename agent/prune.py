"""Acting on retention plans: the only code that deletes published backups.

Three moments delete: just in time during a dump (`DumpSpace`: only as the dump's written bytes
need the room, so a dump that fails early costs no old backups), after a good dump
(`apply_after_dump`: the policy of the series that got a new backup, and the budget), and
`backup-agent prune` (`prune`). Each deletion is journaled, then the manifest goes, then the data
file. That order leaves, after a crash at any point, either the whole backup, or a data file
without a manifest: `incomplete`, never counted as a backup, and removed by the next prune with
rule "incomplete" (the newest good backup is never deleted, so it is always older). The reverse
order would leave a manifest without data that no listing shows and nothing cleans up.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from structlog.stdlib import BoundLogger

from agent import catalog, engines, journal, pins, retention
from agent.budget import (
    Budget,
    DiskFigures,
    InsufficientSpaceError,
    Prediction,
    allocated_bytes,
    check_interval,
    free_bytes_now,
    measure,
    predict,
    resolve_budget,
    shortfall,
)
from agent.config import Config, JobConfig
from agent.engines.base import DumpTarget, Engine, Sink
from agent.errors import AgentError, DumpError
from agent.immutable import clear_immutable
from agent.log import get_logger
from agent.manifest import manifest_path
from agent.naming import parse_backup_filename
from agent.retention import Decision, Plan, Series
from agent.units import format_size
from agent.writer import fsync_directory

# --------------------------------------------------------------------------------------------------
# What is on disk, as the planner sees it


@dataclass(frozen=True, slots=True)
class Inventory:
    series: tuple[Series, ...]
    records: dict[str, catalog.BackupRecord]  # by storage-relative path

    def history(self, job: str, folder: str) -> list[int]:
        """Stored sizes of a series' good backups, oldest first."""
        name = f"{job}/{folder}"
        for one in self.series:
            if one.name == name:
                ordered = sorted(one.backups, key=lambda backup: (backup.created_at, backup.sequence))
                return [self._stored(backup.key) for backup in ordered if backup.good]
        return []

    def _stored(self, key: str) -> int:
        manifest = self.records[key].manifest
        return manifest.stored_bytes if manifest is not None else 0

    def changed(
        self, config: Config, *, added: Iterable[catalog.BackupRecord] = (), removed: Iterable[str] = ()
    ) -> Inventory:
        """This inventory after a run's own changes (a backup published, others deleted), without a new scan."""
        gone = set(removed)
        grouped: dict[tuple[str, str], list[retention.Backup]] = {}
        for one in self.series:
            job, folder = one.name.split("/", 1)
            grouped[(job, folder)] = [backup for backup in one.backups if backup.key not in gone]
        records = {key: record for key, record in self.records.items() if key not in gone}
        for record in added:
            backup = _backup_of(config.storage.path, record, frozenset())
            if backup is not None:
                grouped.setdefault((record.job, record.folder), []).append(backup)
                records[backup.key] = record
        return _grouped(config, grouped, records)


def _backup_of(storage: Path, record: catalog.BackupRecord, pinned: frozenset[str]) -> retention.Backup | None:
    if record.created_at is None:
        return None
    key = record.path.relative_to(storage).as_posix()
    parsed = parse_backup_filename(record.path.name)
    return retention.Backup(
        key=key,
        created_at=record.created_at,
        size_bytes=allocated_bytes(record.path) + allocated_bytes(manifest_path(record.path)),
        good=record.status == catalog.GOOD,
        pinned=key in pinned,
        sequence=parsed.sequence if parsed else 0,
    )


def _grouped(
    config: Config, grouped: dict[tuple[str, str], list[retention.Backup]], records: dict[str, catalog.BackupRecord]
) -> Inventory:
    series = tuple(
        Series(f"{job}/{folder}", tuple(backups), config.jobs[job].retention, config.jobs[job].timezone)
        for (job, folder), backups in sorted(grouped.items())
        if backups
    )
    return Inventory(series, records)


def take_inventory(config: Config, jobs: Iterable[str] | None = None) -> Inventory:
    """Every backup of the given configured jobs (default: all), grouped into series, pins applied.

    Jobs no longer in the config are left alone: their policy is unknown.
    """
    storage = config.storage.path
    wanted = set(config.jobs if jobs is None else jobs)
    pinned = frozenset(pins.load(storage))
    grouped: dict[tuple[str, str], list[retention.Backup]] = {}
    records: dict[str, catalog.BackupRecord] = {}
    for record in catalog.scan(storage):
        if record.job not in wanted or record.status == catalog.PARTIAL:
            continue
        backup = _backup_of(storage, record, pinned)
        if backup is None:
            continue
        grouped.setdefault((record.job, record.folder), []).append(backup)
        records[backup.key] = record
    return _grouped(config, grouped, records)


# --------------------------------------------------------------------------------------------------
# Deleting


def _delete(
    storage: Path, decision: Decision, record: catalog.BackupRecord | None, log: BoundLogger, moment: str
) -> int:
    """Journal, then unlink the manifest, then the data file; returns the bytes given back."""
    path = storage / decision.backup.key
    manifest = manifest_path(path)
    freed = allocated_bytes(path) + allocated_bytes(manifest)
    sha256 = record.manifest.sha256 if record is not None and record.manifest is not None else None
    for victim in (manifest, path):
        clear_immutable(victim)
    journal.append(storage, journal.Event.DELETED, path=decision.backup.key, rule=decision.rule, sha256=sha256)
    for victim in (manifest, path):
        with contextlib.suppress(FileNotFoundError):
            victim.unlink()
    fsync_directory(path.parent)
    log.info(
        "retention.deleted",
        path=str(path),
        rule=decision.rule,
        bytes=freed,
        sha256=sha256,
        series=decision.series,
        created_at=decision.backup.created_at.isoformat(),
        moment=moment,
    )
    return freed


def _floor_or_pin(storage: Path, decision: Decision, keep_min: int) -> str | None:
    """Re-checked under the lock before a just-in-time deletion: the plan may be stale by then."""
    if decision.backup.key in pins.load(storage):
        return retention.PINNED
    job, folder = decision.series.split("/", 1)
    good = sorted(
        (
            record
            for record in catalog.scan(storage, job)
            if record.folder == folder and record.status == catalog.GOOD and record.created_at is not None
        ),
        key=lambda record: (record.created_at, _sequence(record.path.name)),
    )
    floor = {record.path.relative_to(storage).as_posix() for record in good[max(0, len(good) - keep_min) :]}
    return retention.KEEP_MIN if decision.backup.key in floor else None


def _sequence(name: str) -> int:
    parsed = parse_backup_filename(name)
    return parsed.sequence if parsed else 0


# --------------------------------------------------------------------------------------------------
# Before and during a dump


class DumpSpace:
    """Room for one running dump: planned before it starts, taken just in time as its bytes need it.

    The queue is every backup the budget may take, least protected first; the prediction decides
    only whether the dump may start. A dump that writes more than predicted keeps taking from the
    queue (never below keep_min, never a pin) and is stopped when nothing is left.
    """

    def __init__(
        self,
        config: Config,
        *,
        plan: Plan,
        figures: DiskFigures,
        budget: Budget,
        prediction: Prediction,
        inventory: Inventory,
        log: BoundLogger,
    ) -> None:
        self.predicted_bytes = prediction.stored_bytes
        self.check_every = check_interval(figures.total_bytes, budget)
        self.deleted: list[Decision] = []
        self._config = config
        self._budget = budget
        self._total = figures.total_bytes
        self._usage = figures.usage_bytes
        self._scratch = prediction.scratch_bytes
        self._queue = deque(plan.queue)
        self._inventory = inventory
        self._log = log

    def watch(self, sink: Sink) -> Sink:
        """Wrap the dump's byte sink: room for an engine's scratch copy is made now (the engine
        writes it before the first byte arrives), room for the dump itself only once bytes
        arrive, so a dump that fails before writing costs no old backups."""
        if self._scratch:
            self._make_room(0, self._scratch)
        started = False

        def first_bytes_make_room(data: bytes) -> None:
            nonlocal started
            if not started:
                started = True
                self._make_room(self._scratch, self._slack)
            sink(data)

        return first_bytes_make_room

    def progress(self, stored_bytes: int) -> None:
        """The writer's progress hook: keep room for the next stretch of the dump."""
        self._make_room(stored_bytes + self._scratch, self._slack)

    @property
    def _slack(self) -> int:
        # bytes that may be written before the next check: the interval and one oversized chunk
        return 2 * self.check_every

    def _make_room(self, written: int, upcoming: int) -> None:
        storage = self._config.storage
        while True:
            usage = self._usage + written
            figures = DiskFigures(self._total, free_bytes_now(storage, usage), usage)
            if shortfall(figures, self._budget, upcoming) <= 0:
                return
            if not self._queue:
                raise DumpError(
                    f"stopped to keep the disk's reserve of {format_size(self._budget.reserve_bytes)} free "
                    f"({format_size(figures.free_bytes)} free after {format_size(written)} written; "
                    f"predicted {format_size(self.predicted_bytes)}), and no more backups may be deleted",
                    "disk_reserve",
                )
            self._usage -= self._take(self._queue.popleft())

    def _take(self, decision: Decision) -> int:
        storage = self._config.storage.path
        job = decision.series.split("/", 1)[0]
        with pins.deletion_lock(storage):
            if not (storage / decision.backup.key).exists():
                return 0
            refusal = _floor_or_pin(storage, decision, self._config.jobs[job].retention.keep_min)
            if refusal is not None:
                self._log.info("retention.spared", path=decision.backup.key, rule=refusal)
                return 0
            freed = _delete(storage, decision, self._inventory.records.get(decision.backup.key), self._log, "in_flight")
        self.deleted.append(decision)
        return freed


def _size_estimate(engine: Engine, target: DumpTarget, log: BoundLogger) -> int | None:
    if target.kind != "database":
        return None
    try:
        return engine.size_estimate(target.database)
    except (AgentError, OSError) as error:
        log.warning("retention.estimate_failed", error=str(error))
        return None


def prepare_dump(
    config: Config,
    job: JobConfig,
    engine: Engine,
    target: DumpTarget,
    *,
    folder: str,
    inventory: Inventory,
    log: BoundLogger,
) -> DumpSpace:
    """Pre-flight: predict the dump, plan its room; raise InsufficientSpaceError (nothing deleted) when
    it cannot fit without going below keep_min or touching a pin.

    `inventory` is the run's one scan of the disk (`take_inventory`), kept up to date by the runner.
    """
    figures = measure(config.storage)
    budget = resolve_budget(config.storage, figures.total_bytes)
    history = inventory.history(job.name, folder)
    scratch_copy = engines.family(job.engine).scratch_copy
    estimate = _size_estimate(engine, target, log) if not history or scratch_copy else None
    prediction = predict(history, estimate, config.storage.compression)
    if scratch_copy:
        prediction = Prediction(prediction.stored_bytes, prediction.basis, estimate or 0)
    need = prediction.stored_bytes + prediction.scratch_bytes + 2 * check_interval(figures.total_bytes, budget)
    plan = retention.plan(
        inventory.series,
        figures,
        budget,
        now=datetime.now(UTC),
        need_bytes=need,
        policy_scope=(),
    )
    if not plan.fits:
        available = max(0, need - plan.shortfall_bytes + plan.freeable_bytes)
        raise InsufficientSpaceError(
            f"not enough disk space: the dump needs about {format_size(need)} "
            f"(predicted {format_size(prediction.stored_bytes)}) but at most {format_size(available)} "
            f"can be made free without going below keep_min; free {format_size(figures.free_bytes)}, "
            f"reserve {format_size(budget.reserve_bytes)}",
            {
                "available": available,
                "free": figures.free_bytes,
                "reserve": budget.reserve_bytes,
                "predicted": prediction.stored_bytes,
                "need": need,
                "usage": figures.usage_bytes,
                "max_usage": budget.max_usage_bytes,
                "total": figures.total_bytes,
                "freeable": plan.freeable_bytes,
                "shortfall": plan.shortfall_bytes,
            },
        )
    log.info(
        "retention.preflight",
        predicted_bytes=prediction.stored_bytes,
        basis=prediction.basis,
        scratch_bytes=prediction.scratch_bytes,
        need_bytes=need,
        free_bytes=figures.free_bytes,
        reserve_bytes=budget.reserve_bytes,
        usage_bytes=figures.usage_bytes,
        max_usage_bytes=budget.max_usage_bytes,
        planned_deletions=plan.expected_deletions,
    )
    return DumpSpace(
        config, plan=plan, figures=figures, budget=budget, prediction=prediction, inventory=inventory, log=log
    )


# --------------------------------------------------------------------------------------------------
# After a dump, and `backup-agent prune`


@dataclass(frozen=True, slots=True)
class PruneResult:
    plan: Plan
    figures: DiskFigures
    budget: Budget
    deleted: tuple[Decision, ...]

    def describe(self) -> dict[str, Any]:
        """JSON-able: every decision, and the disk figures."""
        return {
            "total_bytes": self.figures.total_bytes,
            "free_bytes": self.figures.free_bytes,
            "usage_bytes": self.figures.usage_bytes,
            "reserve_bytes": self.budget.reserve_bytes,
            "max_usage_bytes": self.budget.max_usage_bytes,
            "shortfall_bytes": self.plan.shortfall_bytes,
            "fits": self.plan.fits,
            "deleted_bytes": sum(decision.backup.size_bytes for decision in self.deleted),
            "decisions": [
                {
                    "path": decision.backup.key,
                    "series": decision.series,
                    "created_at": decision.backup.created_at.isoformat(),
                    "bytes": decision.backup.size_bytes,
                    "good": decision.backup.good,
                    "action": "delete" if decision.delete else "keep",
                    "rule": decision.rule,
                }
                for decision in self.plan.decisions
            ],
        }


def _apply(
    config: Config,
    jobs: Collection[str] | None,
    scope: Collection[str] | None,
    *,
    dry_run: bool,
    log: BoundLogger,
    moment: str,
) -> PruneResult:
    inventory = take_inventory(config, jobs)
    figures = measure(config.storage)
    budget = resolve_budget(config.storage, figures.total_bytes)
    plan = retention.plan(inventory.series, figures, budget, now=datetime.now(UTC), policy_scope=scope)
    deleted: list[Decision] = []
    if not dry_run:
        for decision in plan.deletions:
            _delete(config.storage.path, decision, inventory.records.get(decision.backup.key), log, moment)
            deleted.append(decision)
        log.info(
            "retention.applied",
            moment=moment,
            deleted=len(deleted),
            deleted_bytes=plan.deleted_bytes,
            kept=len(plan.decisions) - len(deleted),
        )
        if not plan.fits:
            log.warning(
                "retention.over_budget",
                shortfall_bytes=plan.shortfall_bytes - plan.deleted_bytes,
                free_bytes=figures.free_bytes,
                reserve_bytes=budget.reserve_bytes,
                usage_bytes=figures.usage_bytes,
                max_usage_bytes=budget.max_usage_bytes,
            )
    return PruneResult(plan, figures, budget, tuple(deleted))


def apply_after_dump(config: Config, job: str, folders: Collection[str], log: BoundLogger) -> PruneResult:
    """After good dumps: the policy of their series, then the budget (room taken from any series)."""
    with pins.deletion_lock(config.storage.path):
        scope = {f"{job}/{folder}" for folder in folders}
        return _apply(config, None, scope, dry_run=False, log=log, moment="after_dump")


def prune(config: Config, job: str | None = None, *, dry_run: bool = False) -> PruneResult:
    """`backup-agent prune`: the whole policy and the budget, for one job or all."""
    log = get_logger(job=job) if job else get_logger()
    jobs = None if job is None else (job,)
    if dry_run:
        return _apply(config, jobs, None, dry_run=True, log=log, moment="prune")
    with pins.deletion_lock(config.storage.path):
        return _apply(config, jobs, None, dry_run=False, log=log, moment="prune")


# --------------------------------------------------------------------------------------------------
# Retiring a series (`backup-agent retire --delete`)


RETIRED = "retired"


def delete_series(storage: Path, job: str, folder: str | None, log: BoundLogger) -> tuple[list[Path], list[Path]]:
    """Delete every file of a retired series (the whole job when `folder` is None), journaled one by one.

    Pinned backups stay (unpin them first); returns (deleted data files, pinned ones kept).
    """
    deleted: list[Path] = []
    kept: list[Path] = []
    with pins.deletion_lock(storage):
        pinned = frozenset(pins.load(storage))
        for record in catalog.scan(storage, job):
            if folder is not None and record.folder != folder:
                continue
            key = record.path.relative_to(storage).as_posix()
            if key in pinned:
                kept.append(record.path)
                continue
            created = record.created_at or datetime.now(UTC)
            backup = retention.Backup(
                key, created, 0, record.status == catalog.GOOD, sequence=_sequence(record.path.name)
            )
            decision = Decision(f"{job}/{record.folder}", backup, True, (RETIRED,))
            _delete(storage, decision, record, log, moment="retire")
            deleted.append(record.path)
    return deleted, kept
