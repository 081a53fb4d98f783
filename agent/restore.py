"""`backup-agent restore`: pick the newest good backup at or before a time, re-verify it, load it.

It never writes into a database that already holds data unless forced, and `--dry-run` says
exactly what it would do. `--to-file` writes the plain decompressed dump for manual use.
"""

from __future__ import annotations

import os
import posixpath
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import msgspec
from structlog.stdlib import BoundLogger

from agent import catalog, engines
from agent.compression import open_decompressed
from agent.config import Config, JobConfig
from agent.engines.base import MISSING, NOT_EMPTY, Engine, EngineContext
from agent.errors import AgentError, UsageError
from agent.log import get_logger
from agent.manifest import Manifest
from agent.naming import encode_name
from agent.process import StreamLimits
from agent.progress import LogWatcher, Meter, Watcher, counted
from agent.storage import StorageLayout
from agent.units import format_size, format_time
from agent.verify import OK, verify_file

_READ_SIZE = 1 << 20
VERIFYING = "verifying"  # the progress step of the re-verification before a restore or drill


class RestoreError(AgentError):
    """The restore was refused or failed; nothing was changed unless the message says so."""


class HeldByPlatform(RestoreError):  # noqa: N818 - names what the user learns, like LockedError
    """No local backup is old enough, but a platform snapshot holds one: the message names it (exit 1)."""


@dataclass(frozen=True, slots=True)
class Chosen:
    record: catalog.BackupRecord
    manifest: Manifest


def choose_backup(
    config: Config,
    job: str,
    database: str,
    *,
    at: datetime | None = None,
    kind: str = "database",
    label: str | None = None,
) -> Chosen:
    """The newest good backup of `database` created at or before `at` (UTC-aware), with `label` if given."""
    records = [
        record
        for record in catalog.scan(config.storage.path, job)
        if record.status == catalog.GOOD
        and record.manifest is not None
        and (label is None or record.manifest.label == label)
        and record.kind == kind
        and (kind != "database" or record.database == database)
        and record.created_at is not None
        and (at is None or record.created_at <= at)
    ]
    if not records and kind == "database":
        # a whole-server archive (MongoDB `point_in_time` with mongodump --oplog) holds every database
        records = [
            record
            for record in catalog.scan(config.storage.path, job)
            if record.status == catalog.GOOD
            and record.manifest is not None
            and (label is None or record.manifest.label == label)
            and record.kind == "server"
            and record.created_at is not None
            and (at is None or record.created_at <= at)
        ]
    if not records:
        if at is not None and kind == "database" and label is None:
            _raise_if_held_by_platform(config, job, database, at)
        when = f" at or before {format_time(at)}" if at else ""
        labelled = f" labelled {label!r}" if label is not None else ""
        what = database if kind == "database" else kind
        raise UsageError(
            f"no good backup{labelled} of {what!r} in job {job!r}{when}; see `backup-agent list --job {job}`"
        )
    newest = max(records, key=lambda record: record.order)
    assert newest.manifest is not None
    if newest.manifest.kind == "server":
        # restore that one database out of the server archive
        return Chosen(newest, msgspec.structs.replace(newest.manifest, database=database))
    return Chosen(newest, newest.manifest)


def tables_left_out(manifest: Manifest, tables: tuple[str, ...]) -> list[str]:
    """The requested tables the backup's scope left out (a name, or its part after the schema)."""
    if manifest.scope is None:
        return []
    kept = {*manifest.scope.dumped, *manifest.scope.schema_only}
    kept_short = {name.rsplit(".", 1)[-1] for name in kept}
    excluded = set(manifest.scope.excluded) | {name.rsplit(".", 1)[-1] for name in manifest.scope.excluded}
    return [table for table in tables if table in excluded and table not in kept and table not in kept_short]


