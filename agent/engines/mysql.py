"""MySQL and MariaDB: one `mariadb-dump`/`mysqldump` per database, plain SQL, compressed by the agent.

Every file restores under any name (`mariadb NEWNAME < file`): no `--databases`, so no CREATE
DATABASE or USE, and the `ALTER DATABASE `old` ...` collation switches the tool writes around
routines are rewritten to name no database (they then apply to whichever database is being
restored). DEFINER clauses stay as the server has them: a backup reproduces the server, the
manifest lists the accounts they name, `include_grants` dumps those accounts, and `restore_into`
can drop the clauses when restoring where the accounts do not exist.

Credentials reach the tool in an anonymous 0600 memfd option file given as its only option file
(`--defaults-file=/dev/fd/N`, the first option): never argv, never the environment, and no
`~/.my.cnf` or `[mysqldump]` section elsewhere can change the account or the dump's format.
Row counts come from a second consistent snapshot opened as the dump's first bytes arrive; they
equal the dump's rows only if nothing wrote in between, so they are recorded as not consistent.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import ssl
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import pymysql

from agent import process
from agent.compression import method_for_path, open_decompressed
from agent.engines.base import (
    EMPTY,
    MISSING,
    NOT_EMPTY,
    DumpDetails,
    DumpTarget,
    Engine,
    EngineContext,
    ServerInfo,
    Sink,
    StreamCheck,
    TrailerCheck,
)
from agent.errors import AgentError, ConfigError, ConnectionFailed, DumpError, ToolError, UsageError, VerificationError
from agent.log import get_logger
from agent.secrets import Secret

if TYPE_CHECKING:
    from agent.config import JobConfig
    from agent.manifest import Manifest

SQL_FORMAT = "mysql-sql"
GRANTS_FORMAT = "mysql-grants-sql"
TRAILER = b"\n-- Dump completed"
DEFAULT_PORT = 3306
SYSTEM_DATABASES = ("information_schema", "performance_schema", "sys")
DUMP_TOOLS = ("mariadb-dump", "mysqldump")
# where the clients look when no host or socket is given (Debian/Ubuntu, RHEL, macOS builds)
DEFAULT_SOCKETS = (
    "/run/mysqld/mysqld.sock",
    "/var/run/mysqld/mysqld.sock",
    "/var/lib/mysql/mysql.sock",
    "/tmp/mysql.sock",  # noqa: S108  # a path the clients themselves look at, only read
)
MARIADB = "MariaDB"
MYSQL = "MySQL"
MAX_ALLOWED_PACKET = 1 << 30
# accounts every server creates for itself; restoring them elsewhere is never wanted
_INTERNAL_ACCOUNTS = {
    ("mariadb.sys", "localhost"),
    ("mysql.sys", "localhost"),
    ("mysql.session", "localhost"),
    ("mysql.infoschema", "localhost"),
}
# engines that hold no data of their own: nothing to make consistent
_DATALESS_ENGINES = {"BLACKHOLE", "FEDERATED", "CONNECT", "SPIDER"}
# the first MariaDB release of each series whose dump tool has --system=users
_SYSTEM_USERS_SINCE = {(10, 2): 37, (10, 3): 28, (10, 4): 18, (10, 5): 9}
_COUNT_LOCK_WAIT_SECONDS = 5
_RESTORE_CHUNK = 1 << 20
_DEFINER = re.compile(rb" ?DEFINER=`(?:[^`]|``)*`(?:@`(?:[^`]|``)*`)?")


# --------------------------------------------------------------------------------------------------
# Versions: which tool may dump which server (pure)


@dataclass(frozen=True, slots=True)
class Version:
    vendor: str  # MariaDB | MySQL (Percona and other MySQL builds count as MySQL)
    numbers: tuple[int, int, int]
    text: str

    @property
    def family(self) -> tuple[int, int]:
        """The release series (10.11, 8.0, 8.4): each adds features an older tool cannot dump."""
        return self.numbers[0], self.numbers[1]

    def label(self) -> str:
        return f"{self.vendor} {self.numbers[0]}.{self.numbers[1]}"


_TOOL_FROM = re.compile(r"\bfrom (\d+)\.(\d+)\.(\d+)(-MariaDB)?")  # mariadb-dump 11: "from 11.4.2-MariaDB, client"
_TOOL_DISTRIB = re.compile(r"\bDistrib (\d+)\.(\d+)\.(\d+)(-MariaDB)?")  # MariaDB 10, MySQL 5.x
_TOOL_VER = re.compile(r"\bVer (\d+)\.(\d+)\.(\d+)")  # MySQL 8: "mysqldump  Ver 8.0.36 for Linux"
_SERVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)")


def parse_tool_version(output: str) -> Version | None:
    """The release a dump tool's `--version` line names, or None when it is not one we know."""
    for pattern in (_TOOL_FROM, _TOOL_DISTRIB, _TOOL_VER):
        match = pattern.search(output)
        if match:
            vendor = MARIADB if match.re is not _TOOL_VER and match[4] else MYSQL
            return Version(vendor, (int(match[1]), int(match[2]), int(match[3])), output.strip())
    return None


