"""Acting on retention plans: the only code that deletes published backups.

Three moments delete: just in time during a dump (`DumpSpace`: only as the agent's own written
bytes need the room, so a dump that fails early costs no old backups, and another writer filling
the disk never costs one), after a good dump
(`apply_after_dump`: the policy of the series that got a new backup, and the budget), and
`backup-agent prune` (`prune`). Each deletion is journaled, then the manifest goes, then the data
file. That order leaves, after a crash at any point, either the whole backup, or a data file
without a manifest: `incomplete`, never counted as a backup, and removed by the next prune with
rule "incomplete" (the newest good backup is never deleted, so it is always older). The reverse
order would leave a manifest without data that no listing shows and nothing cleans up.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from structlog.stdlib import BoundLogger

from agent import catalog, engines, journal, pins, retention
from agent.budget import (
    CONTENDED,
    FINISHING_BYTES,
    UNEXPLAINED_TOLERANCE,
    WRITE,
    Budget,
    DiskFigures,
    InsufficientSpaceError,
    Prediction,
    Shortage,
    allocated_bytes,
    check_interval,
    explain_shortage,
    free_bytes_now,
    in_flight_room,
    measure,
    predict,
    resolve_budget,
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

_NOT_BACKUPS = (catalog.PARTIAL, catalog.IN_PROGRESS)  # `.partial` files: never planned, never deleted here

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

    def newest_raw_bytes(self, job: str, folder: str) -> int | None:
        """The raw (uncompressed) size of a series' newest good backup: the next dump's likely size."""
        name = f"{job}/{folder}"
        for one in self.series:
            if one.name == name:
                good = [backup for backup in one.backups if backup.good]
                if good:
                    newest = max(good, key=lambda backup: (backup.created_at, backup.sequence))
                    summary = self.records[newest.key].summary
                    return summary.raw_bytes if summary is not None else None
        return None

    def _stored(self, key: str) -> int:
        summary = self.records[key].summary
        return summary.stored_bytes if summary is not None else 0

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
    key = f"{record.job}/{record.folder}/{record.path.name}"  # <storage>/<job>/<folder>/<name>, as scanned
    if record.sequence is not None:
        sequence = record.sequence
    else:  # a record the runner made for the backup it just published
        parsed = parse_backup_filename(record.path.name)
        sequence = parsed.sequence if parsed else 0
    return retention.Backup(
        key=key,
        created_at=record.created_at,
        size_bytes=record.allocated
        if record.allocated is not None
        else allocated_bytes(record.path) + allocated_bytes(manifest_path(record.path)),
        good=record.status == catalog.GOOD,
        pinned=key in pinned,
        sequence=sequence,
        keep_until=record.summary.keep_until if record.summary is not None else None,
        file_bytes=record.stored_bytes,
    )


def _grouped(
    config: Config, grouped: dict[tuple[str, str], list[retention.Backup]], records: dict[str, catalog.BackupRecord]
) -> Inventory:
    series = tuple(
        Series(
            f"{job}/{folder}",
            tuple(backups),
            config.jobs[job].retention,
            config.jobs[job].timezone,
            protect_newest=config.jobs[job].skip_unchanged,
        )
        for (job, folder), backups in sorted(grouped.items())
        if backups
    )
    return Inventory(series, records)


def take_inventory(config: Config, jobs: Iterable[str] | None = None, *, indexed: bool = False) -> Inventory:
    """Every backup of the given configured jobs (default: all), grouped into series, pins applied.

    Jobs no longer in the config are left alone: their policy is unknown. `indexed` only for a
    plan that deletes nothing (`prune --dry-run`): deletions are planned from the manifests read.
    """
    storage = config.storage.path
    wanted = set(config.jobs if jobs is None else jobs)
    pinned = frozenset(pins.load(storage))
    grouped: dict[tuple[str, str], list[retention.Backup]] = {}
    records: dict[str, catalog.BackupRecord] = {}
    for record in catalog.scan(storage, indexed=indexed):
        if record.job not in wanted or record.status in _NOT_BACKUPS:
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
    sha256 = record.summary.sha256 if record is not None and record.summary is not None else None
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


def _floor_or_pin(storage: Path, decision: Decision, job_config: JobConfig) -> str | None:
    """Re-checked under the lock before a just-in-time deletion: the plan may be stale by then."""
    if decision.backup.key in pins.load(storage):
        return retention.PINNED
    job, folder = decision.series.split("/", 1)
    keep_min = job_config.retention.keep_min
    good = sorted(
        (
            record
            for record in catalog.scan(storage, job)
            if record.folder == folder and record.status == catalog.GOOD and record.created_at is not None
        ),
        key=lambda record: (record.created_at, _sequence(record.path.name)),
    )
    keys = [record.path.relative_to(storage).as_posix() for record in good]
    chosen = good[keys.index(decision.backup.key)] if decision.backup.key in keys else None
    keep_until = chosen.manifest.keep_until if chosen is not None and chosen.manifest is not None else None
    if keep_until is not None and datetime.now(UTC) < keep_until:
        return retention.LABELLED
    if job_config.skip_unchanged and keys and keys[-1] == decision.backup.key:
        return retention.RELIED_ON
    return retention.KEEP_MIN if decision.backup.key in keys[max(0, len(keys) - keep_min) :] else None


def _sequence(name: str) -> int:
    parsed = parse_backup_filename(name)
    return parsed.sequence if parsed else 0


# --------------------------------------------------------------------------------------------------
# Before and during a dump


class _Ledger:
    """Bytes the agent's running dumps (in this process) put on one storage filesystem, less what
    their in-flight deletions gave back: with `max_concurrent_dumps` above 1, one dump's bytes are
    the agent's own to another, not a stranger filling the disk."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.net_bytes = 0  # cumulative: a dump's delta since its own pre-flight is net_bytes - its start
        self._granted: dict[int, int] = {}  # per dump: bytes it may still write unreported

    def change(self, dump: int, delta_bytes: int, granted_bytes: int) -> int:
        """Add `delta_bytes`, set the dump's unreported grant; return the others' unreported grants."""
        with self._lock:
            self.net_bytes += delta_bytes
            if granted_bytes:
                self._granted[dump] = granted_bytes
            else:
                self._granted.pop(dump, None)
            return sum(granted for other, granted in self._granted.items() if other != dump)


