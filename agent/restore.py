"""`backup-agent restore`: pick the newest good backup at or before a time, re-verify it, load it.

It never writes into a database that already holds data unless forced, and `--dry-run` says
exactly what it would do. `--to-file` writes the plain decompressed dump for manual use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import posixpath
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import msgspec
from structlog.stdlib import BoundLogger

from agent import catalog, engines, snapshots
from agent.compression import open_decompressed
from agent.config import Config, JobConfig
from agent.engines.base import MISSING, NOT_EMPTY, Engine, EngineContext
from agent.errors import AgentError, UsageError
from agent.log import get_logger, register_secret
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

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


NO_PRIVILEGE = "no_privilege"
_ACCESS_DENIED_CODES = frozenset({1044, 1045, 1142, 1143, 1227, 1370})  # MySQL/MariaDB: access denied


def is_privilege_error(error: BaseException) -> bool:
    """A server refusing the account (PostgreSQL SQLSTATE 42501, MySQL access-denied codes, the wording)."""
    code = error.args[0] if error.args else None
    text = str(error).lower()
    return (
        getattr(error, "sqlstate", None) == "42501"
        or code in _ACCESS_DENIED_CODES
        or "permission denied" in text
        or "access denied" in text
        or "command denied" in text
        or "not authorized" in text
    )


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


def closer_platform_copy(config: Config, job: str, chosen: Chosen, at: datetime) -> str | None:
    """With `[snapshots]`: a deleted dump newer than the chosen one, still at or before `at`, that a snapshot holds."""
    from agent import ledger

    loaded = ledger.load(config)
    if loaded is None or chosen.record.created_at is None:
        return None
    found = snapshots.platform_copy_at(loaded.files, job, {chosen.record.folder}, at)
    if found is None or found.lifetime.created_at <= chosen.record.created_at:
        return None
    return (
        f"restoring the local backup of {format_time(chosen.record.created_at)}; the platform has a closer one, "
        f"of {format_time(found.lifetime.created_at)}: {ledger.held_sentence(loaded, found)}"
    )


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


def restoring_job(job: JobConfig) -> JobConfig:
    """The job as restores and drills connect: as its restore account (`[jobs.NAME.restore]`) when it has one."""
    if job.restore is None:
        return job
    return dataclasses.replace(job, user=job.restore.user, password=job.restore.password)


def retarget(job: JobConfig, url: str) -> JobConfig:
    """The job pointed at another server (`--target-url`); the password comes from the restore account's
    source when the job has one, else from the job's."""
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
        raise UsageError(
            "--target-url must not contain a password: it is read from the password source of "
            f"[jobs.{job.name}.restore] (or of the job when it has no restore account)"
        )
    return family.retarget(restoring_job(job), url)


def engine_for(config: Config, job: str, target_url: str | None = None) -> Engine:
    if job not in config.jobs:
        raise UsageError(f"no job named {job!r} in the config")
    layout = StorageLayout(config.storage.path)
    job_config = restoring_job(config.jobs[job]) if target_url is None else retarget(config.jobs[job], target_url)
    with contextlib.suppress(AgentError):  # an unreadable password is the connection's to report
        secret = job_config.password.read()
        if secret is not None:
            register_secret(secret.reveal())  # masked in every log line from now on
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


@dataclass(slots=True)
class RestorePlan:
    """What `restore --dry-run` prints; `refused` when the restore itself would be refused or fail."""

    lines: list[str] = field(default_factory=list)
    refused: bool = False


def missing_privileges(engine: Engine, into: str, state: str) -> list[str] | None:
    """What the account restoring lacks to restore into `into` (creating it first when MISSING); None: not
    known before trying (the engine cannot tell, or a custom role may grant it)."""
    try:
        return engine.missing_restore_privileges(into, state)
    except AgentError:
        raise
    except Exception as error:  # a driver's own error: a named reason, never a traceback
        raise RestoreError(f"cannot check the privileges to restore into {into!r}: {_first_line(error)}") from None


def refuse_missing(engine: Engine, into: str, missing: list[str] | None) -> None:
    if missing:
        raise RestoreError(
            f"account {engine.job.user or '(default)'} cannot restore into {into!r}: it lacks " + "; ".join(missing),
            NO_PRIVILEGE,
        )


def describe(chosen: Chosen, engine: Engine, into: str, *, force: bool, tables: tuple[str, ...]) -> RestorePlan:
    """The restore's steps as `--dry-run` prints them, with the privileges the account lacks for them."""
    manifest = chosen.manifest
    state = engine.database_state(into)
    plan = RestorePlan()
    lines = plan.lines
    lines += [
        f"backup:   {chosen.record.path}",
        f"made:     {format_time(manifest.started_at)} ({manifest.format}, {format_size(manifest.stored_bytes)})",
        f"sha256:   {manifest.sha256}",
        f"into:     database {into!r} on {engine.job.name}'s server ({state})",
    ]
    if state == MISSING:
        lines.append(f"step:     create database {into!r}")
    elif state == NOT_EMPTY and not force:
        lines.append("refused:  the database holds data; pass --force to restore into it anyway")
        plan.refused = True
    lines.append("step:     re-verify the backup's sha256 and structure")
    lines.extend(f"step:     {step}" for step in engine.restore_steps(into, tables))
    missing = missing_privileges(engine, into, state)
    user = engine.job.user or "(default)"
    if missing:
        plan.refused = True
        lines.extend(f"missing:  account {user} lacks {item}" for item in missing)
    elif missing is None:
        lines.append(f"account:  {user}; its privileges are not checked before the restore on {engine.name}")
    else:
        lines.append(f"account:  {user} has the privileges for these steps")
    return plan


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
    refuse_missing(engine, into, missing_privileges(engine, into, state))
    reverify(chosen, new_meter(config, chosen, "restore", log, progress, step=VERIFYING))
    log.info("restore.started", path=str(chosen.record.path))
    created = False
    try:
        if state == MISSING:
            engine.create_database(into)
            created = True
        with new_meter(config, chosen, "restore", log, progress) as meter:
            chunks = decompressed_chunks(chosen.record.path, chosen.manifest.compression)
            engine.restore(counted(chunks, meter), chosen.manifest, into, tables=tables)
    except BaseException as error:
        log.error("restore.failed", error=_first_line(error))
        if created:
            with contextlib.suppress(Exception):  # the restore's own error is the one to report
                engine.drop_database(into)
        if isinstance(error, Exception) and not isinstance(error, AgentError):
            reason = NO_PRIVILEGE if is_privilege_error(error) else "restore_failed"
            raise RestoreError(f"restore into {into!r} failed: {_first_line(error)}", reason) from None
        raise
    log.info("restore.finished", path=str(chosen.record.path))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
