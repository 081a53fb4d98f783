"""Redis: one RDB snapshot per server per run, straight from the server over the replication protocol.

The agent asks the server for a snapshot the way a replica (or `redis-cli --rdb`) does, streams
it through the writer, and checks it as it passes (rdb.py): every opcode's framing, the CRC-64,
and the keys per logical database, counted in the snapshot itself. INFO's keyspace, taken just
before, is recorded beside them. The password goes over the agent's own connection only: no
child process ever sees it. Drills load the snapshot into a throwaway redis-server
(scratch_server.py); `restore --into` puts it where the stopped server loads it (placement.py).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from agent import __version__, process, trust
from agent.engines.base import (
    EMPTY,
    NOT_EMPTY,
    DumpDetails,
    DumpTarget,
    Engine,
    EngineContext,
    PrivilegeFinding,
    ServerInfo,
    Sink,
    StreamCheck,
    options_of,
)
from agent.engines.redis.client import (
    Endpoint,
    RedisConnection,
    ReplyError,
    parse_info,
    parse_keyspace,
    read_config,
)
from agent.engines.redis.options import EVERY_DATABASE, RedisOptions
from agent.engines.redis.rdb import NEWEST_VERSION, RDB_FORMAT, RdbCheck
from agent.errors import ToolError, UntrustedServer, UsageError, VerificationError
from agent.log import get_logger

if TYPE_CHECKING:
    from agent.config import JobConfig
    from agent.engines.redis.scratch_server import ScratchServer
    from agent.manifest import Manifest

TOOL = "replication protocol (SYNC)"
SERVER_BINARY = "redis-server"
_VERSION = re.compile(r"v=(\d+)\.(\d+)\.(\d+)")
# the RDB version each Redis release writes (src/rdb.h RDB_VERSION): what a drill's redis-server must read
_RDB_VERSION_OF_RELEASE = ((7, 4, 12), (7, 2, 11), (7, 0, 10), (5, 0, 9), (4, 0, 8), (3, 2, 7), (2, 6, 6))
# the commands a snapshot needs, as doctor asks ACL DRYRUN about them
_DUMP_COMMANDS = (("PING",), ("INFO",), ("REPLCONF", "capa", "eof"), ("SYNC",))


def rdb_version_of(release: tuple[int, int]) -> int | None:
    """The RDB version a Redis release writes and reads (None: older than 2.6)."""
    for major, minor, version in _RDB_VERSION_OF_RELEASE:
        if release >= (major, minor):
            return version
    return None


def parse_release(text: str) -> tuple[int, int, int] | None:
    """`7.0.15` or `Redis server v=7.0.15 sha=...` -> (7, 0, 15)."""
    match = _VERSION.search(text) or re.match(r"(\d+)\.(\d+)\.(\d+)", text)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


class RedisEngine(Engine):
    """The whole server is one target (`all`): a snapshot cannot leave a logical database out."""

    server_users = ("redis",)  # Debian, Ubuntu and RHEL packages run redis-server as redis

    def __init__(self, job: JobConfig, context: EngineContext) -> None:
        super().__init__(job, context)
        self.options = options_of(job, RedisOptions)
        self._scratch: dict[str, ScratchServer] = {}  # drills: scratch name -> its throwaway server

    # --- connections -----------------------------------------------------------------------------
    def endpoint(self) -> Endpoint:
        options = self.options
        return Endpoint(
            host=None if self.job.socket else (self.job.host or "127.0.0.1"),
            port=self.job.port or 6379,
            socket=self.job.socket,
            tls=options.tls,
            ssl_ca=options.ssl_ca,
            ssl_cert=options.ssl_cert,
            ssl_key=options.ssl_key,
        )

    def endpoints(self) -> list[trust.Endpoint]:
        users = self.trusted_server_users()
        if self.job.socket:
            return [trust.Endpoint(socket=self.job.socket, server_users=users)]
        return [trust.Endpoint(host=self.job.host or "127.0.0.1", port=self.job.port or 6379, server_users=users)]

    def connect(self) -> RedisConnection:
        """Only to the real server: its socket or loopback port held by its user (trust.py), and since
        AUTH sends the password as it is, to another machine only over TLS that verifies the server."""
        self.check_server()
        password = self.job.password.read()
        endpoint = self.endpoint()
        if password is not None and not endpoint.tls and not self._on_this_machine():
            raise UntrustedServer(
                f"refusing to send the Redis password to {endpoint.label()}: AUTH sends it in clear text, so to "
                "another machine only with tls = true (which verifies the server), or connect on this machine"
            )
        timeout = max(1.0, self.job.connect_timeout.total_seconds())
        return RedisConnection.open(endpoint, self.job.user, password, timeout=timeout)

    def _on_this_machine(self) -> bool:
        if self.job.socket:
            return True
        return bool(trust.loopback_addresses(self.job.host or "127.0.0.1", self.job.port or 6379))

    def server_info(self) -> dict[str, str]:
        with self.connect() as connection:
            return parse_info(connection.text("INFO", "everything"))

    # --- the engine interface --------------------------------------------------------------------
    def probe(self) -> ServerInfo:
        info = self.server_info()
        return ServerInfo(self.endpoint().label(), f"Redis {info.get('redis_version', '?')}", TOOL, _tool_version())

    def discover(self) -> list[str]:
        return [EVERY_DATABASE]

    def database_target(self, database: str) -> DumpTarget:
        if database != EVERY_DATABASE:
            raise UsageError(f"a Redis job has one target, {EVERY_DATABASE!r} (the snapshot holds every database)")
        return DumpTarget(EVERY_DATABASE, kind="database", extension="rdb", format=RDB_FORMAT)

    def size_estimate(self, database: str) -> int | None:
        """The memory the dataset takes: an RDB is smaller (compact encodings, LZF), so this errs high."""
        info = self.server_info()
        for field in ("used_memory_dataset", "used_memory"):
            if info.get(field, "").isdigit():
                return int(info[field])
        return None

    @classmethod
    def new_check(cls, format_name: str, tool: str | None = None) -> StreamCheck:
        if format_name != RDB_FORMAT:
            raise VerificationError(f"unknown Redis format {format_name!r}")
        return RdbCheck()

    def dump(self, target: DumpTarget, sink: Sink) -> DumpDetails:
        self.database_target(target.database)
        with self.connect() as connection:
            info = parse_info(connection.text("INFO", "everything"))
            keyspace = parse_keyspace(info)
            size = connection.stream_snapshot(sink, self.context.limits)
        details = DumpDetails()
        details.details = {
            "redis_version": info.get("redis_version", ""),
            "rdb_bytes": size,
            "used_memory": _number(info.get("used_memory")),
            "info_keyspace": {name: {"keys": keys, "expires": expires} for name, (keys, expires) in keyspace.items()},
        }
        details.counts = {name: keys for name, (keys, _) in keyspace.items()}  # until the check has counted
        return details

    def checked(self, check: StreamCheck, details: DumpDetails) -> DumpDetails:
        """Key counts from the snapshot itself: exact at the instant the server forked."""
        if not isinstance(check, RdbCheck):
            return details
        summary = check.summary
        details.counts = summary.key_counts()
        details.counts_consistent = True
        details.point_in_time = True
        details.details.update(
            rdb_version=summary.version,
            expires=summary.expire_counts(),
            checksum=summary.checksum,
            functions=summary.functions,
            databases_in_snapshot=max(summary.databases, default=0) + 1,
        )
        if summary.checksum == "disabled":
            details.warnings.append(
                "the server writes snapshots without a checksum (rdbchecksum no): only their framing was checked"
            )
        return details

    # --- drills: a throwaway redis-server in the scratch folder ----------------------------------
    def database_state(self, database: str) -> str:
        if database != EVERY_DATABASE:
            raise UsageError(f"restore a Redis snapshot with --into {EVERY_DATABASE} (it holds every database)")
        with self.connect() as connection:
            keyspace = parse_keyspace(parse_info(connection.text("INFO", "keyspace")))
        return NOT_EMPTY if any(keys for keys, _ in keyspace.values()) else EMPTY

    def create_database(self, database: str) -> None:
        """A drill's scratch server (not started yet), after removing what crashed drills left behind."""
        from agent.engines.redis.scratch_server import ScratchServer, remove_leftovers

        folder = self.drills_folder()
        for leftover in remove_leftovers(folder, older_than=self.job.timeout.total_seconds()):
            get_logger(job=self.job.name).warning("drill.leftover_dropped", database=leftover.name)
        self._scratch[database] = ScratchServer(
            folder / database, self.drill_binary(), nice=self.job.nice, ionice=self.job.ionice
        )

    def drills_folder(self) -> Path:
        """`<storage>/.agent/tmp/_drills/<job>`: beside the job's scratch (same disk and budget), not in
        it, since a backup starting meanwhile sweeps that; `_drills` can never be a job's name."""
        return self.context.scratch.parent / "_drills" / self.context.scratch.name

    def restore(
        self,
        chunks: Iterable[bytes],
        manifest: Manifest,
        database: str,
        *,
        tables: Sequence[str] = (),
        drill: bool = False,
    ) -> None:
        if tables:
            raise UsageError("a Redis snapshot restores whole; --table does not apply")
        if drill:
            scratch = self._scratch[database]
            scratch.load(chunks, databases=_databases_needed(manifest), timeout=self.job.timeout.total_seconds())
            return
        from agent.engines.redis.placement import place_snapshot

        with self.connect() as connection:
            place_snapshot(connection, chunks, manifest)

    def restore_steps(self, database: str, tables: Sequence[str] = ()) -> list[str]:
        from agent.engines.redis.placement import server_files

        with self.connect() as connection:
            files = server_files(connection)
        return [
            f"write the snapshot beside {files.path}, owned by the server's user (uid {files.uid})",
            f"keep the current {files.filename} as {files.filename}.before-restore-<time>",
            f"put the snapshot at {files.path}",
            f"stop the server (pid {files.pid}) with SHUTDOWN NOSAVE; its next start loads the restored keys",
        ]

    def count_rows(self, database: str) -> dict[str, int]:
        """Keys per database of the drill's server (a replica: nothing expires there, so counts are exact)."""
        return self._scratch[database].key_counts()

    def drop_database(self, database: str) -> None:
        scratch = self._scratch.pop(database, None)
        if scratch is not None:
            scratch.remove()

    def drill_binary(self) -> str:
        """redis-server from the job's `tool` (a path) or PATH: drills run it; the dump needs no tool."""
        binary = self.job.tool or SERVER_BINARY
        if shutil.which(binary) is None:
            raise ToolError(
                f"{binary} not found; drills need it: install redis-server or set jobs.{self.job.name}.tool"
            )
        return binary

    # --- doctor ----------------------------------------------------------------------------------
    def check_privileges(self) -> list[PrivilegeFinding]:
        with self.connect() as connection:
            info = parse_info(connection.text("INFO", "everything"))
            findings = _command_findings(connection, self.job.user or "default")
            findings += _persistence_findings(connection, info)
        findings.append(self._versions_finding(info))
        keyspace = parse_keyspace(info)
        total = sum(keys for keys, _ in keyspace.values())
        findings.append(PrivilegeFinding(True, f"{total} keys in {len(keyspace)} logical database(s) to snapshot"))
        return findings

    def _versions_finding(self, info: dict[str, str]) -> PrivilegeFinding:
        release = parse_release(info.get("redis_version", ""))
        writes = rdb_version_of(release[:2]) if release else None
        if writes is not None and writes > NEWEST_VERSION:
            return PrivilegeFinding(
                False, f"the server writes RDB version {writes}; this agent reads up to {NEWEST_VERSION}"
            )
        binary = self.job.tool or SERVER_BINARY
        if shutil.which(binary) is None:
            return PrivilegeFinding(False, f"{binary} not found: drills cannot start a server (install redis-server)")
        local = parse_release(process.run([binary, "--version"], timeout=30).stdout)
        reads = rdb_version_of(local[:2]) if local else None
        local_text = ".".join(map(str, local)) if local else "unknown"
        if writes is not None and reads is not None and reads < writes:
            return PrivilegeFinding(
                False,
                f"{binary} {local_text} reads RDB up to version {reads} but the server writes {writes}: "
                f"drills would fail; install a redis-server at least as new as the server",
            )
        return PrivilegeFinding(True, f"drills use {binary} {local_text}, which reads this server's snapshots")