def parse_server_version(text: str) -> Version:
    """`SELECT VERSION()`: "10.11.19-MariaDB-0+deb12u1", "8.0.36", "8.0.35-27" (Percona)."""
    match = _SERVER.match(text)
    numbers = (int(match[1]), int(match[2]), int(match[3])) if match else (0, 0, 0)
    return Version(MARIADB if "mariadb" in text.lower() else MYSQL, numbers, text)


def compatibility_problem(tool_name: str, tool: Version, server: Version) -> str | None:
    """Why `tool` cannot dump `server` correctly, or None.

    The vendors must match (MySQL's mysqldump trips over MariaDB, and a MariaDB dump opens with a
    line MySQL's client refuses), and the tool's series must be at least the server's.
    """
    if tool.vendor != server.vendor:
        package = "mariadb-client" if server.vendor == MARIADB else "mysql-client"
        return (
            f"{tool_name} comes from {tool.label()} but the server is {server.label()}: it cannot dump "
            f"it correctly; install {package} {server.family[0]}.{server.family[1]} or newer"
        )
    if tool.family < server.family:
        return (
            f"{tool_name} is {tool.label()}, older than the {server.label()} server: it cannot dump "
            f"what the newer series added; install a {server.label()} (or newer) client"
        )
    return None


def supports_system_users(tool: Version) -> bool:
    """Whether `mariadb-dump --system=users` exists (MariaDB 10.2.37, 10.3.28, 10.4.18, 10.5.9, 10.6+)."""
    if tool.vendor != MARIADB or tool.family < (10, 2):
        return False
    since = _SYSTEM_USERS_SINCE.get(tool.family)
    return since is None or tool.numbers[2] >= since


# --------------------------------------------------------------------------------------------------
# Option files and quoting (pure, plus one small context manager)


