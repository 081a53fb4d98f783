"""MySQL and MariaDB: one `mariadb-dump`/`mysqldump` per database, plain SQL, compressed by the agent.

Every file restores under any name (`mariadb NEWNAME < file`): no `--databases`, so no CREATE
DATABASE or USE, and the `ALTER DATABASE `old` ...` collation switches the tool writes around
routines are rewritten to name no database (they then apply to whichever database is being
restored). DEFINER clauses stay as the server has them: a backup reproduces the server, the
manifest lists the accounts they name, `include_grants` dumps those accounts, and a drill drops
the clauses, restoring where the accounts do not exist.

Credentials reach the tool in an anonymous 0600 memfd option file given as its only option file
(`--defaults-file=/dev/fd/N`, the first option): never argv, never the environment, and no
`~/.my.cnf` or `[mysqldump]` section elsewhere can change the account or the dump's format.
Row counts come from the dump's own INSERT rows, counted as they stream by (row_count.py): the
dump's snapshot, so they are consistent, and no second scan through the buffer pool.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import ssl
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pymysql

from agent import process, trust
from agent.engines.base import (
    EMPTY,
    MISSING,
    NOT_EMPTY,
    ChangeToken,
    DumpDetails,
    DumpTarget,
    Engine,
    EngineContext,
    PrivilegeFinding,
    ServerInfo,
    Sink,
    StreamCheck,
    TrailerCheck,
    options_of,
)
from agent.engines.mysql import auth, buffer_pool, change_token
from agent.engines.mysql import grants as grant_rules
from agent.engines.mysql.busy import RunningThreads
from agent.engines.mysql.grants import (
    DUMP_PRIVILEGES,
    RESTORE_PRIVILEGES,
    Grant,
    granted_roles,
    may_name_other_definers,
    missing_privileges,
    parse_grants,
    privilege_gaps,
)
from agent.engines.mysql.option_file import option_file
from agent.engines.mysql.options import MysqlOptions
from agent.engines.mysql.row_count import SqlDumpCheck
from agent.engines.mysql.sql_stream import (
    INTERNAL_ACCOUNTS,
    AlterDatabaseRewriter,
    keep_own_password,
    lines_of,
    quote_identifier,
    skip_builtin_accounts,
    strip_definers,
)
from agent.engines.mysql.versions import (
    MARIADB,
    MYSQL,
    Version,
    compatibility_problem,
    parse_server_version,
    parse_tool_version,
    supports_system_users,
)
from agent.errors import (
    ConfigError,
    ConnectionFailed,
    DumpError,
    ToolError,
    UntrustedServer,
    UsageError,
    VerificationError,
)
from agent.log import get_logger
from agent.scope import ResolvedScope, resolve

if TYPE_CHECKING:
    from agent.config import JobConfig
    from agent.manifest import Manifest

SQL_FORMAT = "mysql-sql"
GRANTS_FORMAT = "mysql-grants-sql"
TRAILER = b"\n-- Dump completed"
DEFAULT_PORT = 3306
SYSTEM_DATABASES = ("information_schema", "performance_schema", "sys")
DUMP_TOOLS = ("mariadb-dump", "mysqldump")
# where the server's socket is when no host or socket is given (Debian/Ubuntu, RHEL); never a folder
# others may write such as /tmp, and each used only when agent/trust.py finds it the server's
DEFAULT_SOCKETS = (
    "/run/mysqld/mysqld.sock",
    "/var/run/mysqld/mysqld.sock",
    "/var/lib/mysql/mysql.sock",
)
MAX_ALLOWED_PACKET = 1 << 30
# engines that hold no data of their own: nothing to make consistent
_DATALESS_ENGINES = {"BLACKHOLE", "FEDERATED", "CONNECT", "SPIDER"}


# --------------------------------------------------------------------------------------------------
# The engine


@dataclass(frozen=True, slots=True)
class _DatabaseFacts:
    """What the catalog says about a database before its dump (read without locks)."""

    character_set: str
    collation: str
    base_tables: list[str]
    non_transactional: dict[str, str]  # table -> engine
    definers: list[str]
    missing_definers: list[str]  # named by DEFINER clauses but not an account here
    privilege_gaps: list[str]  # what the account lacks to see every trigger and routine


@dataclass(frozen=True, slots=True)
class _Endpoint:
    socket: str | None
    host: str
    port: int

    def label(self) -> str:
        return f"{self.socket} (socket)" if self.socket else f"{self.host}:{self.port}"


class MysqlEngine(Engine):
    server_users = ("mysql",)

    def __init__(self, job: JobConfig, context: EngineContext) -> None:
        super().__init__(job, context)
        self._tool: str | None = None
        self._tool_version: Version | None = None
        self._server_version: Version | None = None

    @property
    def options(self) -> MysqlOptions:
        return options_of(self.job, MysqlOptions)

    # --- connections ----------------------------------------------------------------------
    def _endpoint(self) -> _Endpoint:
        """Socket, host or (neither given) the usual local socket, else TCP localhost:3306."""
        port = self.job.port or DEFAULT_PORT
        if self.job.socket:
            return _Endpoint(self.job.socket, "localhost", port)
        if self.job.host or self.job.port:
            return _Endpoint(None, self.job.host or "localhost", port)
        for candidate in DEFAULT_SOCKETS:
            if os.path.exists(candidate) and trust.check_socket(candidate, self.trusted_server_users()) is None:
                return _Endpoint(candidate, "localhost", port)
        return _Endpoint(None, "localhost", port)

    def endpoints(self) -> list[trust.Endpoint]:
        endpoint, users = self._endpoint(), self.trusted_server_users()
        if endpoint.socket:
            return [trust.Endpoint(socket=endpoint.socket, server_users=users)]
        return [trust.Endpoint(host=endpoint.host, port=endpoint.port, server_users=users)]

    def _verifies_server(self) -> bool:
        """TLS that proves the server is the real one: only then may a password go in clear text."""
        return not self._endpoint().socket and self._tls_mode() in auth.VERIFYING_SSL_MODES

    def _tls_mode(self) -> str | None:
        """The job's ssl_mode; a CA alone means VERIFY_CA, as in MySQL's own client."""
        if self.options.ssl_mode:
            return self.options.ssl_mode
        return "VERIFY_CA" if self.options.ssl_ca else None

    def _driver_tls(self) -> dict[str, Any]:
        mode = self._tls_mode()
        if self._endpoint().socket or mode in (None, "PREFERRED"):
            return {}
        if mode == "DISABLED":
            return {"ssl_disabled": True}
        try:
            context = ssl.create_default_context(cafile=self.options.ssl_ca)
        except OSError as error:  # a missing or unreadable CA file is a setting to fix, not a crash
            raise ConfigError(f"jobs.{self.job.name}.ssl_ca: cannot load {self.options.ssl_ca}: {error}") from None
        if mode != "VERIFY_IDENTITY":
            context.check_hostname = False
        if mode == "REQUIRED":
            context.verify_mode = ssl.CERT_NONE
        return {"ssl": context}

    def _tool_tls(self) -> list[str]:
        mode = self._tls_mode()
        if self._endpoint().socket or mode is None:
            return []
        args = [f"--ssl-ca={self.options.ssl_ca}"] if self.options.ssl_ca else []
        if self._tool_version is not None and self._tool_version.vendor == MYSQL:
            return [f"--ssl-mode={mode}", *args]
        # MariaDB clients have no --ssl-mode; REQUIRED is also enforced by the driver's probe
        flags = {"DISABLED": ["--skip-ssl"], "PREFERRED": [], "REQUIRED": ["--ssl"]}
        return [*flags.get(mode, ["--ssl", "--ssl-verify-server-cert"]), *args]

    def _connection_args(self) -> list[str]:
        endpoint = self._endpoint()
        if endpoint.socket:
            base = ["--protocol=SOCKET", f"--socket={endpoint.socket}"]
        else:
            base = ["--protocol=TCP", f"--host={endpoint.host}", f"--port={endpoint.port}"]
        return [*base, *self._tool_tls(), *self._tool_plugins()]

    def _tool_plugins(self) -> list[str]:
        """MariaDB's tools load any client plugin a server names, clear-text ones included: only safe ones here.

        MySQL's tools refuse mysql_clear_password on their own (without --enable-cleartext-plugin).
        """
        if self._verifies_server() or (self._tool_version is not None and self._tool_version.vendor == MYSQL):
            return []
        return [f"--plugin-dir={auth.plugin_folder(self.context.scratch)}"]

    def connect(self, database: str | None = None) -> Any:
        """A PyMySQL autocommit connection as the job's account (password as a keyword, never argv).

        The socket or port is checked first; a clear-text login is refused unless TLS verifies the server.
        """
        self.check_server()
        endpoint = self._endpoint()
        password = self.job.password.read()
        options: dict[str, Any] = {
            "user": self.job.user,
            "password": password.reveal() if password is not None else "",
            "database": database,
            "charset": "utf8mb4",
            "autocommit": True,
            "connect_timeout": max(1, int(self.job.connect_timeout.total_seconds())),
            "program_name": "backup-agent",
            **self._driver_tls(),
        }
        if not self._verifies_server():
            options["auth_plugin_map"] = auth.refusing_plugin_map()
        if endpoint.socket:
            options["unix_socket"] = endpoint.socket
        else:
            options.update(host=endpoint.host, port=endpoint.port)
        try:
            return pymysql.connect(**options)
        except auth.ClearTextRefused as error:
            raise UntrustedServer(
                f"refusing MySQL/MariaDB at {endpoint.label()}: {error.args[1]} over a connection that does not "
                f'verify the server; the password was not sent (use ssl_mode = "VERIFY_IDENTITY" with ssl_ca, '
                f"or an account with mysql_native_password or ed25519)"
            ) from None
        except pymysql.MySQLError as error:
            raise ConnectionFailed(
                f"cannot connect to MySQL/MariaDB at {endpoint.label()}: {_message(error)}"
            ) from None

    def _command(self, argv: list[str], fds: tuple[int, ...]) -> process.Command:
        return process.Command(tuple(argv), pass_fds=fds, nice=self.job.nice, ionice=self.job.ionice)

    @contextlib.contextmanager
    def _options(self) -> Iterator[tuple[str, tuple[int, ...]]]:
        """The credentials for a tool about to start: its socket or port is checked again right now."""
        with option_file(self.job.user, self.job.password.read()) as (path, fds):
            self.check_server()
            yield f"--defaults-file={path}", fds

    # --- tools ----------------------------------------------------------------------------
    def _read_tool_version(self, tool: str) -> Version:
        result = process.run([tool, "--version"], timeout=30)
        version = parse_tool_version(result.stdout)
        if result.returncode != 0 or version is None:
            raise ToolError(f"cannot read the version of {tool}: {result.stderr.strip() or result.stdout.strip()}")
        return version

    def _choose_tool(self, server: Version) -> tuple[str, Version]:
        """The job's `tool`, or the first dump tool on PATH that can dump this server."""
        candidates = [self.job.tool] if self.job.tool else [name for name in DUMP_TOOLS if shutil.which(name)]
        if not candidates:
            raise ToolError(
                f"neither mariadb-dump nor mysqldump found on PATH; install mariadb-client (or "
                f"mysql-client) or set jobs.{self.job.name}.tool"
            )
        problems = []
        for tool in candidates:
            if shutil.which(tool) is None:
                raise ToolError(f"{tool} not found; install it or fix jobs.{self.job.name}.tool")
            version = self._read_tool_version(tool)
            problem = compatibility_problem(tool, version, server)
            if problem is None:
                return tool, version
            problems.append(problem)
        raise ToolError("; ".join(problems))

    def _client(self) -> str:
        """The command-line client beside the dump tool (`mariadb`, else `mysql`)."""
        vendor = self._tool_version.vendor if self._tool_version else MARIADB
        names = ("mariadb", "mysql") if vendor == MARIADB else ("mysql",)
        tool = self._tool or ""
        if os.sep in tool:
            for name in names:
                sibling = Path(tool).parent / name
                if os.access(sibling, os.X_OK):
                    return str(sibling)
        for name in names:
            if shutil.which(name):
                return name
        raise ToolError(f"no {' or '.join(names)} client found on PATH; install {vendor.lower()}-client")

    # --- the engine interface -------------------------------------------------------------
    def probe(self) -> ServerInfo:
        with self.connect() as connection, connection.cursor() as cursor:
            cursor.execute("SELECT VERSION()")
            server_text = str(cursor.fetchone()[0])
        server = parse_server_version(server_text)
        tool, tool_version = self._choose_tool(server)
        self._tool, self._tool_version, self._server_version = tool, tool_version, server
        return ServerInfo(self._endpoint().label(), server_text, tool, tool_version.text)

    def _ensure_probed(self) -> tuple[str, Version, Version]:
        if self._tool is None or self._tool_version is None or self._server_version is None:
            self.probe()
        assert self._tool is not None and self._tool_version is not None and self._server_version is not None
        return self._tool, self._tool_version, self._server_version

    def discover(self) -> list[str]:
        """Every database but information_schema, performance_schema, sys (and mysql unless include_system)."""
        hidden = {*SYSTEM_DATABASES, *(() if self.options.include_system else ("mysql",))}
        with self.connect() as connection, connection.cursor() as cursor:
            cursor.execute("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA")
            names = [str(row[0]) for row in cursor.fetchall()]
        return sorted(name for name in names if name not in hidden and not name.startswith("#mysql50#"))

    def extra_targets(self) -> list[DumpTarget]:
        if not self.options.include_grants:
            return []
        return [DumpTarget("", kind="grants", extension="sql", format=GRANTS_FORMAT)]

    def database_target(self, database: str) -> DumpTarget:
        return DumpTarget(database, kind="database", extension="sql", format=SQL_FORMAT)

    def size_estimate(self, database: str) -> int | None:
        with self.connect() as connection, connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (database,))
            if cursor.fetchone() is None:
                return None
            cursor.execute(
                "SELECT COALESCE(SUM(DATA_LENGTH + INDEX_LENGTH), 0) FROM information_schema.TABLES "
                "WHERE TABLE_SCHEMA = %s",
                (database,),
            )
            return int(cursor.fetchone()[0])

    def change_token(self, target: DumpTarget) -> ChangeToken | None:
        """The binary log position (mysql/change_token.py); the grants file is always dumped."""
        if target.kind != "database":
            return None
        try:
            with self.connect() as connection, connection.cursor() as cursor:
                return change_token.read_token(cursor)
        except pymysql.MySQLError:
            return None

    @classmethod
    def new_check(cls, format_name: str, tool: str | None = None) -> StreamCheck:
        if format_name == SQL_FORMAT:
            return SqlDumpCheck(TRAILER, "the SQL dump")  # counts each table's rows from its INSERTs
        if format_name == GRANTS_FORMAT:
            return TrailerCheck(TRAILER, "the grants dump")
        raise VerificationError(f"unknown MySQL format {format_name!r}")

    def dump(self, target: DumpTarget, sink: Sink) -> DumpDetails:
        if target.kind == "grants":
            return self._dump_grants(sink)
        return self._dump_database(target.database, sink)

    # --- databases ------------------------------------------------------------------------
    def _facts(self, database: str) -> _DatabaseFacts | None:
        with self.connect() as connection, connection.cursor() as cursor:
            cursor.execute(
                "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA "
                "WHERE SCHEMA_NAME = %s",
                (database,),
            )
            schema = cursor.fetchone()
            if schema is None:
                return None
            cursor.execute("SELECT ENGINE FROM information_schema.ENGINES WHERE TRANSACTIONS = 'YES'")
            transactional = {str(row[0]).upper() for row in cursor.fetchall()}
            cursor.execute(
                "SELECT TABLE_NAME, ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s "
                "AND TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED') ORDER BY TABLE_NAME",
                (database,),
            )
            tables = [(str(name), str(engine) if engine else "") for name, engine in cursor.fetchall()]
            cursor.execute(
                "SELECT DEFINER FROM information_schema.VIEWS WHERE TABLE_SCHEMA = %s "
                "UNION SELECT DEFINER FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s "
                "UNION SELECT DEFINER FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %s "
                "UNION SELECT DEFINER FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s",
                (database,) * 4,
            )
            definers = sorted({str(row[0]) for row in cursor.fetchall() if row[0]})
            gaps = privilege_gaps(parse_grants(self._grant_lines(cursor)), database)
            missing: list[str] = []
            with contextlib.suppress(pymysql.MySQLError):  # reading mysql.user needs a privilege
                cursor.execute("SELECT IF(Host = '', User, CONCAT(User, '@', Host)) FROM mysql.user")
                accounts = {str(row[0]) for row in cursor.fetchall()}
                missing = [definer for definer in definers if definer not in accounts]
        non_transactional = {
            name: engine
            for name, engine in tables
            if engine and engine.upper() not in transactional and engine.upper() not in _DATALESS_ENGINES
        }
        return _DatabaseFacts(
            str(schema[0]), str(schema[1]), [name for name, _ in tables], non_transactional, definers, missing, gaps
        )

    @staticmethod
    def _grant_lines(cursor: Any) -> list[str]:
        """SHOW GRANTS of the account and of the roles granted to it (MySQL lists those only on request)."""
        lines: list[str] = []
        with contextlib.suppress(pymysql.MySQLError):
            cursor.execute("SHOW GRANTS")
            lines = [str(row[0]) for row in cursor.fetchall()]
            for role in granted_roles(lines):
                with contextlib.suppress(pymysql.MySQLError):
                    cursor.execute(f"SHOW GRANTS FOR {role}")
                    lines += [str(row[0]) for row in cursor.fetchall()]
        return lines

    def _dump_argv(self, tool: str, tool_version: Version, database: str, lock_tables: bool) -> list[str]:
        """The dump command (its option file goes in first): correct by default, restorable elsewhere."""
        argv = [
            *self._connection_args(),
            "--lock-tables" if lock_tables else "--single-transaction",
            "--quick",
            "--routines",
            "--events",
            "--triggers",
            "--hex-blob",
            "--default-character-set=utf8mb4",
            "--no-tablespaces",  # CREATE TABLESPACE belongs to the old server's files
            f"--max-allowed-packet={MAX_ALLOWED_PACKET}",
        ]
        if tool_version.vendor == MYSQL:
            if tool_version.family >= (5, 6):
                argv.append("--set-gtid-purged=OFF")  # GTID_PURGED would fail on any server with history
            if tool_version.family >= (8, 0):
                argv.append("--column-statistics=0")  # histograms are optimizer hints, not data
        if database == "mysql":
            argv.append("--flush-privileges")
        return [tool, *argv, *self.job.extra_args, "--", database]

    def _dump_database(self, database: str, sink: Sink) -> DumpDetails:
        tool, tool_version, _server = self._ensure_probed()
        facts = self._facts(database)
        if facts is None:
            raise DumpError(f"database {database!r} does not exist on {self._endpoint().label()}", "unknown_database")
        details = DumpDetails()
        lock_tables = bool(facts.non_transactional) and self.options.lock_for_consistency
        details.details.update(
            character_set=facts.character_set,
            collation=facts.collation,
            consistency="lock-tables" if lock_tables else "single-transaction",
            definers=facts.definers,
            counts_method="rows of the dump's own INSERT statements",
        )
        if facts.non_transactional:
            details.details["non_transactional_tables"] = facts.non_transactional
            if not lock_tables:
                warning = _consistency_warning(facts.non_transactional)
                details.warnings.append(warning)
                get_logger(job=self.job.name, database=database).warning(
                    "backup.consistency_warning", message=warning, tables=facts.non_transactional
                )
        if facts.privilege_gaps:
            details.warnings.append(
                f"the account lacks {' and '.join(facts.privilege_gaps)}: {Path(tool).name} leaves out, without "
                f"an error, the triggers and routines it cannot see"
            )
        if facts.missing_definers:
            details.warnings.append(
                f"DEFINER account(s) {', '.join(facts.missing_definers)} do not exist on the server: the views, "
                f"triggers and routines they define fail when used, and their views are dumped with the "
                f"database's name inside (restore those under the same name, or recreate the accounts)"
            )
        argv = self._dump_argv(tool, tool_version, database, lock_tables)
        scope = self.job.scope.for_database(database)
        if not scope.is_everything:
            details.scope = resolve(scope, facts.base_tables)
            argv[-2:-2] = self._scope_args(tool, database, details.scope)
            details.empty_tables = details.scope.schema_only
            details.warnings += self.scope_warnings(database, details.scope)
        rewriter = AlterDatabaseRewriter(database, sink)  # the runner's SqlDumpCheck counts the rows
        with self._options() as (defaults, fds):
            child = process.start(self._command([argv[0], defaults, *argv[1:]], fds))
            process.stream_stdout(child, rewriter.feed, self.context.limits, f"{Path(tool).name} of {database!r}")
        rewriter.flush()
        if rewriter.rewritten:
            details.details["alter_database_rewritten"] = rewriter.rewritten
        return details

    # --- table scope ----------------------------------------------------------------------
    def table_names(self, database: str) -> tuple[list[str], dict[str, str]]:
        with self.connect() as connection, connection.cursor() as cursor:
            cursor.execute(
                "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s "
                "AND TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED')",
                (database,),
            )
            return [str(row[0]) for row in cursor.fetchall()], {}

    def _scope_args(self, tool: str, database: str, resolved: ResolvedScope) -> list[str]:
        """`--ignore-table` / `--ignore-table-data` with exact `database.table` names (the tool compares
        the whole string: no pattern, and a dot or quote in a name is safe), all in the one snapshot."""
        if resolved.schema_only and not self._has_option(tool, "--ignore-table-data"):
            raise DumpError(
                f"schema_only_tables needs a dump tool with --ignore-table-data (mariadb-dump of MariaDB 10.6 "
                f"or later); {Path(tool).name} has none: use exclude_tables, or install mariadb-client",
                "unsupported",
            )
        arguments = [f"--ignore-table={database}.{table}" for table in resolved.excluded]
        return arguments + [f"--ignore-table-data={database}.{table}" for table in resolved.schema_only]

    def _has_option(self, tool: str, option: str) -> bool:
        result = process.run([tool, "--help"], timeout=30)
        return re.search(rf"^\s*{re.escape(option)}[=\s]", result.stdout, re.MULTILINE) is not None

    def scope_warnings(self, database: str, resolved: ResolvedScope) -> list[str]:
        """Patterns that match nothing; views that read a table left out (their CREATE VIEW fails on
        restore); foreign keys into a table left out or emptied (restored rows then point at nothing)."""
        warnings = resolved.warnings(database)
        excluded, empty = set(resolved.excluded), set(resolved.schema_only)
        with self.connect() as connection, connection.cursor() as cursor:
            cursor.execute(
                "SELECT TABLE_NAME, VIEW_DEFINITION FROM information_schema.VIEWS WHERE TABLE_SCHEMA = %s",
                (database,),
            )
            views = [(str(name), str(definition or "")) for name, definition in cursor.fetchall()]
            cursor.execute(
                "SELECT DISTINCT TABLE_NAME, REFERENCED_TABLE_NAME FROM information_schema.KEY_COLUMN_USAGE "
                "WHERE TABLE_SCHEMA = %s AND REFERENCED_TABLE_SCHEMA = %s AND REFERENCED_TABLE_NAME IS NOT NULL",
                (database, database),
            )
            keys = sorted((str(table), str(referenced)) for table, referenced in cursor.fetchall())
        prefix = quote_identifier(database) + "."
        for view, definition in sorted(views):
            for table in sorted(excluded):
                if prefix + quote_identifier(table) in definition:
                    warnings.append(
                        f"database {database!r}: view {view} needs {table}, which the scope excludes: "
                        "a restore of this dump fails; keep the table (schema_only_tables) instead"
                    )
        for table, referenced in keys:
            if table in excluded or table == referenced or (table in empty and referenced in empty):
                continue
            if referenced in excluded or referenced in empty:
                warnings.append(
                    f"database {database!r}: foreign key of {table} references {referenced}, which the scope "
                    f"{'excludes' if referenced in excluded else 'keeps empty'}: restored rows point at nothing"
                )
        return warnings

    # --- around the dumps -------------------------------------------------------------------
    def busy_probe(self) -> RunningThreads | None:
        threshold = self.options.busy_threshold
        return RunningThreads(self.connect(), threshold) if threshold > 0 else None

    def around_dumps(self) -> contextlib.AbstractContextManager[None]:
        """With protect_buffer_pool, the buffer pool's page list is saved before and reloaded after."""
        if not self.options.protect_buffer_pool:
            return contextlib.nullcontext()
        _tool, _tool_version, server = self._ensure_probed()
        return buffer_pool.protected(self.connect, get_logger(job=self.job.name), server.vendor)

    # --- doctor ---------------------------------------------------------------------------
    def check_privileges(self) -> list[PrivilegeFinding]:
        """The privileges each database's dump needs, read from the account's grants and its roles';
        the buffer pool settings a dump's scans depend on, and what protect_buffer_pool needs."""
        with self.connect() as connection, connection.cursor() as cursor:
            cursor.execute("SELECT CURRENT_USER()")
            user = str(cursor.fetchone()[0])
            grants = parse_grants(self._grant_lines(cursor))
            settings = buffer_pool.read_settings(cursor)
            cursor.execute("SELECT VERSION()")
            server = parse_server_version(str(cursor.fetchone()[0]))
        findings = self._dump_privilege_findings(user, grants)
        if settings is not None:
            findings += buffer_pool.settings_findings(*settings)
        if self.options.protect_buffer_pool:
            needed = buffer_pool.required_privilege(server.vendor)
            if buffer_pool.may_set_globals(grants, server.vendor):
                findings.append(PrivilegeFinding(True, f"protect_buffer_pool: {user} has {needed}"))
            else:
                findings.append(
                    PrivilegeFinding(
                        False,
                        f"protect_buffer_pool: {user} lacks {needed}, needed for SET GLOBAL "
                        f"innodb_buffer_pool_dump_now/load_now; GRANT {needed.split()[0]} ON *.* TO {user}, "
                        f"or set protect_buffer_pool = false",
                    )
                )
        return findings

    def _dump_privilege_findings(self, user: str, grants: list[Grant]) -> list[PrivilegeFinding]:
        names, findings = self.databases_on_server()
        for name in names:
            missing = missing_privileges(grants, name)
            if missing:
                findings.append(
                    PrivilegeFinding(
                        False,
                        f"database {name!r}: {user} lacks {', '.join(missing)}; e.g. "
                        f"GRANT {', '.join(DUMP_PRIVILEGES)} ON *.* TO {user} (a global SELECT also covers routines)",
                    )
                )
        if not findings:
            findings.append(PrivilegeFinding(True, f"{user} has the privileges to dump all {len(names)} database(s)"))
        return findings

    def _grants(self) -> tuple[str, list[Grant]]:
        """The account's name and its grants (its roles' included)."""
        with self.connect() as connection, connection.cursor() as cursor:
            cursor.execute("SELECT CURRENT_USER()")
            user = str(cursor.fetchone()[0])
            return user, parse_grants(self._grant_lines(cursor))

    def missing_restore_privileges(self, database: str, state: str) -> list[str]:
        """The privileges a load into `database` needs (CREATE also creates it), by the account's grants."""
        user, grants = self._grants()
        missing = grant_rules.missing_restore_privileges(grants, database)
        if not missing:
            return []
        pattern = quote_identifier(database.replace("_", "\\_").replace("%", "\\%"))
        account = "@".join("'" + part.replace("'", "''") + "'" for part in user.split("@", 1))
        grant = f"GRANT {', '.join(RESTORE_PRIVILEGES)} ON {pattern}.* TO {account}"
        return [f"{', '.join(missing)} on {database!r}: {grant}"]

    # --- grants ---------------------------------------------------------------------------
    def _dump_grants(self, sink: Sink) -> DumpDetails:
        tool, tool_version, server = self._ensure_probed()
        details = DumpDetails()
        details.details["accounts"] = [f"{user}@{host}" if not role else user for user, host, role in self._accounts()]
        if server.vendor == MARIADB and supports_system_users(tool_version):
            details.details["method"] = "mariadb-dump --system=users --insert-ignore"
            argv = [*self._connection_args(), "--system=users", "--insert-ignore", "--default-character-set=utf8mb4"]
            with self._options() as (defaults, fds):
                child = process.start(self._command([tool, defaults, *argv], fds))
                process.stream_stdout(child, sink, self.context.limits, f"{Path(tool).name} --system=users")
            return details
        details.details["method"] = "SHOW CREATE USER and SHOW GRANTS"
        for statement in self.generated_grants():
            sink(statement)
        return details

    def _accounts(self) -> list[tuple[str, str, bool]]:
        """Every account and role but the server's internal ones: (user, host, is_role)."""
        is_mariadb = self._server_version is not None and self._server_version.vendor == MARIADB
        column = "is_role" if is_mariadb else "'N'"
        with self.connect() as connection, connection.cursor() as cursor:
            try:
                cursor.execute(f"SELECT User, Host, {column} FROM mysql.user ORDER BY 3 DESC, 1, 2")  # noqa: S608  # a fixed column name, no input
            except pymysql.MySQLError as error:
                raise DumpError(f"cannot list the accounts: {_message(error)}", "permission_denied") from None
            rows = cursor.fetchall()
            granted_roles: set[tuple[str, str]] = set()
            if not is_mariadb:  # MySQL roles are accounts; create them before the accounts naming them
                with contextlib.suppress(pymysql.MySQLError):
                    cursor.execute("SELECT DISTINCT FROM_USER, FROM_HOST FROM mysql.role_edges")
                    granted_roles = {(str(user), str(host)) for user, host in cursor.fetchall()}
        accounts = [
            (str(user), str(host), role == "Y")
            for user, host, role in rows
            if (str(user), str(host)) not in INTERNAL_ACCOUNTS
        ]
        return sorted(accounts, key=lambda account: (account[:2] not in granted_roles, not account[2]))

    def generated_grants(self) -> Iterator[bytes]:
        """CREATE USER/ROLE IF NOT EXISTS then GRANT statements, for tools without --system=users."""
        accounts = self._accounts()
        with self.connect() as connection, connection.cursor() as cursor:
            with contextlib.suppress(pymysql.MySQLError):  # MySQL 8.0.17+: hashes as hex, not raw bytes
                cursor.execute("SET SESSION print_identified_with_as_hex = ON")
            yield b"-- backup-agent grants dump: accounts and privileges\n/*!40101 SET NAMES utf8mb4 */;\n"
            try:
                for user, host, role in accounts:
                    if role:
                        yield f"CREATE ROLE IF NOT EXISTS {quote_identifier(user)};\n".encode()
                        continue
                    cursor.execute("SHOW CREATE USER %s@%s", (user, host))
                    statement = str(cursor.fetchone()[0])
                    yield (re.sub(r"^CREATE USER ", "CREATE USER IF NOT EXISTS ", statement) + ";\n").encode()
                for user, host, role in accounts:
                    if role:
                        cursor.execute("SHOW GRANTS FOR %s", (user,))
                    else:
                        cursor.execute("SHOW GRANTS FOR %s@%s", (user, host))
                    for row in cursor.fetchall():
                        yield (str(row[0]) + ";\n").encode()
            except pymysql.MySQLError as error:
                raise DumpError(f"cannot read the accounts' grants: {_message(error)}", "permission_denied") from None
        yield f"-- Dump completed on {datetime.now(UTC):%Y-%m-%d %H:%M:%S}\n".encode()

    # --- restore (used by `backup-agent restore` and drills) -----------------------------------
    def database_state(self, database: str) -> str:
        """MISSING, EMPTY, or NOT_EMPTY when it holds any table, view, routine or event."""
        with self.connect() as connection, connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (database,))
            if cursor.fetchone() is None:
                return MISSING
            cursor.execute(
                "SELECT (SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s)"
                " + (SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %s)"
                " + (SELECT COUNT(*) FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s)",
                (database,) * 3,
            )
            return NOT_EMPTY if int(cursor.fetchone()[0]) else EMPTY

    def create_database(self, database: str) -> None:
        self._execute(f"CREATE DATABASE {quote_identifier(database)}")

    def drop_database(self, database: str) -> None:
        self._execute(f"DROP DATABASE IF EXISTS {quote_identifier(database)}")

    def count_rows(self, database: str) -> dict[str, int]:
        """Rows per base table, keyed by table name as in the manifest's counts."""
        with self.connect(database) as connection, connection.cursor() as cursor:
            cursor.execute(
                "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s "
                "AND TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED') ORDER BY TABLE_NAME",
                (database,),
            )
            counts: dict[str, int] = {}
            for (table,) in cursor.fetchall():
                cursor.execute(f"SELECT COUNT(*) FROM {quote_identifier(str(table))}")  # noqa: S608  # quoted identifier
                counts[str(table)] = int(cursor.fetchone()[0])
        return counts

    def restore(
        self,
        chunks: Iterable[bytes],
        manifest: Manifest,
        database: str,
        *,
        tables: Sequence[str] = (),
        drill: bool = False,
    ) -> None:
        """Feed the SQL to the client: a database dump into `database`, a grants dump server-wide.

        A drill drops DEFINER clauses, so the agent's account can create every view, trigger and routine.
        """
        if tables:
            raise UsageError("a MySQL/MariaDB dump is restored whole; use restore --to-file to pick tables")
        if manifest.kind == "grants":
            self._load(keep_own_password(skip_builtin_accounts(lines_of(chunks)), self.job.user or ""), None)
            return
        details = manifest.details
        collation = (details.get("character_set"), details.get("collation"))
        if self.database_state(database) == EMPTY and all(isinstance(value, str) for value in collation):
            self._adopt_collation(database, (str(collation[0]), str(collation[1])))
        own = drill or (self.restores_as_own_account and not may_name_other_definers(self._grants()[1]))
        self._load(strip_definers(lines_of(chunks)) if own else chunks, database)

    def _load(self, chunks: Iterable[bytes], database: str | None) -> None:
        self._ensure_probed()
        argv = [
            self._client(),
            *self._connection_args(),
            "--default-character-set=utf8mb4",
            "--binary-mode",  # the dump's bytes as they are, no client commands but DELIMITER
            f"--max-allowed-packet={MAX_ALLOWED_PACKET}",
        ]
        if database is not None:
            argv += ["--", database]
        with self._options() as (defaults, fds):
            child = process.start(
                self._command([argv[0], defaults, *argv[1:]], fds), stdin=process.PIPE, stdout=process.DEVNULL
            )
            target = f"into {database!r}" if database is not None else "of the grants"
            process.feed_stdin(child, chunks, f"{Path(argv[0]).name} restore {target}")

    def _adopt_collation(self, database: str, collation: tuple[str, str]) -> None:
        """Give an empty database the dumped one's defaults, when this server knows that collation."""
        with self.connect() as connection, connection.cursor() as cursor:
            cursor.execute(
                "SELECT 1 FROM information_schema.COLLATIONS WHERE CHARACTER_SET_NAME = %s AND COLLATION_NAME = %s",
                collation,
            )
            if cursor.fetchone() is not None:
                cursor.execute(
                    f"ALTER DATABASE {quote_identifier(database)} CHARACTER SET {collation[0]} COLLATE {collation[1]}"
                )

    def _execute(self, statement: str) -> None:
        with self.connect() as connection, connection.cursor() as cursor:
            cursor.execute(statement)


# --------------------------------------------------------------------------------------------------
# Small helpers


def _consistency_warning(tables: dict[str, str]) -> str:
    by_engine: dict[str, list[str]] = {}
    for table, engine in sorted(tables.items()):
        by_engine.setdefault(engine, []).append(table)
    listing = "; ".join(f"{engine}: {', '.join(names)}" for engine, names in sorted(by_engine.items()))
    return (
        f"{len(tables)} table(s) use a non-transactional engine ({listing}): --single-transaction cannot "
        f"dump them consistently with the rest; set lock_for_consistency = true to lock the database "
        f"while it is dumped"
    )


def _message(error: BaseException) -> str:
    """PyMySQL errors carry (code, message); show the message with its code."""
    args = error.args
    if len(args) == 2 and isinstance(args[0], int):
        return f"{args[1]} ({args[0]})"
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
