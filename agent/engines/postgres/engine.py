"""PostgreSQL: one `pg_dump --format=custom -Z0` per database, compressed by the agent.

Custom format without pg_dump's own compression is as fast as a plain dump piped to zstd (4x
faster than pg_dump's zlib) and keeps selective restore. Row counts come from the archive's own
COPY data as the structural check walks it (archive.py): the dump's snapshot, no second scan of
any table on the server. The password reaches libpq through a
0600 anonymous memfd passfile: never argv, never the environment, nothing left after a crash.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from agent import process, trust
from agent.engines.base import (
    EMPTY,
    MISSING,
    NOT_EMPTY,
    ChangeToken,
    DumpDetails,
    DumpTarget,
    Engine,
    PrivilegeFinding,
    ServerInfo,
    Sink,
    StreamCheck,
    TrailerCheck,
    options_of,
)
from agent.engines.postgres import change_token, handshake
from agent.engines.postgres.archive import CustomArchiveCheck
from agent.engines.postgres.busy import APPLICATION_NAME, ActiveBackends
from agent.engines.postgres.options import PostgresOptions
from agent.errors import ConnectionFailed, ToolError, UntrustedServer, VerificationError
from agent.manifest import Manifest
from agent.scope import ResolvedScope, resolve
from agent.secrets import Secret

DEFAULT_PORT = 5432
# where the server's socket is on Debian/Ubuntu and RHEL builds (never /tmp: anyone may create names there)
DEFAULT_SOCKET_FOLDERS = ("/run/postgresql", "/var/run/postgresql")
REFUSE_CLEAR_TEXT = "!password"  # libpq's require_auth: any method but the clear-text one
REQUIRE_AUTH_SINCE = 160000  # libpq 16
CUSTOM_FORMAT = "postgresql-custom"
GLOBALS_FORMAT = "postgresql-globals-sql"
_VERSION = re.compile(r"\(PostgreSQL\) (\d+)(?:\.(\d+))?")
_USER_TABLES = """
    SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
      AND c.relpersistence <> 't'
    ORDER BY 1, 2
"""


# the tables a scope chooses from: plain and partitioned tables, each partition with its parent
_SCOPE_TABLES = """
    SELECT n.nspname, c.relname, c.relkind, pn.nspname, p.relname
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_inherits i ON i.inhrelid = c.oid AND c.relispartition
    LEFT JOIN pg_class p ON p.oid = i.inhparent LEFT JOIN pg_namespace pn ON pn.oid = p.relnamespace
    WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' AND c.relpersistence <> 't'
"""
# (dependent, what it needs): views and materialized views reading a table, foreign keys referencing one
_SCOPE_DEPENDENCIES = """
    SELECT DISTINCT 'view', vn.nspname || '.' || v.relname, tn.nspname || '.' || t.relname
    FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class
    JOIN pg_namespace vn ON vn.oid = v.relnamespace JOIN pg_class t ON t.oid = d.refobjid
    JOIN pg_namespace tn ON tn.oid = t.relnamespace
    WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass AND v.oid <> t.oid
      AND t.relkind IN ('r', 'p')
    UNION
    SELECT DISTINCT 'foreign key', fn.nspname || '.' || f.relname, tn.nspname || '.' || t.relname
    FROM pg_constraint k JOIN pg_class f ON f.oid = k.conrelid JOIN pg_namespace fn ON fn.oid = f.relnamespace
    JOIN pg_class t ON t.oid = k.confrelid JOIN pg_namespace tn ON tn.oid = t.relnamespace
    WHERE k.contype = 'f' AND f.oid <> t.oid
"""


def table_pattern(qualified: tuple[str, str]) -> str:
    """An exact pg_dump table pattern: inside double quotes no character is a wildcard."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in qualified)


