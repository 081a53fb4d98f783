"""The engine interface every database family implements, and what the base enforces once."""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar, runtime_checkable
from urllib.parse import urlsplit

from agent import trust
from agent.busy import BusyProbe
from agent.errors import ConnectionFailed, DumpError, UntrustedServer, UsageError
from agent.process import StreamLimits
from agent.scope import ResolvedScope, resolve

if TYPE_CHECKING:
    from agent.config import ConfigTable, JobConfig
    from agent.manifest import Manifest

MISSING = "missing"
EMPTY = "empty"
NOT_EMPTY = "not-empty"

Sink = Callable[[bytes], None]
_VISIBLE_ARGV_REASON = "a password on the command line is visible to every user; use password_file or password_env"


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """A job's settings beyond the common keys; each engine subclasses it, one field per config key."""


_Options = TypeVar("_Options", bound=EngineOptions)


def options_of(job: JobConfig, expected: type[_Options]) -> _Options:
    """The job's options as the engine's own type; a job built without any gets the defaults."""
    if isinstance(job.options, expected):
        return job.options
    if type(job.options) is EngineOptions:
        return expected()
    raise TypeError(f"job {job.name}: {type(job.options).__name__} given where {expected.__name__} is needed")


@dataclass(frozen=True, slots=True)
class ServerWide:
    """A server-wide file (roles, grants) restored on its own: its target kind and where it is applied."""

    kind: str
    database: str


@dataclass(frozen=True, slots=True)
class PrivilegeFinding:
    """One line of `doctor` about what the job's account may read."""

    ok: bool
    message: str
    warning: bool = False  # ok, but worth changing (a server setting that costs the application)


def refused_password_argument(argument: str, *, short_option: bool = False) -> str | None:
    """Why a password option may not be in `extra_args` (never echoing the password), or None."""
    name = argument.split("=", 1)[0] if argument.startswith("--") else argument
    if name.startswith("--pas") and "--password".startswith(name):
        return f'"--password" is not allowed: {_VISIBLE_ARGV_REASON}'
    if short_option and argument.startswith("-p") and not argument.startswith("--"):
        return f'"-p" is not allowed: {_VISIBLE_ARGV_REASON}'
    return None


class EngineFamily(ABC):
    """What config, doctor, restore and the budget know of an engine without importing its driver.

    Each engine package defines one instance as `FAMILY`; the registry finds it by the engine's name.
    Its options are the fields of `options_type`, read by `read_options` with the config's own reader.
    """

    options_type: ClassVar[type[EngineOptions]] = EngineOptions
    connects: ClassVar[bool] = True  # False: the job reads local files (no host, port, user or password)
    scratch_copy: ClassVar[bool] = False  # copies each database under the storage path before streaming it
    url_schemes: ClassVar[tuple[str, ...]] = ()  # what `restore --target-url` accepts
    server_wide: ClassVar[ServerWide | None] = None
    refused_arguments: ClassVar[Mapping[str, str]] = MappingProxyType({})  # extra_args option -> why
    refused_prefixes: ClassVar[tuple[str, ...]] = ()  # short options also refused with a value attached
    short_password_option: ClassVar[bool] = False  # the tool takes a password as -pSECRET
    table_scope: ClassVar[bool] = False  # tables / exclude_tables / schema_only_tables (agent/scope.py)
    reserved_targets: ClassVar[frozenset[str]] = frozenset()  # template and system databases: --force only
    # by compression method: a first dump's stored bytes per byte of `Engine.size_estimate`, measured;
    # a family without measurements gets the budget's pessimistic default
    first_dump_ratios: ClassVar[Mapping[str, SizeRatio]] = MappingProxyType({})

    @abstractmethod
    def engine_class(self) -> type[Engine]:
        """The engine itself, imported only now (with its driver)."""

    @property
    def option_keys(self) -> tuple[str, ...]:
        return tuple(item.name for item in dataclasses.fields(self.options_type))

    def read_options(self, table: ConfigTable) -> EngineOptions:
        """The engine's keys of a [jobs.NAME] table; problems go to the table with key path and line."""
        return self.options_type()

    def check_databases(self, table: ConfigTable, databases: tuple[str, ...] | None) -> None:
        """Engine rules for the `databases` list (None: "*"), recorded as problems of the table."""
        return

    def refused_argument(self, argument: str) -> str | None:
        """Why `argument` may not be passed to the engine's dump tool, or None; never echoes a password."""
        problem = refused_password_argument(argument, short_option=self.short_password_option)
        if problem:
            return problem
        name = argument.split("=", 1)[0] if argument.startswith("--") else argument
        if name in self.refused_arguments:
            return f'"{name}" is not allowed: {self.refused_arguments[name]}'
        for short in self.refused_prefixes:
            if argument.startswith(short) and len(argument) > len(short):
                return f'"{short}…" is not allowed: {self.refused_arguments[short]}'
        return None

    def folder_name(self, database: str) -> str:
        """The name a database's backups are filed under (before encoding)."""
        return database

    def target_name_problem(self, name: str) -> str | None:
        """Why the server could not hold a database called `name` (None: it could); engines add their rules."""
        if not name:
            return "a database name cannot be empty"
        if "\x00" in name:
            return "a database name cannot contain a NUL character"
        return None

    def is_reserved_target(self, name: str) -> bool:
        """A template or system database of the server: restoring into one changes the whole server."""
        return name in self.reserved_targets

    def retarget(self, job: JobConfig, url: str) -> JobConfig:
        """The job pointed at the server `url` names (`restore --target-url`); the password is the job's."""
        parts = urlsplit(url)
        if not parts.hostname:
            raise UsageError("--target-url: no host (expected scheme://user@host:port)")
        return dataclasses.replace(
            job, host=parts.hostname, port=parts.port, socket=None, user=parts.username or job.user
        )


