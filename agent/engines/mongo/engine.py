"""MongoDB: one mongodump archive per database, from `mongodump --archive` or a built-in dumper.

With mongodump available (on PATH, or `tool` names it) the agent streams `mongodump --archive --db`
into the writer; the password reaches mongodump in a `--config` YAML file that is an anonymous
0600 memfd (`/dev/fd/N`, never on disk, so no snapshot captures it), never in argv. Without it (or
`tool = "builtin"`) the agent writes the same archive format itself from PyMongo raw batches: the bytes are copied from
the cursor without decoding, so memory is bounded by one batch whatever the collection's size, and
on a replica set every collection of a database is read in one snapshot session. Either way the
stream is parsed as it passes, so the manifest records documents per collection as written.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import pymongo
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from agent import __version__, process, trust
from agent.engines.base import (
    MISSING,
    NOT_EMPTY,
    ChangeToken,
    DumpDetails,
    DumpTarget,
    Engine,
    ServerInfo,
    Sink,
    StreamCheck,
    options_of,
    select_databases,
)
from agent.engines.mongo import change_token
from agent.engines.mongo.archive import ArchiveCheck, ArchiveParser
from agent.engines.mongo.builtin_dump import BuiltinDump
from agent.engines.mongo.busy import QueuedOperations
from agent.engines.mongo.options import BUILTIN, MongoOptions
from agent.engines.mongo.server import (
    CLEANUP_SECONDS,
    dumpable_collection,
    first_line,
    read_topology,
)
from agent.errors import (
    ConnectionFailed,
    DumpError,
    PrivilegeError,
    ToolError,
    UntrustedServer,
    UsageError,
    VerificationError,
)
from agent.scope import ResolvedScope

if TYPE_CHECKING:
    from agent.manifest import Manifest
    from agent.secrets import Secret

DEFAULT_PORT = 27017
ARCHIVE_FORMAT = "mongodump-archive"
BUILTIN_TOOL = "backup-agent-builtin"
SYSTEM_DATABASES = ("admin", "config", "local")
_AUTHENTICATION_FAILED = 18
_UNAUTHORIZED = 13
_VERSION = re.compile(r"version:?\s*r?(\d+)\.(\d+)(?:\.(\d+))?")


def tool_version(tool: str) -> tuple[tuple[int, ...], str]:
    """mongodump's version as numbers and as its first line (`mongodump version: 100.10.0`)."""
    result = process.run([tool, "--version"], timeout=30)
    text = result.stdout.strip() or result.stderr.strip()
    match = _VERSION.search(text)
    if result.returncode != 0 or match is None:
        raise ToolError(f"cannot read the version of {tool}: {text.splitlines()[0] if text else 'no output'}")
    numbers = tuple(int(part) for part in match.groups() if part is not None)
    return numbers, text.splitlines()[0]


def yaml_config(password: str) -> str:
    """A mongodump --config file; a JSON string is a valid YAML double-quoted scalar."""
    return f"password: {json.dumps(password)}\n"


@contextlib.contextmanager
def private_config(password: Secret | None) -> Iterator[tuple[str | None, tuple[int, ...]]]:
    """The --config YAML as an anonymous 0600 memfd the child opens as /dev/fd/N.

    Never a file on disk, so no filesystem snapshot, crash or other reader finds the password; it
    is gone when the descriptor closes.
    """
    if password is None:
        yield None, ()
        return
    descriptor = os.memfd_create("backup-agent-mongodump")  # close-on-exec: only the tool inherits it
    try:
        os.fchmod(descriptor, 0o600)
        os.write(descriptor, yaml_config(password.reveal()).encode())
        yield f"/dev/fd/{descriptor}", (descriptor,)
    finally:
        os.close(descriptor)