def quote_identifier(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def option_file_value(value: str) -> str:
    """A double-quoted option-file value: `#`, quotes, backslashes and edge spaces are kept literally."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def option_file_text(user: str | None, password: Secret | None) -> str:
    lines = ["[client]"]
    if user is not None:
        lines.append(f"user={option_file_value(user)}")
    if password is not None:
        lines.append(f"password={option_file_value(password.reveal())}")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def option_file(user: str | None, password: Secret | None) -> Iterator[tuple[str, tuple[int, ...]]]:
    """The client's credentials as a 0600 file: a memfd the child opens as /dev/fd/N (gone on close
    or crash), or where there is no memfd a file in a private 0700 temp dir removed afterwards."""
    text = option_file_text(user, password).encode()
    if not hasattr(os, "memfd_create"):
        with tempfile.TemporaryDirectory(prefix="backup-agent-my-") as directory:
            path = Path(directory) / "client.cnf"
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(text)
            yield str(path), ()
        return
    descriptor = os.memfd_create("backup-agent-my-cnf")
    try:
        os.fchmod(descriptor, 0o600)  # the client ignores a world-writable option file
        os.write(descriptor, text)
        yield f"/dev/fd/{descriptor}", (descriptor,)
    finally:
        os.close(descriptor)


class _AlterDatabaseRewriter:
    """Drops the source database's name from the tool's `ALTER DATABASE `name` CHARACTER SET` lines.

    mysqldump switches the database collation around each routine whose collation differs; named,
    that statement fails on another server and alters the original database on this one.
    Works on the stream in place: only the pattern's length minus one byte is ever held back.
    """

    def __init__(self, database: str, sink: Sink) -> None:
        self._old = b"\nALTER DATABASE " + quote_identifier(database).encode() + b" CHARACTER SET "
        self._new = b"\nALTER DATABASE CHARACTER SET "
        self._keep = len(self._old) - 1
        self._carry = b""
        self._sink = sink
        self.rewritten = 0

    def feed(self, data: bytes) -> None:
        buffer = self._carry + data if self._carry else data
        found = buffer.count(self._old)
        if found:
            buffer = buffer.replace(self._old, self._new)
            self.rewritten += found
        if len(buffer) <= self._keep:
            self._carry = buffer
            return
        self._carry = buffer[-self._keep :]
        self._sink(buffer[: -self._keep])

    def flush(self) -> None:
        if self._carry:
            self._sink(self._carry)
            self._carry = b""


def keep_own_password(lines: Iterable[bytes], user: str) -> Iterator[bytes]:
    """Grants lines without the password clause of the agent's own account.

    Restoring a grants dump on another server would otherwise reset the agent's account to the old
    server's password and lock it out (its password file holds the new server's password).
    """
    own = re.compile(
        rb"^(GRANT .* TO " + re.escape(quote_identifier(user).encode()) + rb"@`[^`]*`) IDENTIFIED BY PASSWORD '[^']*'"
    )
    for line in lines:
        yield own.sub(rb"\1", line) if line.startswith(b"GRANT ") else line


_BUILTIN_ON_RESTORE = {*_INTERNAL_ACCOUNTS, ("root", "localhost")}


def skip_builtin_accounts(lines: Iterable[bytes]) -> Iterator[bytes]:
    """Grants lines without those for accounts every server already has (root@localhost, mariadb.sys).

    Re-granting them needs privileges such as PROXY that the agent's account rarely holds, and a
    new server has them already.
    """
    names = []
    for user, host in _BUILTIN_ON_RESTORE:
        names += [f"`{user}`@`{host}`".encode(), f"'{user}'@'{host}'".encode()]
    for line in lines:
        if not any(name in line for name in names):
            yield line


def strip_definers(lines: Iterable[bytes]) -> Iterator[bytes]:
    """Dump lines without DEFINER clauses (data lines untouched): objects then belong to the restorer."""
    for line in lines:
        yield line if line.startswith(b"INSERT INTO ") else _DEFINER.sub(b"", line)


_GRANT_LINE = re.compile(r"^GRANT (?P<privileges>.+?) ON (?P<scope>\S+) TO ")
_ROLE_GRANT = re.compile(r"^GRANT (?P<role>`(?:[^`]|``)*`(?:@`(?:[^`]|``)*`)?) TO ")


def held_privileges(grant_lines: Iterable[str]) -> list[tuple[frozenset[str], str]]:
    """(privileges, scope) of each `GRANT ... ON scope TO` line of SHOW GRANTS (role grants skipped)."""
    held = []
    for line in grant_lines:
        match = _GRANT_LINE.match(line)
        if match:
            privileges = frozenset(part.strip().upper() for part in match["privileges"].split(","))
            held.append((privileges, match["scope"]))
    return held


def _scope_covers(scope: str, database: str) -> bool:
    """Whether a grant scope (`*.*`, or `db`.* where `_` and `%` are LIKE wildcards) covers the database."""
    if scope == "*.*":
        return True
    match = re.fullmatch(r"`((?:[^`]|``)*)`\.\*", scope)
    if match is None:
        return False
    pattern = ""
    for token in re.findall(r"\\.|.", match[1].replace("``", "`"), flags=re.DOTALL):
        pattern += re.escape(token[1]) if token.startswith("\\") else {"%": ".*", "_": "."}.get(token, re.escape(token))
    return re.fullmatch(pattern, database) is not None


def privilege_gaps(held: list[tuple[frozenset[str], str]], database: str) -> list[str]:
    """What the account lacks to see every trigger and routine of `database`.

    The dump tools leave out, without an error, the triggers and routines the account cannot see.
    """

    def granted(names: set[str], in_scope: Callable[[str], bool]) -> bool:
        return any((names | {"ALL PRIVILEGES", "ALL"}) & privileges and in_scope(scope) for privileges, scope in held)

    gaps = []
    if not granted({"TRIGGER"}, lambda scope: _scope_covers(scope, database)):
        gaps.append("the TRIGGER privilege on it (triggers)")
    if not (
        granted({"SELECT"}, lambda scope: scope in ("*.*", "`mysql`.*", "`mysql`.`proc`"))
        or granted({"SHOW_ROUTINE"}, lambda scope: scope == "*.*")
        or granted({"SHOW CREATE ROUTINE"}, lambda scope: _scope_covers(scope, database))
    ):
        gaps.append("global SELECT, SELECT on mysql.proc or SHOW_ROUTINE (stored routines)")
    return gaps


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
    name = "mysql"

    def __init__(self, job: JobConfig, context: EngineContext) -> None:
        super().__init__(job, context)
        self._tool: str | None = None
        self._tool_version: Version | None = None
        self._server_version: Version | None = None

    # --- connections ----------------------------------------------------------------------
    def _endpoint(self) -> _Endpoint:
        """Socket, host or (neither given) the usual local socket, else TCP localhost:3306."""
        port = self.job.port or DEFAULT_PORT
        if self.job.socket:
            return _Endpoint(self.job.socket, "localhost", port)
        if self.job.host or self.job.port:
            return _Endpoint(None, self.job.host or "localhost", port)
        for candidate in DEFAULT_SOCKETS:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.stat(candidate).st_mode):
                    return _Endpoint(candidate, "localhost", port)
        return _Endpoint(None, "localhost", port)

    def _tls_mode(self) -> str | None:
        """The job's ssl_mode; a CA alone means VERIFY_CA, as in MySQL's own client."""
        if self.job.ssl_mode:
            return self.job.ssl_mode
        return "VERIFY_CA" if self.job.ssl_ca else None

    def _driver_tls(self) -> dict[str, Any]:
        mode = self._tls_mode()
        if self._endpoint().socket or mode in (None, "PREFERRED"):
            return {}
        if mode == "DISABLED":
            return {"ssl_disabled": True}
        try:
            context = ssl.create_default_context(cafile=self.job.ssl_ca)
        except OSError as error:  # a missing or unreadable CA file is a setting to fix, not a crash
            raise ConfigError(f"jobs.{self.job.name}.ssl_ca: cannot load {self.job.ssl_ca}: {error}") from None
        if mode != "VERIFY_IDENTITY":
            context.check_hostname = False
        if mode == "REQUIRED":
            context.verify_mode = ssl.CERT_NONE
        return {"ssl": context}

    def _tool_tls(self) -> list[str]:
        mode = self._tls_mode()
        if self._endpoint().socket or mode is None:
            return []
        args = [f"--ssl-ca={self.job.ssl_ca}"] if self.job.ssl_ca else []
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
        return [*base, *self._tool_tls()]

    def connect(self, database: str | None = None) -> Any:
        """A PyMySQL autocommit connection as the job's account (password as a keyword, never argv)."""
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
        if endpoint.socket:
            options["unix_socket"] = endpoint.socket
        else:
            options.update(host=endpoint.host, port=endpoint.port)
        try:
            return pymysql.connect(**options)
        except pymysql.MySQLError as error:
            raise ConnectionFailed(
                f"cannot connect to MySQL/MariaDB at {endpoint.label()}: {_message(error)}"
            ) from None

    def _command(self, argv: list[str], fds: tuple[int, ...]) -> process.Command:
        return process.Command(tuple(argv), pass_fds=fds, nice=self.job.nice, ionice=self.job.ionice)

    @contextlib.contextmanager
    def _options(self) -> Iterator[tuple[str, tuple[int, ...]]]:
        with option_file(self.job.user, self.job.password.read()) as (path, fds):
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
        hidden = {*SYSTEM_DATABASES, *(() if self.job.include_system else ("mysql",))}
        with self.connect() as connection, connection.cursor() as cursor:
            cursor.execute("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA")
            names = [str(row[0]) for row in cursor.fetchall()]
        return sorted(name for name in names if name not in hidden and not name.startswith("#mysql50#"))

    def extra_targets(self) -> list[DumpTarget]:
        if not self.job.include_grants:
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

    @classmethod
    def new_check(cls, format_name: str, tool: str | None = None) -> StreamCheck:
        if format_name == SQL_FORMAT:
            return TrailerCheck(TRAILER, "the SQL dump")
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
            gaps = privilege_gaps(held_privileges(self._grant_lines(cursor)), database)
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
            for role in [match["role"] for line in lines if (match := _ROLE_GRANT.match(line))]:
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
        lock_tables = bool(facts.non_transactional) and self.job.lock_for_consistency
        details.details.update(
            character_set=facts.character_set,
            collation=facts.collation,
            consistency="lock-tables" if lock_tables else "single-transaction",
            definers=facts.definers,
            counts_method="separate consistent snapshot started when the dump's first bytes arrived",
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
        rewriter = _AlterDatabaseRewriter(database, sink)
        counter = _RowCounter(self.connect, database, facts.base_tables)

        def consume(data: bytes) -> None:
            if counter.ident is None:
                counter.start()  # the tool has opened its snapshot before it writes anything
            rewriter.feed(data)

        with self._options() as (defaults, fds):
            child = process.start(self._command([argv[0], defaults, *argv[1:]], fds))
            try:
                process.stream_stdout(child, consume, self.context.limits, f"{Path(tool).name} of {database!r}")
            except BaseException:
                counter.finish(cancel=True)
                raise
        rewriter.flush()
        counter.finish(cancel=False)
        details.counts = counter.counts
        details.counts_consistent = False  # a second snapshot, not the dump's own
        details.warnings.extend(counter.warnings)
        if rewriter.rewritten:
            details.details["alter_database_rewritten"] = rewriter.rewritten
        return details

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
            if (str(user), str(host)) not in _INTERNAL_ACCOUNTS
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
            self._load(keep_own_password(skip_builtin_accounts(_lines(chunks)), self.job.user or ""), None)
            return
        details = manifest.details
        collation = (details.get("character_set"), details.get("collation"))
        if self.database_state(database) == EMPTY and all(isinstance(value, str) for value in collation):
            self._adopt_collation(database, (str(collation[0]), str(collation[1])))
        self._load(strip_definers(_lines(chunks)) if drill else chunks, database)

    def restore_into(
        self, source: Path | BinaryIO, new_database: str, *, force: bool = False, drop_definers: bool = False
    ) -> None:
        """Load one database dump (a stored file, or a stream of raw SQL) into `new_database`.

        Creates the database, with the dumped one's character set when the manifest is beside the
        file; refuses one that exists and holds anything unless `force`.
        """
        state = self.database_state(new_database)
        if state == NOT_EMPTY and not force:
            raise UsageError(f"database {new_database!r} already exists and is not empty; choose another name")
        if state == MISSING:
            self.create_database(new_database)
        collation = _manifest_collation(source)
        if collation is not None and state != NOT_EMPTY:
            self._adopt_collation(new_database, collation)
        with _opened(source) as stream:
            chunks: Iterable[bytes] = iter(lambda: stream.read(_RESTORE_CHUNK), b"")
            self._load(strip_definers(_lines(chunks)) if drop_definers else chunks, new_database)

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


class _RowCounter(threading.Thread):
    """Counts each table's rows in its own consistent snapshot while the dump runs (never before it).

    A savepoint around each count releases the table's metadata lock at once, as mysqldump does,
    and a short lock wait means a pending ALTER skips a count instead of queueing behind it.
    """

    def __init__(self, connect: Callable[[str], Any], database: str, tables: list[str]) -> None:
        super().__init__(daemon=True, name="row-counter")
        self._connect = connect
        self._database = database
        self._tables = tables
        self._cancelled = threading.Event()
        self.counts: dict[str, int] = {}
        self.warnings: list[str] = []

    def run(self) -> None:
        try:
            with self._connect(self._database) as connection, connection.cursor() as cursor:
                cursor.execute(f"SET SESSION lock_wait_timeout = {_COUNT_LOCK_WAIT_SECONDS}")
                cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                cursor.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                for table in self._tables:
                    if self._cancelled.is_set():
                        return
                    cursor.execute("SAVEPOINT backup_agent_count")
                    try:
                        cursor.execute(f"SELECT COUNT(*) FROM {quote_identifier(table)}")  # noqa: S608  # quoted identifier
                        self.counts[table] = int(cursor.fetchone()[0])
                    except pymysql.MySQLError as error:
                        if self._cancelled.is_set():
                            return
                        self.warnings.append(f"row count of {table} skipped: {_message(error)}")
                    cursor.execute("ROLLBACK TO SAVEPOINT backup_agent_count")
                cursor.execute("ROLLBACK")
        except (pymysql.MySQLError, AgentError) as error:
            if not self._cancelled.is_set():
                self.warnings.append(f"row counts incomplete: {_message(error)}")

    def finish(self, *, cancel: bool) -> None:
        """Wait for the counts; after a failed dump, do not wait: the thread stops after its current count."""
        if cancel:
            self._cancelled.set()
        elif self.ident is not None:
            self.join()


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


def _manifest_collation(source: Path | BinaryIO) -> tuple[str, str] | None:
    if not isinstance(source, Path):
        return None
    from agent.manifest import ManifestError, manifest_path, read_manifest

    try:
        details = read_manifest(manifest_path(source)).details
    except ManifestError:
        return None
    character_set, collation = details.get("character_set"), details.get("collation")
    if isinstance(character_set, str) and isinstance(collation, str):
        return character_set, collation
    return None


@contextlib.contextmanager
def _opened(source: Path | BinaryIO) -> Iterator[BinaryIO]:
    """The raw SQL of a stored file (decompressed by its extension), or the given stream as is."""
    if not isinstance(source, Path):
        yield source
        return
    with source.open("rb") as handle:
        yield open_decompressed(handle, method_for_path(source.name))


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Whole lines (newline kept) from chunks; the decompressing readers have no readline."""
    carry = b""
    for chunk in chunks:
        lines = (carry + chunk).split(b"\n")
        carry = lines.pop()
        for line in lines:
            yield line + b"\n"
    if carry:
        yield carry