def _command_findings(connection: RedisConnection, user: str) -> list[PrivilegeFinding]:
    """Ask ACL DRYRUN whether the user may run each command a snapshot needs (it needs +acl|dryrun)."""
    denied: list[str] = []
    for command in _DUMP_COMMANDS:
        try:
            answer = connection.text("ACL", "DRYRUN", user, *command)
        except ReplyError as error:
            if error.code == "NOPERM" or "unknown subcommand" in str(error).lower():
                return [_untestable(connection)]
            raise
        if answer != "OK":
            denied.append(f"{command[0]} ({answer})")
    if denied:
        grant = " ".join(f"+{command[0].lower()}" for command in _DUMP_COMMANDS)
        return [PrivilegeFinding(False, f"{user} may not run {', '.join(denied)}; e.g. ACL SETUSER {user} {grant}")]
    return [
        PrivilegeFinding(True, f"{user} may run {', '.join(c[0] for c in _DUMP_COMMANDS)}: a snapshot can be taken")
    ]


def _untestable(connection: RedisConnection) -> PrivilegeFinding:
    """Without ACL DRYRUN: REPLCONF and INFO are tried; SYNC cannot be without starting a snapshot."""
    try:
        connection.call("REPLCONF", "capa", "eof")
    except ReplyError as error:
        return PrivilegeFinding(False, f"REPLCONF is refused ({error}): a snapshot needs +replconf +sync")
    return PrivilegeFinding(
        True,
        "INFO and REPLCONF allowed; whether SYNC is allowed cannot be checked without starting a snapshot "
        "(grant +acl|dryrun to let doctor ask, or run a backup)",
    )