_ledgers: dict[Path, _Ledger] = {}
_ledgers_lock = threading.Lock()


def _ledger_for(storage: Path) -> _Ledger:
    with _ledgers_lock:
        return _ledgers.setdefault(storage, _Ledger())


class DumpSpace:
    """Room for one running dump: planned before it starts, taken just in time as its bytes need it.

    The writer asks (`room`) before every stretch of bytes lands. The queue is every backup the
    budget may take, least protected first; the prediction decides only whether the dump may start.
    A backup is deleted only for the agent's own bytes: when free space fell by more than they
    explain, another writer is filling the disk, and the dump stops (`disk_contention`) rather than
    hand it the room of a good backup. A dump that outgrows what the queue can free stops with
    `disk_reserve`. Either way the reserve holds against the dump's own bytes to the byte.
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
        expected_raw_bytes: int | None = None,
    ) -> None:
        self.predicted_bytes = prediction.stored_bytes
        self.expected_raw_bytes = expected_raw_bytes  # for progress: the last dump's raw size, or the server's estimate
        self.check_every = check_interval(figures.total_bytes, budget)
        self.deleted: list[Decision] = []
        self._config = config
        self._budget = budget
        self._baseline = figures
        self._scratch = prediction.scratch_bytes
        self._queue = deque(plan.queue)
        self._inventory = inventory
        self._log = log
        self._ledger = _ledger_for(config.storage.path)
        self._ledger_start = self._ledger.net_bytes
        self._reported = 0  # bytes this dump has on disk, as last told to the ledger

    def watch(self, sink: Sink) -> Sink:
        """Room for an engine's scratch copy is made before the engine starts (it writes the copy
        before the first byte arrives); the dump's own bytes ask the writer's gate (`room`)."""
        if self._scratch:
            self._make_room(0, self._scratch + FINISHING_BYTES)
            self._report(self._scratch, 0)
        return sink

    def room(self, file_bytes: int, upcoming_bytes: int) -> int:
        """The writer's gate: room for `upcoming_bytes` (and a check interval) before they land."""
        grant = max(upcoming_bytes, self.check_every)
        self._make_room(self._scratch + file_bytes, grant + FINISHING_BYTES)
        self._report(self._scratch + file_bytes, grant)
        return grant

    def settle(self, kept_bytes: int) -> None:
        """The dump is over (its scratch copy gone, its partial published or removed)."""
        self._report(kept_bytes, 0)

    def _report(self, on_disk: int, granted: int) -> int:
        others_granted = self._ledger.change(id(self), on_disk - self._reported, granted)
        self._reported = on_disk
        return others_granted

    def _make_room(self, on_disk: int, need: int) -> None:
        storage = self._config.storage
        while True:
            # bytes written since the last report are this dump's; the others' unreported grants
            # may explain free space that is gone too
            others_granted = self._report(on_disk, 0)
            agent_bytes = self._ledger.net_bytes - self._ledger_start
            free = free_bytes_now(storage, self._baseline.usage_bytes + agent_bytes)
            verdict = in_flight_room(
                self._baseline,
                self._budget,
                agent_bytes=agent_bytes,
                free_bytes=free,
                need_bytes=need,
                allowance_bytes=UNEXPLAINED_TOLERANCE + others_granted,
            )
            if verdict.action == WRITE:
                return
            if verdict.action == CONTENDED:
                raise DumpError(
                    f"stopped: another writer took {format_size(verdict.taken_by_others_bytes)} of the disk's "
                    f"free space while this dump wrote {format_size(on_disk)}; deleting backups would only "
                    f"give it their room ({format_size(free)} free, reserve "
                    f"{format_size(self._budget.reserve_bytes)}), so none more were deleted",
                    "disk_contention",
                )
            if not self._queue:
                raise DumpError(
                    f"stopped to keep the disk's reserve of {format_size(self._budget.reserve_bytes)} free "
                    f"({format_size(free)} free after {format_size(on_disk)} written; "
                    f"predicted {format_size(self.predicted_bytes)}), and no more backups may be deleted",
                    "disk_reserve",
                )
            freed = self._take(self._queue.popleft())
            self._ledger.change(id(self), -freed, 0)

    def _take(self, decision: Decision) -> int:
        storage = self._config.storage.path
        job = decision.series.split("/", 1)[0]
        with pins.deletion_lock(storage):
            if not (storage / decision.backup.key).exists():
                return 0
            refusal = _floor_or_pin(storage, decision, self._config.jobs[job])
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
    even its smallest plausible size cannot fit without going below keep_min or touching a pin.

    When the predicted size does not fit but a plausible smaller one does (a first dump, estimated from
    the server's figures), the dump starts and the in-flight checks decide: room is taken just in time
    and the dump is stopped at the reserve, its partial removed, rather than never tried.

    `inventory` is the run's one scan of the disk (`take_inventory`), kept up to date by the runner.
    """
    figures = measure(config.storage)
    budget = resolve_budget(config.storage, figures.total_bytes)
    history = inventory.history(job.name, folder)
    family = engines.family(job.engine)
    scratch_copy = family.scratch_copy
    estimate = _size_estimate(engine, target, log) if not history or scratch_copy else None
    measured = family.first_dump_ratios.get(config.storage.compression)
    ratio = (measured.low, measured.high) if measured is not None else None
    prediction = predict(history, estimate, config.storage.compression, ratio)
    if scratch_copy:
        prediction = Prediction(prediction.stored_bytes, prediction.basis, estimate or 0, prediction.least_bytes)
    slack = 2 * check_interval(figures.total_bytes, budget)
    need = prediction.stored_bytes + prediction.scratch_bytes + slack
    now = datetime.now(UTC)
    plan = retention.plan(inventory.series, figures, budget, now=now, need_bytes=need, policy_scope=())
    in_flight_decides = False
    if not plan.fits:
        least_need = min(need, prediction.least_bytes + prediction.scratch_bytes + slack)
        plan = retention.plan(inventory.series, figures, budget, now=now, need_bytes=least_need, policy_scope=())
        if not plan.fits:
            raise _refusal(
                config,
                job,
                target,
                inventory=inventory,
                plan=plan,
                figures=figures,
                budget=budget,
                prediction=prediction,
                need=least_need,
            )
        in_flight_decides = True
    log.info(
        "retention.preflight",
        predicted_bytes=prediction.stored_bytes,
        least_bytes=prediction.least_bytes,
        basis=prediction.basis,
        scratch_bytes=prediction.scratch_bytes,
        need_bytes=need,
        in_flight_decides=in_flight_decides,
        free_bytes=figures.free_bytes,
        reserve_bytes=budget.reserve_bytes,
        usage_bytes=figures.usage_bytes,
        max_usage_bytes=budget.max_usage_bytes,
        planned_deletions=plan.expected_deletions,
    )
    return DumpSpace(
        config,
        plan=plan,
        figures=figures,
        budget=budget,
        prediction=prediction,
        inventory=inventory,
        log=log,
        expected_raw_bytes=inventory.newest_raw_bytes(job.name, folder) or estimate,
    )


def _refusal(
    config: Config,
    job: JobConfig,
    target: DumpTarget,
    *,
    inventory: Inventory,
    plan: Plan,
    figures: DiskFigures,
    budget: Budget,
    prediction: Prediction,
    need: int,
) -> InsufficientSpaceError:
    """The refusal, with a message that says what to change (the plan is the one for `need`)."""
    queued = {decision.backup.key for decision in plan.queue}
    protected = [
        backup for series in inventory.series for backup in series.backups if backup.key not in queued and backup.good
    ]
    label = target.database or target.kind
    first = "first" if prediction.basis != "history" else "next"
    shortage = Shortage(
        what=f"the {first} backup of {job.name}/{label}",
        prediction=prediction,
        least_need_bytes=need,
        freeable_bytes=plan.freeable_bytes,
        protected_backups=len(protected),
        protected_bytes=sum(backup.size_bytes for backup in protected),
        keep_min=job.retention.keep_min,
    )
    available = max(0, need - plan.shortfall_bytes + plan.freeable_bytes)
    return InsufficientSpaceError(
        explain_shortage(shortage, figures, budget, config.storage),
        {
            "available": available,
            "free": figures.free_bytes,
            "reserve": budget.reserve_bytes,
            "predicted": prediction.stored_bytes,
            "least": prediction.least_bytes,
            "need": need,
            "usage": figures.usage_bytes,
            "max_usage": budget.max_usage_bytes,
            "total": figures.total_bytes,
            "freeable": plan.freeable_bytes,
            "shortfall": plan.shortfall_bytes,
            "protected": shortage.protected_bytes,
        },
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
                    "bytes": decision.backup.size_bytes,  # on disk, with the manifest: what deleting gives back
                    "file_bytes": decision.backup.file_bytes,  # the data file's length, as `list` shows it
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
    inventory = take_inventory(config, jobs, indexed=dry_run)
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