def _raise_if_held_by_platform(config: Config, job: str, database: str, at: datetime) -> None:
    """With `[snapshots]`, a dump deleted locally may still be in a snapshot: name it and the path to ask for."""
    from agent import ledger

    loaded = ledger.load(config)
    if loaded is None:
        return
    folders = {encode_name(database)}
    if database.startswith("/"):  # a SQLite file: its folder is the file's name
        folders.add(encode_name(posixpath.basename(database)))
    message = ledger.platform_copy_message(loaded, job, folders, database, at)
    if message is not None:
        warning = ledger.break_text(loaded)
        raise HeldByPlatform(message + (f" ({warning})" if warning else ""))


def decompressed_chunks(path: Path, method: str) -> Iterator[bytes]:
    with path.open("rb") as stream:
        reader = open_decompressed(stream, method)
        while chunk := reader.read(_READ_SIZE):
            yield chunk


def new_meter(
    config: Config, chosen: Chosen, operation: str, log: BoundLogger, progress: Watcher | None, *, step: str = ""
) -> Meter:
    """A restore's or drill's progress over the decompressed bytes, the manifest's raw size its total:
    the log's `<operation>.progress` every `log.progress_every`, and the terminal line when given."""
    watchers: list[Watcher] = [LogWatcher(log, config.log.progress_every.total_seconds())]
    if progress is not None:
        watchers.append(progress)
    label = chosen.manifest.database or chosen.manifest.kind
    return Meter(operation, label, chosen.manifest.raw_bytes, watchers, clock=time.monotonic, step=step)


def check_target(engine: str, into: str, *, force: bool) -> None:
    """Refuse (UsageError) a name the server could not hold, or a template or system database unless forced."""
    family = engines.family(engine)
    problem = family.target_name_problem(into)
    if problem is not None:
        raise UsageError(f"--into {into!r}: {problem}")
    if family.is_reserved_target(into) and not force:
        raise UsageError(
            f"--into {into!r} is a template or system database of the {engine} server; restoring into it "
            "changes the whole server (template1 seeds every database created later); pass --force to do it anyway"
        )