@dataclass(frozen=True, slots=True)
class DumpTarget:
    """One file a run produces: a database, or the server-wide globals/grants."""

    database: str  # the original name ("" for globals/grants)
    kind: str = "database"  # database | globals | grants
    extension: str = "dump"  # before the compression suffix
    format: str = ""


@dataclass(frozen=True, slots=True)
class ServerInfo:
    server: str  # where the data lives, for humans (host:port, socket, file)
    server_version: str
    tool: str
    tool_version: str


@dataclass(frozen=True, slots=True)
class SizeRatio:
    """Stored bytes of a first dump per byte of `Engine.size_estimate`: the lowest and the highest
    measured on real data (bench/first_dump_ratio.py; the figures are in docs/retention.md)."""

    low: float
    high: float


@dataclass(slots=True)
class DumpDetails:
    """What an engine learned while dumping, recorded in the manifest."""

    counts: dict[str, int] = field(default_factory=dict)
    counts_consistent: bool = False
    point_in_time: bool = False
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    scope: ResolvedScope | None = None  # None: the whole database
    empty_tables: tuple[str, ...] = ()  # schema-only tables as `count_rows` keys them: recorded with 0 rows


ChangeToken = dict[str, str]
"""What an engine reads from a server to prove later that a database has not changed: equal tokens,
read before two dumps, mean equal data. Small, flat and made of strings (it goes into the manifest)."""


class StreamCheck(Protocol):
    """A structural check of the raw dump bytes, fed as they stream by (no second read of the file)."""

    def feed(self, data: bytes) -> None: ...

    def finish(self) -> None:
        """Raise VerificationError unless the whole stream was well formed."""

    def abort(self) -> None: ...


@runtime_checkable
class RowCountingCheck(Protocol):
    """A check that also counts each table's rows in the bytes it reads: the dump's own snapshot,
    no second scan on the server. The runner records them in the manifest (counts_consistent)."""

    def row_counts(self) -> dict[str, int] | None:
        """Rows per table, keyed as `Engine.count_rows` keys them; None when some could not be counted."""


@dataclass(frozen=True, slots=True)
class EngineContext:
    storage: Path
    scratch: Path  # private temp folder under the storage path
    limits: StreamLimits


