"""`skip_unchanged`: no new dump when the engine proves the database has not changed since its last
verified dump.

The proof is the engine's change token (`Engine.change_token`), read right before each dump and
kept in its manifest. A later run reads it again; the dump is skipped only when the token equals
the one in the manifest of the newest good backup of that database, made by the same engine from
the same server in the same format, and that backup still passes `verify` (hash and structure).
Anything less (no token, an old manifest, a labelled run, a file that fails its check) dumps.
A skip is journaled (`skipped`, with the backup it relies on), so `status` counts it as fresh,
and retention keeps that backup (retention.RELIED_ON) while it is the newest of its database.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from agent.catalog import GOOD, BackupRecord
from agent.config import JobConfig
from agent.engines.base import ChangeToken, DumpTarget
from agent.manifest import Manifest

UNCHANGED = "unchanged"  # the reason word of a skip: log, journal, outcome

# why a dump was not skipped (logged as `backup.change_check reason=...`)
NO_TOKEN = "no_token"  # noqa: S105 - a reason word, not a password; the engine cannot prove anything now (or could not read it)
NO_BACKUP = "no_backup"  # no good backup of the database yet
NO_PREVIOUS_TOKEN = "no_previous_token"  # noqa: S105 - a reason word; the newest backup was made without a token
OTHER_SOURCE = "other_source"  # another engine, server or format made the newest backup
CHANGED = "changed"
NOT_VERIFIED = "not_verified"  # the newest backup fails its hash or structural check
LABELLED = "labelled"  # `backup --label` always dumps

SETTINGS_PART = "dump_settings"  # the token part the runner adds: a new table scope, tool or argument dumps


def settings_digest(job: JobConfig, database: str) -> str:
    """What of the job decides a dump's content besides the data: with another table scope, tool or
    extra argument the last dump is not what this run would make. (Engine options are left out:
    a MongoDB URI may hold a password.)"""
    settings = repr((job.scope.for_database(database), job.extra_args, job.tool))
    return hashlib.sha256(settings.encode()).hexdigest()


def newest_good(records: Iterable[BackupRecord], job: str, folder: str) -> BackupRecord | None:
    """The newest good backup of one series: the only one a skip may rely on."""
    candidates = [
        record for record in records if record.status == GOOD and record.job == job and record.folder == folder
    ]
    return max(candidates, key=lambda record: record.order, default=None)


def why_not_unchanged(
    token: ChangeToken | None, previous: Manifest | None, *, engine: str, server: str, target: DumpTarget
) -> str | None:
    """None when `previous` provably still holds `target` (a pure decision); else the reason word."""
    if token is None:
        return NO_TOKEN
    if previous is None:
        return NO_BACKUP
    if previous.change_token is None:
        return NO_PREVIOUS_TOKEN
    if (previous.engine, previous.server, previous.format, previous.kind, previous.database) != (
        engine,
        server,
        target.format,
        target.kind,
        target.database,
    ):
        return OTHER_SOURCE
    if previous.change_token != token:
        return CHANGED
    return None