def retarget(job: JobConfig, url: str) -> JobConfig:
    """The job pointed at another server (`--target-url`); the password still comes from the job's source."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:  # a broken IPv6 host, a port out of range or not a number
        raise UsageError(f"--target-url: {error}") from None  # never the URL itself: it may hold a password
    if port == 0:
        raise UsageError("--target-url: port 0 is not a port a server listens on")
    family = engines.family(job.engine)
    if parts.scheme not in family.url_schemes:
        example = family.url_schemes[0] if family.url_schemes else job.engine
        raise UsageError(
            f"--target-url: expected a {job.engine} URL such as {example}://user@host:port, got scheme {parts.scheme!r}"
        )
    if parts.password is not None:
        raise UsageError("--target-url must not contain a password: it is read from the job's password source")
    return family.retarget(job, url)


def engine_for(config: Config, job: str, target_url: str | None = None) -> Engine:
    if job not in config.jobs:
        raise UsageError(f"no job named {job!r} in the config")
    layout = StorageLayout(config.storage.path)
    job_config = config.jobs[job] if target_url is None else retarget(config.jobs[job], target_url)
    return engines.engine_class(job_config.engine)(
        job_config, EngineContext(layout.root, layout.scratch(job), StreamLimits())
    )


def reverify(chosen: Chosen, meter: Meter | None = None) -> None:
    """Hash and check the whole file again before any of it is used; `meter` shows the pass (a large
    file takes seconds)."""
    if meter is None:
        finding = verify_file(chosen.record.path)
    else:
        with meter:
            finding = verify_file(chosen.record.path, on_chunk=meter.advance)
    if finding.status != OK:
        raise RestoreError(f"refusing to restore {chosen.record.path}: {finding.status}: {finding.message}")


def restore_to_file(
    chosen: Chosen, output: Path, *, config: Config | None = None, progress: Watcher | None = None
) -> Path:
    """Write the decompressed dump to a new file (never over an existing one)."""
    if output.exists() or output.is_symlink():
        raise RestoreError(f"{output} already exists; choose a new file name")
    log = get_logger(job=chosen.manifest.job, database=chosen.manifest.database)
    reverify(chosen, new_meter(config, chosen, "restore", log, progress, step=VERIFYING) if config else None)
    descriptor = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    chunks = decompressed_chunks(chosen.record.path, chosen.manifest.compression)
    try:
        with os.fdopen(descriptor, "wb") as sink:
            if config is not None:
                chunks = counted(chunks, new_meter(config, chosen, "restore", log, progress))
            for chunk in chunks:
                sink.write(chunk)
    except BaseException:
        output.unlink(missing_ok=True)
        raise
    return output


def describe(chosen: Chosen, engine: Engine, into: str, *, force: bool, tables: tuple[str, ...]) -> list[str]:
    manifest = chosen.manifest
    state = engine.database_state(into)
    lines = [
        f"backup:   {chosen.record.path}",
        f"made:     {format_time(manifest.started_at)} ({manifest.format}, {format_size(manifest.stored_bytes)})",
        f"sha256:   {manifest.sha256}",
        f"into:     database {into!r} on {engine.job.name}'s server ({state})",
    ]
    if state == MISSING:
        lines.append(f"step:     create database {into!r}")
    elif state == NOT_EMPTY and not force:
        lines.append("refused:  the database holds data; pass --force to restore into it anyway")
    lines.append("step:     re-verify the backup's sha256 and structure")
    lines.extend(f"step:     {step}" for step in engine.restore_steps(into, tables))
    return lines


def restore_server_wide(
    config: Config,
    job: str,
    *,
    at: datetime | None = None,
    target_url: str | None = None,
    progress: Watcher | None = None,
) -> Chosen:
    """Apply the job's roles/grants file (PostgreSQL globals, MySQL grants) before its databases."""
    engine = engine_for(config, job, target_url)
    server_wide = engines.family(engine.name).server_wide
    if server_wide is None:
        raise UsageError(f"engine {engine.name} has no globals or grants to restore")
    kind, database = server_wide.kind, server_wide.database
    chosen = choose_backup(config, job, "", at=at, kind=kind)
    log = get_logger(job=job, kind=kind)
    reverify(chosen, new_meter(config, chosen, "restore", log, progress, step=VERIFYING))
    log.info("restore.started", path=str(chosen.record.path))
    with new_meter(config, chosen, "restore", log, progress) as meter:
        chunks = decompressed_chunks(chosen.record.path, chosen.manifest.compression)
        engine.restore(counted(chunks, meter), chosen.manifest, database)
    log.info("restore.finished", path=str(chosen.record.path))
    return chosen


def restore_database(
    config: Config,
    job: str,
    chosen: Chosen,
    into: str,
    *,
    force: bool = False,
    tables: tuple[str, ...] = (),
    target_url: str | None = None,
    progress: Watcher | None = None,
) -> None:
    engine = engine_for(config, job, target_url)
    check_target(engine.name, into, force=force)
    left_out = tables_left_out(chosen.manifest, tables)
    if left_out:
        raise UsageError(
            f"--table {left_out[0]!r}: not in this backup; its table scope excluded it "
            f"(see the manifest's scope: {chosen.record.path.name}.json)"
        )
    log = get_logger(job=job, database=chosen.manifest.database, into=into)
    state = engine.database_state(into)
    if state == NOT_EMPTY and not force:
        raise RestoreError(f"database {into!r} already holds data; refusing to restore into it without --force")
    reverify(chosen, new_meter(config, chosen, "restore", log, progress, step=VERIFYING))
    log.info("restore.started", path=str(chosen.record.path))
    created = False
    if state == MISSING:
        engine.create_database(into)
        created = True
    meter = new_meter(config, chosen, "restore", log, progress)
    try:
        with meter:
            chunks = decompressed_chunks(chosen.record.path, chosen.manifest.compression)
            engine.restore(counted(chunks, meter), chosen.manifest, into, tables=tables)
    except BaseException as error:
        log.error("restore.failed", error=str(error))
        if created:
            engine.drop_database(into)
        raise
    log.info("restore.finished", path=str(chosen.record.path))