class Engine(ABC):
    """One database family. Engines build commands and read servers; the runner does the rest."""

    # the accounts the engine's server runs as on common systems; `server_user` replaces them
    server_users: ClassVar[tuple[str, ...]] = ()

    def __init__(self, job: JobConfig, context: EngineContext) -> None:
        self.job = job
        self.context = context

    @property
    def name(self) -> str:
        return self.job.engine

    def endpoints(self) -> list[trust.Endpoint]:
        """Where the driver and the tools will connect (sockets, hosts and ports); none for a local file."""
        return []

    def trusted_server_users(self) -> tuple[str, ...]:
        return (self.job.server_user,) if self.job.server_user else self.server_users

    def check_server(self) -> None:
        """Refuse a socket or loopback port someone else holds, before any password is sent (template method).

        Called by every connection the engine opens and right before every tool it starts.
        """
        for endpoint in self.endpoints():
            problem = endpoint.problem()
            if problem is not None and problem.down:
                raise ConnectionFailed(f"cannot connect to the {self.name} server: {problem.message}")
            if problem is not None:
                raise UntrustedServer(f"refusing to connect to the {self.name} server: {problem.message}")

    @abstractmethod
    def probe(self) -> ServerInfo:
        """Connect, read server and tool versions, and refuse a tool too old for the server."""

    @abstractmethod
    def discover(self) -> list[str]:
        """Every database on the server the job could dump (before include/exclude)."""

    def database_exists(self, database: str) -> bool:
        """Whether `database` is one the job could dump (`backup --database`)."""
        return database in self.discover()

    def extra_targets(self) -> list[DumpTarget]:
        """Server-wide files (globals, grants) dumped once per run."""
        return []

    @abstractmethod
    def database_target(self, database: str) -> DumpTarget: ...

    @abstractmethod
    def size_estimate(self, database: str) -> int | None:
        """Bytes the database occupies on the server, from catalog figures that take no locks."""

    def change_token(self, target: DumpTarget) -> ChangeToken | None:
        """The target's change token now, or None when no change can be proved (then it is dumped).

        A token may be given only when (1) it reflects every change committed before this call, and
        (2) any change committed after it will make the next token differ. `skip_unchanged` skips a
        dump when the token read now equals the one read before the last verified dump. The default
        proves nothing.
        """
        return None

    @abstractmethod
    def dump(self, target: DumpTarget, sink: Sink) -> DumpDetails:
        """Stream the raw dump of `target` into `sink`; raise DumpError on any failure."""

    @classmethod
    @abstractmethod
    def new_check(cls, format_name: str, tool: str | None = None) -> StreamCheck:
        """The structural check for a stored format (used by the gate and by `verify`)."""

    def checked(self, check: StreamCheck, details: DumpDetails) -> DumpDetails:
        """The dump's details with what only its finished check knows (Redis: the key counts read from
        the snapshot itself, so the stream is parsed once). A RowCountingCheck's counts (PostgreSQL,
        MySQL) are the dump's own snapshot, so consistent; most other checks add nothing."""
        if not isinstance(check, RowCountingCheck):
            return scope_checked(details)
        counts = check.row_counts()
        if counts is None:
            details.warnings.append("row counts not recorded: some table data is not in a form the check counts")
        else:
            details.counts, details.counts_consistent = counts, True
        return scope_checked(details)

    # --- table scope: engines whose family has table_scope override table_names ---------------
    def table_names(self, database: str) -> tuple[list[str], dict[str, str]]:
        """The database's tables as scope patterns match them, and each partition's parent table."""
        raise UsageError(f"engine {self.name} has no table scope")

    def resolve_scope(self, database: str) -> ResolvedScope | None:
        """The job's scope for `database` against the server's tables now (None: every table)."""
        scope = self.job.scope.for_database(database)
        if scope.is_everything:
            return None
        names, parents = self.table_names(database)
        return resolve(scope, names, matches=self.scope_matches, parents=parents)

    def scope_warnings(self, database: str, resolved: ResolvedScope) -> list[str]:
        """What check-config and the dump say of a resolved scope: patterns that match nothing, and
        (engines that can tell) what a restore of it would trip on."""
        return resolved.warnings(database)

    @staticmethod
    def scope_matches(pattern: str, name: str) -> bool:
        """Whether a scope pattern names a table (engines with qualified names override it)."""
        return fnmatch.fnmatchcase(name, pattern)

    # --- around a run's dumps ----------------------------------------------------------------
    def busy_probe(self) -> BusyProbe | None:
        """A count of the application's work on the server, on a connection of its own, for pacing a
        gentle dump (agent/busy.py); None when the engine cannot tell or its threshold is 0."""
        return None

    def around_dumps(self) -> contextlib.AbstractContextManager[None]:
        """What the engine does before the run's first dump and after its last (MySQL: the buffer pool)."""
        return contextlib.nullcontext()

    # --- restore and drills: engines that can restore override these -------------------------
    def database_state(self, database: str) -> str:
        """MISSING, EMPTY or NOT_EMPTY: restore refuses to write into a database that holds data."""
        raise UsageError(f"engine {self.name} cannot restore into a server; use restore --to-file")

    def create_database(self, database: str) -> None:
        raise UsageError(f"engine {self.name} cannot create databases")

    def drop_database(self, database: str) -> None:
        raise UsageError(f"engine {self.name} cannot drop databases")

    def restore(
        self,
        chunks: Iterable[bytes],
        manifest: Manifest,
        database: str,
        *,
        tables: Sequence[str] = (),
        drill: bool = False,
    ) -> None:
        """Load a decompressed dump into `database` (which exists and is empty, unless forced)."""
        raise UsageError(f"engine {self.name} cannot restore into a server; use restore --to-file")

    def count_rows(self, database: str) -> dict[str, int]:
        """Rows per table, keyed as in the manifest's `counts`, for drills."""
        raise UsageError(f"engine {self.name} cannot count rows")

    def missing_restore_privileges(self, database: str, state: str) -> list[str] | None:
        """What the account lacks to restore into `database` (created first when `state` is MISSING), each
        with the statement that grants it; [] when it has everything, None when the engine cannot tell."""
        return None

    @property
    def restores_as_own_account(self) -> bool:
        """A dedicated restore account (`[jobs.NAME.restore]`) restores as itself: objects become its own."""
        return self.job.restore is not None

    def restore_steps(self, database: str, tables: Sequence[str] = ()) -> list[str]:
        """What `restore` does to load the dump, for `--dry-run` (it reads the server, changes nothing)."""
        return [f"load it{' (tables: ' + ', '.join(tables) + ')' if tables else ''}"]

    # --- doctor ----------------------------------------------------------------------------------
    def check_privileges(self) -> list[PrivilegeFinding]:
        """Whether the job's account can read everything it dumps; engines with privileges override it."""
        names, problems = self.databases_on_server()
        if problems:
            return problems
        return [PrivilegeFinding(True, f"connected; {len(names)} database(s) to dump: {', '.join(names)}")]

    def databases_on_server(self) -> tuple[list[str], list[PrivilegeFinding]]:
        """The selected databases the server has, and a problem for each listed one it has not: doctor
        never passes, nor advises a GRANT on, a database that is not there (a typo in the list)."""
        names = self.selected_databases()
        if self.job.databases is None:
            return names, []
        known = set(self.discover())
        problems = [
            PrivilegeFinding(
                False,
                f"database {name!r} is not on the server (or this account cannot see it): create it, or "
                f"remove it from jobs.{self.job.name}.databases",
            )
            for name in names
            if name not in known
        ]
        return [name for name in names if name in known], problems

    def selected_databases(self) -> list[str]:
        """The job's databases: as listed, or every discovered one not excluded."""
        wanted = self.job.databases
        return select_databases(self.discover(), self.job.exclude) if wanted is None else list(wanted)

    def targets(self, only_database: str | None = None) -> list[DumpTarget]:
        """The files this run makes: server-wide ones first, then each selected database."""
        if only_database is not None:
            if not self.database_exists(only_database):  # a typo must not start a series of its own
                raise DumpError(f"there is no database {only_database!r} on the server", reason="not_found")
            return [self.database_target(only_database)]
        return [*self.extra_targets(), *(self.database_target(name) for name in self.selected_databases())]


