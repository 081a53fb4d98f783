"""`backup-agent retire`: end a removed job's or database's series, so nothing reports it missing.

The journal records the retirement (`retired`, with the series' folder): `verify` no longer calls
its files missing once they are gone, its records leave `status`, and with `--delete` its files
are removed through agent/prune.py (the only deleter), each deletion journaled. A series still in
the config is refused: the next run would only start it again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent import catalog, journal
from agent.config import Config
from agent.engines.base import DumpTarget
from agent.errors import UsageError
from agent.log import get_logger
from agent.naming import encode_name
from agent.prune import delete_series
from agent.records import forget, read_history
from agent.runner import folder_for
from agent.storage import StorageLayout, exclusive_lock


@dataclass(slots=True)
class Retired:
    series: str  # the folder, relative to storage: "JOB" or "JOB/FOLDER"
    files: int  # backups on disk in the series when it was retired
    deleted: list[Path] = field(default_factory=list)
    pinned: list[Path] = field(default_factory=list)  # kept: pinned backups are never deleted


def series_folder(config: Config, job: str, database: str, records: list[catalog.BackupRecord]) -> str:
    """The folder of a database's series: from its backups on disk, else as a run would name it."""
    for record in records:
        if record.kind == "database" and record.database == database:
            return record.folder
    engine = (
        config.jobs[job].engine if job in config.jobs else next((r.manifest.engine for r in records if r.manifest), "")
    )
    if not engine:  # a removed job with nothing on disk: its name as the folder, like most engines
        return encode_name(database)
    return folder_for(DumpTarget(database), engine)


def _refuse_if_configured(config: Config, job: str, database: str | None) -> None:
    configured = config.jobs.get(job)
    if configured is None:
        return
    if database is None:
        raise UsageError(f"job {job!r} is still in the config; remove it there first, then retire it")
    if configured.databases is not None and database in configured.databases:
        raise UsageError(f"database {database!r} is still in job {job!r}'s databases; remove it there first")


def retire(config: Config, job: str, database: str | None, *, delete: bool) -> Retired:
    """Journal the series as retired, forget its records, and with `delete` remove its files."""
    _refuse_if_configured(config, job, database)
    storage = config.storage.path
    layout = StorageLayout(storage).prepare()
    records = catalog.scan(storage, job)
    folder = series_folder(config, job, database, records) if database is not None else None
    series = job if folder is None else f"{job}/{folder}"
    own = [record for record in records if folder is None or record.folder == folder]
    history = read_history(storage).get(job)
    known = bool(own) or (
        history is not None and (database is None or any(item.database == database for item in history.databases))
    )
    entries, _problems = journal.read_entries(storage)
    known = known or any(entry.path and entry.path.startswith(series + "/") for entry in entries)
    if not known:
        what = f"database {database!r} of job {job!r}" if database is not None else f"job {job!r}"
        raise UsageError(f"nothing to retire: no backups, records or journal entries for {what}")
    log = get_logger(job=job, database=database)
    with exclusive_lock(layout.lock_file(f"job-{job}"), f"a backup of job {job}"):
        journal.append(storage, journal.Event.RETIRED, path=series, job=job, database=database)
        forget(storage, job, database)
        result = Retired(series, len(own))
        if delete:
            result.deleted, result.pinned = delete_series(storage, job, folder, log)
    log.info("series.retired", series=series, files=result.files, deleted=len(result.deleted))
    return result
