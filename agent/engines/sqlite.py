"""SQLite: a consistent online copy with the backup API, integrity-checked, then streamed.

The copy goes to a private scratch file under the storage path (same filesystem, same budget),
is checked with `PRAGMA integrity_check`, counted table by table (the copy is one snapshot, so the
counts are consistent), and then streamed through the same writer as every other engine.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import struct
import time
import uuid
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING
from urllib.parse import quote

from agent.engines.base import (
    ChangeToken,
    DumpDetails,
    DumpTarget,
    Engine,
    EngineFamily,
    PrivilegeFinding,
    ServerInfo,
    Sink,
    SizeRatio,
    StreamCheck,
)
from agent.errors import ConnectionFailed, DumpError, VerificationError
from agent.scope import ResolvedScope, resolve

if TYPE_CHECKING:
    from agent.config import ConfigTable

SQLITE_FORMAT = "sqlite3"
_MAGIC = b"SQLite format 3\x00"
_READ_SIZE = 1 << 20
_TABLES = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
# a file written this recently may be written again within the same timestamp tick, unseen by a token
SETTLED_SECONDS = 2.0
_WAL_HEADER_BYTES = 32


class SqliteCheck:
    """Checks the stream is a whole SQLite file: magic, page size, and the page count in its header."""

    def __init__(self) -> None:
        self._header = b""
        self._total = 0

    def feed(self, data: bytes) -> None:
        if len(self._header) < 100:
            self._header += data[: 100 - len(self._header)]
        self._total += len(data)

    def finish(self) -> None:
        if self._total == 0:
            raise VerificationError("the SQLite copy is empty")
        if len(self._header) < 100 or not self._header.startswith(_MAGIC):
            raise VerificationError("not an SQLite database file (bad header)")
        (page_size,) = struct.unpack(">H", self._header[16:18])
        page_size = 65536 if page_size == 1 else page_size
        (page_count,) = struct.unpack(">I", self._header[28:32])
        if page_count and self._total != page_count * page_size:
            raise VerificationError(
                f"the SQLite file is {self._total} bytes but its header says {page_count * page_size}: truncated"
            )

    def abort(self) -> None:
        self._header = b""


def _readonly_uri(path: str) -> str:
    return f"file:{quote(path)}?mode=ro"


class SqliteFamily(EngineFamily):
    """A sqlite job reads database files directly: no server, so no connection keys."""

    connects = False
    table_scope = True
    scratch_copy = True  # the consistent copy sits in the scratch folder, on the storage disk, while it streams
    # the file itself is dumped: its size is exact uncompressed
    first_dump_ratios = MappingProxyType(
        {
            "zstd": SizeRatio(0.25, 0.35),
            "gzip": SizeRatio(0.25, 0.35),
            "none": SizeRatio(1.0, 1.0),
        }
    )

    def engine_class(self) -> type[Engine]:
        return SqliteEngine

    def check_databases(self, table: ConfigTable, databases: tuple[str, ...] | None) -> None:
        if databases is None:
            table.add("databases", 'a sqlite job needs a list of database file paths, not "*"')
            return
        by_file_name: dict[str, str] = {}
        for path in databases:
            if not path.startswith("/"):
                table.add("databases", f"a sqlite database must be an absolute file path, got {table.show(path)}")
            elif os.path.basename(path) in by_file_name:
                # a sqlite backup's folder is named after the file: both would be one series to retention
                table.add(
                    "databases",
                    f"{table.show(path)} and {table.show(by_file_name[os.path.basename(path)])} have the same "
                    "file name, so their backups would share one folder; put them in separate jobs",
                )
            else:
                by_file_name[os.path.basename(path)] = path

    def folder_name(self, database: str) -> str:
        return os.path.basename(database)


FAMILY = SqliteFamily()


class SqliteEngine(Engine):
    def probe(self) -> ServerInfo:
        return ServerInfo("local files", sqlite3.sqlite_version, "sqlite3-backup-api", sqlite3.sqlite_version)

    def discover(self) -> list[str]:
        return list(self.job.databases or ())

    def database_exists(self, database: str) -> bool:
        return os.path.isfile(database)

    def database_target(self, database: str) -> DumpTarget:
        return DumpTarget(database, kind="database", extension="sqlite", format=SQLITE_FORMAT)

    def size_estimate(self, database: str) -> int | None:
        try:
            return os.stat(database).st_size
        except OSError:
            return None

    @classmethod
    def new_check(cls, format_name: str, tool: str | None = None) -> StreamCheck:
        if format_name != SQLITE_FORMAT:
            raise VerificationError(f"unknown SQLite format {format_name!r}")
        return SqliteCheck()

    def check_privileges(self) -> list[PrivilegeFinding]:
        """Each file can be opened and is an SQLite database (doctor needs no connection for this)."""
        findings: list[PrivilegeFinding] = []
        names = self.job.databases or ()
        for name in names:
            try:
                with open(name, "rb") as handle:
                    header = handle.read(len(_MAGIC))
            except OSError as error:
                findings.append(PrivilegeFinding(False, f"cannot read {name}: {error.strerror}"))
                continue
            if header and header != _MAGIC:
                findings.append(PrivilegeFinding(False, f"{name} is not an SQLite database file"))
        if not findings:
            findings.append(
                PrivilegeFinding(True, f"{len(names)} SQLite file(s) readable (SQLite {sqlite3.sqlite_version})")
            )
        return findings

    def change_token(self, target: DumpTarget) -> ChangeToken | None:
        """The file's change counter and whole header, and the identity, size and times of the file and
        its WAL (a WAL-mode commit leaves the main file alone; the WAL grows or, reset, gets new salts).

        None while a rollback journal exists (a transaction is under way, or a crashed one is not yet
        rolled back), and while either file was written in the last SETTLED_SECONDS (a second write in
        the same timestamp tick would leave size and times as they were)."""
        path = target.database
        if os.path.lexists(path + "-journal"):
            return None
        token: ChangeToken = {}
        newest_write = 0
        for name, suffix, header_bytes in (("file", "", 100), ("wal", "-wal", _WAL_HEADER_BYTES)):
            try:
                with open(path + suffix, "rb") as stream:
                    facts = os.fstat(stream.fileno())
                    header = stream.read(header_bytes)
            except FileNotFoundError:
                if not suffix:
                    return None
                token[name] = "none"
                continue
            except OSError:
                return None
            if not suffix and (len(header) < header_bytes or not header.startswith(_MAGIC)):
                return None
            # the WAL's inode time is not the writers' alone: SQLite running as root fchowns the WAL to
            # the database's owner on every open, even a read-only one (this agent's dumps included)
            changed = facts.st_ctime_ns if not suffix else 0
            newest_write = max(newest_write, facts.st_mtime_ns, changed)
            token[name] = f"{facts.st_dev}:{facts.st_ino}:{facts.st_size}:{facts.st_mtime_ns}:{changed}"
            token[f"{name}_header"] = header.hex()
            if not suffix:
                token["change_counter"] = str(struct.unpack(">I", header[24:28])[0])
        if time.time_ns() - newest_write < SETTLED_SECONDS * 1e9:
            return None
        return token

    def table_names(self, database: str) -> tuple[list[str], dict[str, str]]:
        """The file's tables, read only (check-config); the dump resolves again on its own copy."""
        try:
            source = sqlite3.connect(
                _readonly_uri(database), uri=True, timeout=self.job.connect_timeout.total_seconds()
            )
            try:
                rows = source.execute(_TABLES).fetchall()
            finally:
                source.close()
        except sqlite3.Error as error:
            raise ConnectionFailed(f"cannot read the tables of SQLite database {database}: {error}") from None
        return [str(row[0]) for row in rows], {}

    def dump(self, target: DumpTarget, sink: Sink) -> DumpDetails:
        source_path = target.database
        if not Path(source_path).is_file():
            raise DumpError(f"SQLite database {source_path} does not exist", reason="not_found")
        copy_path = self.context.scratch / f"sqlite-{uuid.uuid4().hex}.db"
        try:
            details = self._copy(source_path, copy_path)
            with copy_path.open("rb") as copy:
                while chunk := copy.read(_READ_SIZE):
                    if self.context.limits.should_stop():
                        raise DumpError("the SQLite copy was stopped: the agent is shutting down", "shutdown")
                    sink(chunk)
            return details
        finally:
            with contextlib.suppress(FileNotFoundError):
                copy_path.unlink()

    def _copy(self, source_path: str, copy_path: Path) -> DumpDetails:
        details = DumpDetails(counts_consistent=True)
        timeout = self.job.connect_timeout.total_seconds()
        try:
            source = sqlite3.connect(_readonly_uri(source_path), uri=True, timeout=timeout)
        except sqlite3.Error as error:
            raise ConnectionFailed(f"cannot open SQLite database {source_path}: {error}") from None
        descriptor = os.open(copy_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        os.close(descriptor)
        try:
            copy = sqlite3.connect(copy_path)
            try:
                source.backup(copy, pages=1024)
                problems = [row[0] for row in copy.execute("PRAGMA integrity_check").fetchall()]
                if problems != ["ok"]:
                    raise DumpError(f"integrity_check failed on the copy: {'; '.join(problems[:5])}", "corrupt")
                tables = copy.execute(_TABLES).fetchall()
                scope = self.job.scope.for_database(source_path)
                if not scope.is_everything:
                    details.scope = resolve(scope, [str(row[0]) for row in tables])
                    details.empty_tables = details.scope.schema_only
                    details.warnings += details.scope.warnings(source_path)
                    _apply_scope(copy, details.scope)
                    tables = [(name,) for (name,) in tables if name not in details.scope.excluded]
                for (table,) in tables:
                    quoted = _quoted(table)
                    (count,) = copy.execute(f"SELECT count(*) FROM {quoted}").fetchone()  # noqa: S608 - quoted identifier
                    details.counts[table] = int(count)
                copy.execute("PRAGMA journal_mode = DELETE")
            finally:
                copy.close()
        except sqlite3.Error as error:
            raise DumpError(f"SQLite backup of {source_path} failed: {error}", "tool_failed") from None
        finally:
            source.close()
        return details


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _apply_scope(copy: sqlite3.Connection, resolved: ResolvedScope) -> None:
    """Filter the private copy (never the source): drop excluded tables, empty schema-only ones with
    their triggers set aside (a DELETE must not fire them into other tables), then VACUUM so no page
    of the file still holds a left-out row."""
    copy.isolation_level = None  # statements as written: VACUUM cannot run inside a transaction
    copy.execute("PRAGMA foreign_keys = OFF")  # no cascade into tables in scope
    copy.execute("BEGIN")
    for table in resolved.excluded:
        copy.execute(f"DROP TABLE {_quoted(table)}")
    for table in resolved.schema_only:
        triggers = copy.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?", (table,)
        ).fetchall()
        for name, _ in triggers:
            copy.execute(f"DROP TRIGGER {_quoted(name)}")
        copy.execute(f"DELETE FROM {_quoted(table)}")  # noqa: S608 - quoted identifier
        for _, statement in triggers:
            copy.execute(statement)
    copy.execute("COMMIT")
    copy.execute("VACUUM")