def rows_out_of_scope(counts: Mapping[str, int], excluded: Iterable[str], schema_only: Iterable[str]) -> list[str]:
    """Tables whose data a dump holds although its scope excludes them or keeps them empty."""
    left_out, empty = set(excluded), set(schema_only)
    return sorted(name for name, rows in counts.items() if name in left_out or (name in empty and rows))


def scope_checked(details: DumpDetails) -> DumpDetails:
    """The counts with each schema-only table at 0 rows, refusing a dump whose own data holds rows of
    a table its scope leaves out or keeps empty (a scope the tool did not apply is a failed dump)."""
    if details.scope is None:
        return details
    from agent.errors import VerificationError

    wrong = rows_out_of_scope(
        details.counts, details.scope.excluded, (*details.scope.schema_only, *details.empty_tables)
    )
    if wrong:
        raise VerificationError(f"the dump holds rows of tables its scope leaves out: {', '.join(wrong[:5])}")
    for name in details.empty_tables:
        details.counts.setdefault(name, 0)
    return details


def select_databases(available: Sequence[str], exclude: Sequence[str]) -> list[str]:
    """Apply `exclude` fnmatch patterns (case-sensitive) to discovered names."""
    return [name for name in available if not any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude)]


class TrailerCheck:
    """Passes when one of the last lines of the raw stream matches `marker` (tools may add lines after)."""

    def __init__(self, marker: bytes, what: str, tail_bytes: int = 4096) -> None:
        self._marker = marker
        self._what = what
        self._tail = b""
        self._tail_bytes = tail_bytes
        self._total = 0

    def feed(self, data: bytes) -> None:
        self._total += len(data)
        self._tail = (self._tail + data[-self._tail_bytes :])[-self._tail_bytes :]

    def finish(self) -> None:
        from agent.errors import VerificationError

        if self._total == 0:
            raise VerificationError(f"{self._what} is empty")
        if self._marker not in self._tail:
            raise VerificationError(
                f"{self._what} does not end with its completion line "
                f"({self._marker.decode(errors='replace')!r}): it is truncated"
            )

    def abort(self) -> None:
        self._tail = b""