class _CountingSink:
    """Wraps a sink: parses the stream on its way to count documents per namespace."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self.parser = ArchiveParser()

    def __call__(self, data: bytes) -> None:
        self.parser.feed(data)
        self._sink(data)


class MongoEngine(Engine):
    server_users = ("mongodb", "mongod")  # Debian/Ubuntu packages, MongoDB's own RHEL packages

    @property
    def options(self) -> MongoOptions:
        return options_of(self.job, MongoOptions)

    def endpoints(self) -> list[trust.Endpoint]:
        """The socket or host and port, or each host of a mongodb:// URI (an SRV name is remote)."""
        users = self.trusted_server_users()
        if self.options.uri is not None:
            parts = urlsplit(self.options.uri)
            if parts.scheme != "mongodb":
                return []
            hosts = [_host_and_port(item) for item in unquote(parts.netloc.rpartition("@")[2]).split(",") if item]
        else:
            hosts = [(self.job.socket or self.job.host or "localhost", self.job.port or DEFAULT_PORT)]
        return [
            trust.Endpoint(socket=host, server_users=users)
            if host.startswith("/")
            else trust.Endpoint(host=host, port=port, server_users=users)
            for host, port in hosts
        ]

    # --- connections ---------------------------------------------------------------------------
    def _client_options(self) -> dict[str, Any]:
        job, settings = self.job, self.options
        timeout_ms = max(1000, int(job.connect_timeout.total_seconds() * 1000))
        options: dict[str, Any] = {
            "appname": "backup-agent",
            "connectTimeoutMS": timeout_ms,
            "serverSelectionTimeoutMS": timeout_ms,
            "socketTimeoutMS": max(timeout_ms, int(job.stall_timeout.total_seconds() * 1000)),
        }
        if settings.uri is None:
            options["host"] = job.socket or job.host or "localhost"
            options["port"] = job.port or DEFAULT_PORT
            options["directConnection"] = True  # dump from the node named, not whatever it points to
        if job.user:
            options["username"] = job.user
        if settings.auth_source:
            options["authSource"] = settings.auth_source
        if settings.tls:
            options["tls"] = True
        return options

    def client(self) -> pymongo.MongoClient[dict[str, Any]]:
        """A client for the job's server; credentials are keywords, never part of a URI.

        The socket or port is checked first, and PLAIN is refused without TLS that verifies the
        server (the config refuses it too; PyMongo never picks PLAIN on its own).
        """
        self.check_server()
        if self.options.clear_text_auth and not self.options.verifies_server:
            raise UntrustedServer(
                f"refusing MongoDB at {self._server_label()}: authMechanism=PLAIN would send the password in "
                f"clear text over a connection that does not verify the server"
            )
        options = self._client_options()
        password = self.job.password.read()
        if password is not None:
            options["password"] = password.reveal()
        try:
            if self.options.uri is not None:
                return pymongo.MongoClient(self.options.uri, **options)
            return pymongo.MongoClient(**options)
        except PyMongoError as error:
            raise self._unreachable(error) from None

    @contextlib.contextmanager
    def connected(self) -> Iterator[pymongo.MongoClient[dict[str, Any]]]:
        client = self.client()
        try:
            yield client
        except OperationFailure as error:
            if error.code == _AUTHENTICATION_FAILED:
                raise ConnectionFailed(
                    f"MongoDB at {self._server_label()} refused the credentials of user "
                    f"{self.job.user!r}: authentication failed"
                ) from None
            if error.code == _UNAUTHORIZED:
                raise PrivilegeError(
                    f"MongoDB refused user {self.job.user!r}: {first_line(error).split(', full error')[0]}"
                ) from None
            raise
        except ConnectionFailure as error:
            raise self._unreachable(error) from None
        finally:
            with contextlib.suppress(PyMongoError), pymongo.timeout(CLEANUP_SECONDS):
                client.close()  # ends sessions and kills cursors: bounded when the server is gone

    def _unreachable(self, error: PyMongoError) -> ConnectionFailed:
        return ConnectionFailed(f"cannot connect to MongoDB at {self._server_label()}: {first_line(error)}")

    def _server_label(self) -> str:
        if self.options.uri is not None:
            hosts = urlsplit(self.options.uri).netloc.rpartition("@")[2]
            return hosts or self.options.uri.split("?")[0]
        if self.job.socket:
            return f"{self.job.socket} (socket)"
        return f"{self.job.host or 'localhost'}:{self.job.port or DEFAULT_PORT}"

    # --- tools -----------------------------------------------------------------------------------
    def resolve_tool(self) -> str:
        """BUILTIN, or the mongodump to run: `tool` auto/None takes mongodump from PATH when it is there."""
        configured = self.job.tool
        if configured == BUILTIN:
            return BUILTIN
        if configured in (None, "auto"):
            return shutil.which("mongodump") or BUILTIN
        found = shutil.which(configured)
        if found is None:
            where = "on PATH" if configured == "mongodump" else "or is not executable"
            raise ToolError(
                f"{configured} not found {where}; install the MongoDB Database Tools, or set "
                f'jobs.{self.job.name}.tool = "builtin"'
            )
        return found

    # --- the engine interface --------------------------------------------------------------------
    def busy_probe(self) -> QueuedOperations | None:
        threshold = self.options.busy_threshold
        return QueuedOperations(self.client(), threshold) if threshold > 0 else None

    def change_token(self, target: DumpTarget) -> ChangeToken | None:
        """The newest write in a replica set's oplog (mongo/change_token.py); a standalone proves nothing,
        nor does `local` (its writes are never in the oplog)."""
        if target.database == "local":
            return None
        try:
            with self.connected() as client:
                return change_token.read_token(client)
        except PyMongoError:
            return None

    def probe(self) -> ServerInfo:
        tool = self.resolve_tool()
        with self.connected() as client:
            topology = read_topology(client)
            client.admin.command("listDatabases", nameOnly=True)  # proves the login works
        if tool == BUILTIN:
            return ServerInfo(self._server_label(), topology.version, BUILTIN_TOOL, f"backup-agent {__version__}")
        numbers, text = tool_version(tool)
        if numbers and numbers[0] < 100 and topology.version_tuple >= (4, 4):
            raise ToolError(
                f"{tool} is the legacy {'.'.join(map(str, numbers))} but the server is MongoDB {topology.version}: "
                f'install the MongoDB Database Tools 100.x, or set jobs.{self.job.name}.tool = "builtin"'
            )
        return ServerInfo(self._server_label(), topology.version, tool, text)

    def discover(self) -> list[str]:
        with self.connected() as client:
            names = client.list_database_names()
        if self.options.include_system:
            return sorted(names)
        return sorted(name for name in names if name not in SYSTEM_DATABASES)

    def database_target(self, database: str) -> DumpTarget:
        return DumpTarget(database, kind="database", extension="archive", format=ARCHIVE_FORMAT)

    def targets(self, only_database: str | None = None) -> list[DumpTarget]:
        """One archive per database; with `point_in_time` on a whole-server mongodump job, one server
        archive with `--oplog` (mongodump cannot combine --oplog with --db)."""
        if only_database is None and self._whole_server_oplog():
            return [DumpTarget("", kind="server", extension="archive", format=ARCHIVE_FORMAT)]
        return super().targets(only_database)

    def _whole_server_oplog(self) -> bool:
        if not self.options.point_in_time or self.job.databases is not None or self.resolve_tool() == BUILTIN:
            return False
        with self.connected() as client:
            return read_topology(client).replica_set is not None

    def size_estimate(self, database: str) -> int | None:
        """`dbStats.dataSize`: the uncompressed BSON the archive will carry (storage sizes are compressed)."""
        try:
            with self.connected() as client:
                stats = client[database].command("dbStats")
        except (PyMongoError, ConnectionFailed):
            return None
        size = stats.get("dataSize")
        return int(size) if isinstance(size, int | float) else None

    @classmethod
    def new_check(cls, format_name: str, tool: str | None = None) -> StreamCheck:
        if format_name != ARCHIVE_FORMAT:
            raise VerificationError(f"unknown MongoDB format {format_name!r}")
        return ArchiveCheck()

    def dump(self, target: DumpTarget, sink: Sink) -> DumpDetails:
        tool = self.resolve_tool()
        try:
            if tool == BUILTIN:
                if target.kind != "database":
                    raise DumpError("the built-in dumper writes one database per archive", "unsupported")
                return BuiltinDump(self, target.database, sink).run()
            return self._mongodump(tool, target, sink)
        except ConnectionFailed as error:
            raise DumpError(str(error), "connection_failed") from None

    # --- mongodump -------------------------------------------------------------------------------
    def mongodump_argv(
        self, tool: str, target: DumpTarget, config_path: str | None, excluded: Sequence[str] = ()
    ) -> list[str]:
        """The command as data; the password is only ever in the --config file."""
        job, options = self.job, self.options
        argv = [tool, "--archive"]
        if options.uri is not None:
            argv.append(f"--uri={options.uri}")
        else:
            argv.append(f"--host={job.socket or job.host or 'localhost'}")
            if job.port:
                argv.append(f"--port={job.port}")
        if job.user:
            argv.append(f"--username={job.user}")
        if options.auth_source:
            argv.append(f"--authenticationDatabase={options.auth_source}")
        if options.tls:
            argv.append("--ssl")
        if config_path is not None:
            argv.append(f"--config={config_path}")
        if target.kind == "server":
            argv.append("--oplog")
            argv.extend(f"--nsExclude={name}.*" for name in self._excluded_databases())
        else:
            argv.append(f"--db={target.database}")
        argv.extend(f"--excludeCollection={name}" for name in excluded)
        argv.extend(job.extra_args)
        return argv

    def _mongodump_scope(self, target: DumpTarget) -> ResolvedScope | None:
        """The scope a mongodump run can apply: exact `--excludeCollection` names; no schema-only."""
        scope = self.job.scope.for_database(target.database)
        if scope.is_everything:
            return None
        if target.kind == "server":
            raise DumpError(
                "table scope needs one archive per database; a point_in_time server dump has one", "unsupported"
            )
        if scope.schema_only_tables:
            raise DumpError(
                'schema_only_tables needs the built-in dumper (tool = "builtin"): mongodump cannot keep a '
                "collection's options and indexes without its documents",
                "unsupported",
            )
        return self.resolve_scope(target.database)

    def scope_warnings(self, database: str, resolved: ResolvedScope) -> list[str]:
        """Patterns that match nothing, and views reading a collection the scope leaves out (they
        restore, and read nothing)."""
        warnings = resolved.warnings(database)
        excluded = set(resolved.excluded)
        with self.connected() as client:
            views = [
                (str(info["name"]), str(info.get("options", {}).get("viewOn", "")))
                for info in client[database].list_collections(filter={"type": "view"})
            ]
        warnings += [
            f"database {database!r}: view {view} reads {source}, which the scope excludes: it restores empty"
            for view, source in sorted(views)
            if source in excluded and view not in excluded
        ]
        return warnings

    def table_names(self, database: str) -> tuple[list[str], dict[str, str]]:
        with self.connected() as client:
            names = client[database].list_collection_names()
        return sorted(name for name in names if dumpable_collection(name)), {}

    def _excluded_databases(self) -> list[str]:
        """Databases a whole-server dump must leave out: system ones unless asked, and `exclude`.

        mongodump skips `local` by itself; `admin` may hold users without being listed."""
        with self.connected() as client:
            names = set(client.list_database_names())
        if not self.options.include_system:
            names.update(("admin", "config"))
        wanted = set(select_databases(self.discover(), self.job.exclude))
        return sorted(name for name in names if name not in wanted and name != "local")

    def _mongodump(self, tool: str, target: DumpTarget, sink: Sink) -> DumpDetails:
        details = DumpDetails(counts_consistent=True)
        what = "mongodump of the whole server" if target.kind == "server" else f"mongodump of {target.database!r}"
        counting = _CountingSink(sink)
        details.scope = self._mongodump_scope(target)
        excluded = details.scope.excluded if details.scope is not None else ()
        if details.scope is not None:
            details.warnings += self.scope_warnings(target.database, details.scope)
        with private_config(self.job.password.read()) as (config_path, fds):
            command = process.Command(
                tuple(self.mongodump_argv(tool, target, config_path, excluded)),
                pass_fds=fds,
                nice=self.job.nice,
                ionice=self.job.ionice,
            )
            self.check_server()  # right before the tool: the socket or port may have changed hands
            child = process.start(command)
            process.stream_stdout(child, counting, self.context.limits, what)
        summary = counting.parser.finish()
        per_database = target.kind == "server"
        types = {(entry.database, entry.collection): entry.type for entry in summary.entries}
        for (database, collection), count in summary.counts().items():
            if types[(database, collection)] == "view":
                continue
            if database == "" and collection == "oplog":
                details.details["oplog_entries"] = count
                continue
            details.counts[f"{database}.{collection}" if per_database else collection] = count
        details.point_in_time = target.kind == "server"
        details.details.update(tool="mongodump", server_version=summary.header.server_version if summary.header else "")
        if self.options.point_in_time and target.kind != "server":
            details.warnings.append(
                'point_in_time needs a whole-server job (databases = "*") on a replica set; '
                "this database was dumped without --oplog"
            )
        return details

    # --- restore (the runner's restore/drill interface) ------------------------------------------
    def database_state(self, database: str) -> str:
        """A database without collections does not exist in MongoDB: MISSING (the restore creates it).

        Asked of the database itself, so an account with roles on it alone (no listDatabases) can tell."""
        with self.connected() as client:
            names = client[database].list_collection_names()
        return NOT_EMPTY if names else MISSING

    def create_database(self, database: str) -> None:
        """MongoDB creates a database with its first collection; nothing to do ahead of the restore."""

    def missing_restore_privileges(self, database: str, state: str) -> list[str] | None:
        """The built-in roles a restore into `database` (a drill's scratch included) needs and lacks."""
        from agent.engines.mongo.privileges import missing_restore_roles

        with self.connected() as client:
            status = client.admin.command("connectionStatus")
        info = status.get("authInfo", {})
        if not info.get("authenticatedUsers"):
            return []  # a server without authentication: nothing to lack
        roles = [(str(role.get("role")), str(role.get("db"))) for role in info.get("authenticatedUserRoles", [])]
        missing = missing_restore_roles(roles, database)
        if missing is None:
            return None
        user = self.job.user or "?"
        return [
            f"role {name} on {database!r}: db.getSiblingDB({self.options.auth_source or 'admin'!r}).grantRolesToUser("
            f"{user!r}, [{{role: {name!r}, db: {database!r}}}]) (drills: readWriteAnyDatabase and "
            f"dbAdminAnyDatabase on admin)"
            for name in missing
        ]

    def drop_database(self, database: str) -> None:
        with self.connected() as client:
            client.drop_database(database)

    def restore(
        self,
        chunks: Iterable[bytes],
        manifest: Manifest,
        database: str,
        *,
        tables: Sequence[str] = (),
        drill: bool = False,
    ) -> None:
        from agent.engines.mongo.restore import ChunkStream, restore_archive

        if tables:
            raise UsageError("a MongoDB restore loads whole databases; --table is not supported")
        with self.connected() as client:
            restore_archive(ChunkStream(chunks), client, database, source_database=manifest.database or None)

    def count_rows(self, database: str) -> dict[str, int]:
        with self.connected() as client:
            target = client[database]
            return {
                info["name"]: target[info["name"]].count_documents({})
                for info in target.list_collections()
                if info.get("type", "collection") != "view" and dumpable_collection(info["name"])
            }


def _host_and_port(item: str) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]:port` or a socket path from a URI's host list."""
    if item.startswith("/"):
        return item, DEFAULT_PORT
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = item.partition(":")
    return host, int(port) if port.isdigit() else DEFAULT_PORT