def _persistence_findings(connection: RedisConnection, info: dict[str, str]) -> list[PrivilegeFinding]:
    """Notes, never failures: a server without RDB saves or with AOF still gives a snapshot."""
    try:
        config = read_config(connection)
    except ReplyError:
        return [PrivilegeFinding(True, "persistence settings not readable (CONFIG GET is not allowed): not needed")]
    notes: list[str] = []
    save = config.get("save", "")
    notes.append(f"RDB saves: {save}" if save else "no RDB saves configured (the agent's snapshot is made for it)")
    notes.append(f"AOF: {config.get('appendonly', '?')}")
    if config.get("rdbchecksum") == "no":
        notes.append("rdbchecksum no: snapshots carry no checksum, only their framing is checked")
    delay = config.get("repl-diskless-sync-delay", "0")
    if config.get("repl-diskless-sync") == "yes" and delay not in ("", "0"):
        notes.append(f"each snapshot starts after repl-diskless-sync-delay ({delay} s)")
    if info.get("rdb_last_bgsave_status") == "err":
        notes.append("the server's last background save failed (rdb_last_bgsave_status:err): check its disk and fork")
    return [PrivilegeFinding(True, "persistence: " + "; ".join(notes))]


def _databases_needed(manifest: Manifest) -> int:
    recorded = manifest.details.get("databases_in_snapshot")
    return recorded if isinstance(recorded, int) and recorded > 0 else 16


def _tool_version() -> str:
    return f"backup-agent {__version__} (reads RDB versions 1 to {NEWEST_VERSION})"


def _number(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None