def _conninfo_value(value: str) -> str:
    """Quote a libpq conninfo value so any database name (spaces, quotes, `=`) is taken literally."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _passfile_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


@contextlib.contextmanager
def passfile(user: str | None, password: Secret | None) -> Iterator[tuple[dict[str, str], tuple[int, ...]]]:
    """An anonymous 0600 passfile inherited by the child as /dev/fd/N; gone when closed or on a crash."""
    if password is None:
        yield {}, ()
        return
    descriptor = os.memfd_create("backup-agent-pgpass")  # close-on-exec: only the tool inherits it
    try:
        os.fchmod(descriptor, 0o600)
        line = f"*:*:*:{_passfile_field(user or '*')}:{_passfile_field(password.reveal())}\n"
        os.write(descriptor, line.encode())
        yield {"PGPASSFILE": f"/dev/fd/{descriptor}"}, (descriptor,)
    finally:
        os.close(descriptor)


def _sibling(tool: str | None, name: str) -> str:
    """`name` from the folder of a configured tool path if it is there, else from PATH."""
    if tool and os.sep in tool:
        candidate = Path(tool).parent / name
        if candidate.exists():
            return str(candidate)
    return name


def _tool_version(tool: str) -> tuple[int, str]:
    result = process.run([tool, "--version"], timeout=30)
    match = _VERSION.search(result.stdout)
    if result.returncode != 0 or match is None:
        raise ToolError(f"cannot read the version of {tool}: {result.stderr.strip() or result.stdout.strip()}")
    return int(match[1]), result.stdout.strip()


class PgRestoreCheck:
    """Reads the whole custom-format archive with `pg_restore -f /dev/null` as it streams by.

    `pg_restore --list` passes a truncated archive; restoring every block to /dev/null does not.
    Only CustomArchiveCheck's fallback now, for archive versions newer than that reader knows.
    """

    def __init__(self, tool: str) -> None:
        self._child = process.start(
            process.Command((tool, "--file=/dev/null", "--exit-on-error")),
            stdin=process.PIPE,
            stdout=process.DEVNULL,
        )
        assert self._child.popen.stdin is not None
        self._stdin = self._child.popen.stdin
        self._broken = False

    def feed(self, data: bytes) -> None:
        if self._broken:
            return
        try:
            self._stdin.write(data)
        except BrokenPipeError:
            self._broken = True

    def finish(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            self._stdin.close()
        if self._child.wait() != 0 or self._broken:
            tail = self._child.stderr.text()
            last = tail.splitlines()[-1] if tail else f"exit status {self._child.popen.returncode}"
            raise VerificationError(f"pg_restore could not read the archive to its end: {last}", tail)

    def abort(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self._stdin.close()
        self._child.terminate_group(grace=2)


class PostgresEngine(Engine):
    server_users = ("postgres",)

    @property
    def options(self) -> PostgresOptions:
        return options_of(self.job, PostgresOptions)

    # --- tools and connections -------------------------------------------------------------
    def _tool(self, name: str) -> str:
        """pg_dump from the job's `tool` (or PATH); its siblings from the same folder when there."""
        configured = self.job.tool
        if configured and name == "pg_dump":
            return configured
        return _sibling(configured, name)

    def _host(self) -> str:
        """The socket folder or host, always explicit: libpq's built-in default may be /tmp.

        With neither `socket` nor `host`, the first standard socket folder whose socket is the
        server's (agent/trust.py), else TCP localhost.
        """
        if self.job.socket or self.job.host:
            return str(self.job.socket or self.job.host)
        for folder in DEFAULT_SOCKET_FOLDERS:
            path = f"{folder}/.s.PGSQL.{self._port()}"
            if os.path.exists(path) and trust.check_socket(path, self.trusted_server_users()) is None:
                return folder
        return "localhost"

    def _port(self) -> int:
        return self.job.port or DEFAULT_PORT

    def endpoints(self) -> list[trust.Endpoint]:
        """Each host of the (libpq, comma-separated) list: a socket folder's socket, or host and port."""
        users = self.trusted_server_users()
        found = []
        for host in self._host().split(","):
            if host.startswith("/"):
                found.append(trust.Endpoint(socket=f"{host}/.s.PGSQL.{self._port()}", server_users=users))
            else:
                found.append(trust.Endpoint(host=host, port=self._port(), server_users=users))
        return found

    def _connection_args(self) -> list[str]:
        args = [f"--host={self._host()}", f"--port={self._port()}"]
        if self.job.user:
            args.append(f"--username={self.job.user}")
        return [*args, "--no-password"]

    def _tool_environment(self) -> dict[str, str]:
        """TLS settings (paths and a mode: no secret) and, for a libpq 16+ tool, the clear-text refusal."""
        environment = {f"PG{key.upper()}": value for key, value in self.options.tls_settings().items()}
        environment["PGAPPNAME"] = APPLICATION_NAME  # the busy signal leaves the agent's own backends out
        if not self.options.verifies_server:
            environment["PGREQUIREAUTH"] = REFUSE_CLEAR_TEXT  # ignored by libpq < 16: see connect()
        return environment

    def _server_label(self) -> str:
        host = self._host()
        if host.startswith("/"):
            return f"{host} (socket)"
        return f"{host}:{self._port()}"

    def connect(self, database: str = "postgres", *, autocommit: bool = True) -> psycopg.Connection[Any]:
        """A psycopg connection; the server's socket or port and its way of asking for the password are
        checked first, so no password reaches an impostor (also right before each tool: see `_driver_check`)."""
        self.check_server()
        password = self.job.password.read()
        params: dict[str, Any] = {
            "dbname": database,
            "host": self._host(),
            "port": self._port(),
            "user": self.job.user,
            "connect_timeout": max(1, int(self.job.connect_timeout.total_seconds())),
            "application_name": APPLICATION_NAME,
            **self.options.tls_settings(),
        }
        if not self.options.verifies_server:
            if psycopg.pq.version() >= REQUIRE_AUTH_SINCE:
                params["require_auth"] = REFUSE_CLEAR_TEXT
            else:
                self._refuse_clear_text_by_handshake(database)
        if password is not None:
            params["password"] = password.reveal()
        try:
            return psycopg.connect(autocommit=autocommit, **{k: v for k, v in params.items() if v is not None})
        except psycopg.OperationalError as error:
            if "authentication method requirement" in str(error) and "cleartext" in str(error):
                raise self._clear_text_refused() from None
            raise ConnectionFailed(
                f"cannot connect to PostgreSQL at {self._server_label()}: {_first_line(error)}"
            ) from None

    def _driver_check(self, database: str = "postgres") -> None:
        """Right before a tool starts: the driver connects as the tool will, refusing what the tool cannot.

        pg_dump, pg_dumpall, pg_restore and psql of PostgreSQL 15 link the system's libpq 15, which
        sends the password in clear text to whatever asks for it.
        """
        self.connect(database).close()

    def _refuse_clear_text_by_handshake(self, database: str) -> None:
        """For a driver whose libpq has no require_auth: ask each endpoint how it wants the password."""
        timeout = max(1.0, self.job.connect_timeout.total_seconds())
        for endpoint in self.endpoints():
            address = endpoint.socket or (str(endpoint.host), self._port())
            try:
                method = handshake.asked_method(address, self.job.user or "postgres", database, timeout)
            except OSError:
                continue  # unreachable: the driver's own connection says so
            if method == handshake.AUTH_CLEARTEXT:
                raise self._clear_text_refused()

    def _clear_text_refused(self) -> UntrustedServer:
        return UntrustedServer(
            f"the PostgreSQL server at {self._server_label()} asked for the password in clear text (libpq's "
            f"password method) over a connection that does not verify the server: refused, the password was "
            f'not sent; use sslmode = "verify-full" (or verify-ca) with sslrootcert, or a scram-sha-256 account'
        )

    # --- the engine interface --------------------------------------------------------------
    def probe(self) -> ServerInfo:
        tool = self._tool("pg_dump")
        if shutil.which(tool) is None:
            raise ToolError(f"{tool} not found; install postgresql-client or set jobs.{self.job.name}.tool")
        tool_major, tool_text = _tool_version(tool)
        with self.connect() as connection:
            server_number = connection.info.server_version
            row = connection.execute("SHOW server_version").fetchone()
            server_text = str(row[0]) if row else str(server_number)
        server_major = server_number // 10000
        if tool_major < server_major:
            raise ToolError(
                f"{tool} is version {tool_major} but the server is PostgreSQL {server_major}: "
                f"pg_dump cannot dump a newer server; install postgresql-client-{server_major}"
            )
        return ServerInfo(self._server_label(), server_text, tool, tool_text)

    def discover(self) -> list[str]:
        with self.connect() as connection:
            rows = connection.execute(
                "SELECT datname FROM pg_database WHERE NOT datistemplate AND datallowconn ORDER BY datname"
            ).fetchall()
        return [str(row[0]) for row in rows]

    def extra_targets(self) -> list[DumpTarget]:
        if not self.options.include_globals:
            return []
        return [DumpTarget("", kind="globals", extension="sql", format=GLOBALS_FORMAT)]

    def database_target(self, database: str) -> DumpTarget:
        return DumpTarget(database, kind="database", extension="pgdump", format=CUSTOM_FORMAT)

    def size_estimate(self, database: str) -> int | None:
        try:
            with self.connect() as connection:
                row = connection.execute("SELECT pg_database_size(%s)", (database,)).fetchone()
        except psycopg.Error:
            return None  # e.g. no such database: its dump then fails as that database's own failure
        return int(row[0]) if row else None

    def change_token(self, target: DumpTarget) -> ChangeToken | None:
        """The database's write counters and what they cannot see (postgres/change_token.py); the
        globals file is always dumped."""
        if target.kind != "database":
            return None
        try:
            with self.connect(target.database) as connection:
                return change_token.read_token(connection)
        except psycopg.Error:
            return None  # cannot read the statistics (a privilege, a gone database): dump

    @classmethod
    def new_check(cls, format_name: str, tool: str | None = None) -> StreamCheck:
        if format_name == GLOBALS_FORMAT:
            return TrailerCheck(b"PostgreSQL database cluster dump complete", "the globals dump")
        if format_name == CUSTOM_FORMAT:
            # in-process (docs/performance.md); pg_restore only for a format version it does not know
            restore_tool = _sibling(tool, "pg_restore")
            return CustomArchiveCheck(fallback=lambda: PgRestoreCheck(restore_tool))
        raise VerificationError(f"unknown PostgreSQL format {format_name!r}")

    def dump(self, target: DumpTarget, sink: Sink) -> DumpDetails:
        if target.kind == "globals":
            return self._dump_globals(sink)
        return self._dump_database(target.database, sink)

    def _command(self, argv: list[str], env: dict[str, str], fds: tuple[int, ...]) -> process.Command:
        environment = {**self._tool_environment(), **env}
        return process.Command(tuple(argv), env=environment, pass_fds=fds, nice=self.job.nice, ionice=self.job.ionice)

    def _dump_globals(self, sink: Sink) -> DumpDetails:
        details = DumpDetails()
        argv = [self._tool("pg_dumpall"), "--globals-only", *self._connection_args()]
        with self.connect() as connection:
            row = connection.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        if not (row and row[0]):
            argv.append("--no-role-passwords")
            details.warnings.append("not a superuser: role passwords are not in the globals dump")
        with passfile(self.job.user, self.job.password.read()) as (env, fds):
            self._driver_check()
            child = process.start(self._command(argv, env, fds))
            process.stream_stdout(child, sink, self.context.limits, "pg_dumpall")
        return details

    def _dump_database(self, database: str, sink: Sink) -> DumpDetails:
        """pg_dump alone; the runner's CustomArchiveCheck counts the rows from the archive it writes.

        A table scope becomes exact `--exclude-table` / `--exclude-table-data` names (never
        `--table`, which would leave out the types, functions and schemas the tables need).
        """
        lock_wait = int(self.job.lock_wait_timeout.total_seconds() * 1000)
        details = DumpDetails()
        scope_args: list[str] = []
        scope = self.job.scope.for_database(database)
        if not scope.is_everything:
            rows = self._scope_catalog(database)
            catalog = {name: (schema, table, kind) for name, schema, table, kind, _ in rows}
            parents = {row[0]: row[4] for row in rows if row[4]}
            details.scope = resolve(scope, list(catalog), matches=self.scope_matches, parents=parents)
            scope_args += [f"--exclude-table={table_pattern(catalog[name][:2])}" for name in details.scope.excluded]
            scope_args += [
                f"--exclude-table-data={table_pattern(catalog[name][:2])}" for name in details.scope.schema_only
            ]
            details.empty_tables = tuple(name for name in details.scope.schema_only if catalog[name][2] == "r")
            details.warnings += self.scope_warnings(database, details.scope)
        argv = [
            self._tool("pg_dump"),
            "--format=custom",
            "--compress=0",
            f"--lock-wait-timeout={lock_wait}",
            *self._connection_args(),
            *scope_args,
            *self.job.extra_args,
            f"--dbname=dbname={_conninfo_value(database)}",
        ]
        with passfile(self.job.user, self.job.password.read()) as (env, fds):
            self._driver_check(database)  # the driver connects as pg_dump will, refusing what it cannot
            child = process.start(self._command(argv, env, fds))
            process.stream_stdout(child, sink, self.context.limits, f"pg_dump of {database!r}")
        return details

    # --- table scope -----------------------------------------------------------------------
    def _scope_catalog(self, database: str) -> list[tuple[str, str, str, str, str | None]]:
        """(schema.table, schema, table, relkind, parent schema.table) of every table a scope may name."""
        with self.connect(database) as connection:
            rows = connection.execute(_SCOPE_TABLES).fetchall()
        return [
            (f"{schema}.{table}", schema, table, kind, f"{parent_schema}.{parent}" if parent else None)
            for schema, table, kind, parent_schema, parent in rows
        ]

    def table_names(self, database: str) -> tuple[list[str], dict[str, str]]:
        rows = self._scope_catalog(database)
        return [row[0] for row in rows], {row[0]: row[4] for row in rows if row[4]}

    @staticmethod
    def scope_matches(pattern: str, name: str) -> bool:
        """`schema.table` globs; a pattern without a dot names a table in any schema."""
        if "." not in pattern:
            return fnmatch.fnmatchcase(name.split(".", 1)[1] if "." in name else name, pattern)
        return fnmatch.fnmatchcase(name, pattern)

    def scope_warnings(self, database: str, resolved: ResolvedScope) -> list[str]:
        """Patterns that match nothing, and what a restore of this scope would trip on: a view or a
        foreign key needing a table left out, a foreign key needing rows a schema-only table lacks."""
        warnings = resolved.warnings(database)
        excluded, empty = set(resolved.excluded), set(resolved.schema_only)
        with self.connect(database) as connection:
            rows = connection.execute(_SCOPE_DEPENDENCIES).fetchall()
        for kind, dependent, needed in sorted(rows):
            if dependent in excluded:
                continue
            if needed in excluded:
                warnings.append(
                    f"database {database!r}: {kind} {dependent} needs {needed}, which the scope excludes: "
                    "a restore of this dump fails; exclude it too or keep the table (schema_only_tables)"
                )
            elif kind == "foreign key" and needed in empty and dependent not in empty:
                warnings.append(
                    f"database {database!r}: foreign key of {dependent} references {needed}, whose data is left "
                    "out (schema_only_tables): a restore fails unless that table is empty too"
                )
        return warnings

    # --- restore and drills ----------------------------------------------------------------
    def database_state(self, database: str) -> str:
        with self.connect() as connection:
            exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if not exists:
            return MISSING
        with self.connect(database) as connection:
            row = connection.execute(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'"
            ).fetchone()
        return NOT_EMPTY if row and row[0] else EMPTY

    def create_database(self, database: str) -> None:
        with self.connect() as connection:
            connection.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(database)))

    def drop_database(self, database: str) -> None:
        with self.connect() as connection:
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))

    def restore(
        self,
        chunks: Iterable[bytes],
        manifest: Manifest,
        database: str,
        *,
        tables: Sequence[str] = (),
        drill: bool = False,
    ) -> None:
        """pg_restore from stdin in one transaction (all or nothing); globals go through psql."""
        if manifest.kind == "globals":
            argv = [
                self._tool("psql"),
                "--no-psqlrc",
                "--quiet",
                *self._connection_args(),
                f"--dbname=dbname={_conninfo_value(database)}",
                "--file=-",
            ]
            chunks = keep_own_password(chunks, self.job.user or "")
        else:
            argv = [
                self._tool("pg_restore"),
                "--exit-on-error",
                "--single-transaction",
                *self._connection_args(),
                f"--dbname=dbname={_conninfo_value(database)}",
            ]
            if drill:
                argv += ["--no-owner", "--no-privileges"]
            elif self.restores_as_own_account and not self._is_superuser():
                argv.append("--no-owner")  # a restore account owns what it restores; it cannot give it away
            argv += [f"--table={table}" for table in tables]
        with passfile(self.job.user, self.job.password.read()) as (env, fds):
            self._driver_check(database)
            child = process.start(self._command(argv, env, fds), stdin=process.PIPE, stdout=process.DEVNULL)
            process.feed_stdin(child, chunks, f"{Path(argv[0]).name} into {database!r}")

    def busy_probe(self) -> ActiveBackends | None:
        threshold = self.options.busy_threshold
        return ActiveBackends(self.connect(), threshold) if threshold > 0 else None

    def check_privileges(self) -> list[PrivilegeFinding]:
        from agent.engines.postgres.privileges import check_privileges

        return check_privileges(self)

    def missing_restore_privileges(self, database: str, state: str) -> list[str]:
        from agent.engines.postgres.privileges import missing_restore_privileges

        return missing_restore_privileges(self, database, state)

    def _is_superuser(self) -> bool:
        from agent.engines.postgres.privileges import is_superuser

        return is_superuser(self)

    def count_rows(self, database: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        with self.connect(database) as connection:
            for schema, table in connection.execute(_USER_TABLES).fetchall():
                query = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
                row = connection.execute(query).fetchone()
                counts[f"{schema}.{table}"] = int(row[0]) if row else 0
        return counts


def keep_own_password(chunks: Iterable[bytes], user: str) -> Iterator[bytes]:
    """Drop the PASSWORD clause of the agent's own role from a globals dump being restored.

    Restoring globals brings every role's password back, which would lock the agent out of the
    server it is restoring to (its password file holds the new server's password).
    """
    quoted = re.escape(user) + "|" + re.escape('"' + user.replace('"', '""') + '"')
    pattern = re.compile(rb"^(ALTER ROLE (?:" + quoted.encode() + rb") WITH .*?) PASSWORD '[^']*'(.*)$", re.MULTILINE)
    pending = b""
    for chunk in chunks:
        pending += chunk
        cut = pending.rfind(b"\n") + 1
        if cut:
            yield pattern.sub(rb"\1\2", pending[:cut])
            pending = pending[cut:]
    if pending:
        yield pattern.sub(rb"\1\2", pending)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
