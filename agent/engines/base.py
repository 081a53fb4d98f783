"""The engine interface every database family implements, and what the base enforces once."""

from __future__ import annotations

import fnmatch
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from agent.errors import UsageError
from agent.process import StreamLimits

if TYPE_CHECKING:
    from agent.config import JobConfig
    from agent.manifest import Manifest

MISSING = "missing"
EMPTY = "empty"
NOT_EMPTY = "not-empty"

Sink = Callable[[bytes], None]


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


@dataclass(slots=True)
class DumpDetails:
    """What an engine learned while dumping, recorded in the manifest."""

    counts: dict[str, int] = field(default_factory=dict)
    counts_consistent: bool = False
    point_in_time: bool = False
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


class StreamCheck(Protocol):
    """A structural check of the raw dump bytes, fed as they stream by (no second read of the file)."""

    def feed(self, data: bytes) -> None: ...

    def finish(self) -> None:
        """Raise VerificationError unless the whole stream was well formed."""

    def abort(self) -> None: ...


@dataclass(frozen=True, slots=True)
class EngineContext:
    storage: Path
    scratch: Path  # private temp folder under the storage path
    limits: StreamLimits


class Engine(ABC):
    """One database family. Engines build commands and read servers; the runner does the rest."""

    name: ClassVar[str]

    def __init__(self, job: JobConfig, context: EngineContext) -> None:
        self.job = job
        self.context = context

    @abstractmethod
    def probe(self) -> ServerInfo:
        """Connect, read server and tool versions, and refuse a tool too old for the server."""

    @abstractmethod
    def discover(self) -> list[str]:
        """Every database on the server the job could dump (before include/exclude)."""

    def extra_targets(self) -> list[DumpTarget]:
        """Server-wide files (globals, grants) dumped once per run."""
        return []

    @abstractmethod
    def database_target(self, database: str) -> DumpTarget: ...

    @abstractmethod
    def size_estimate(self, database: str) -> int | None:
        """Bytes the database occupies on the server, from catalog figures that take no locks."""

    @abstractmethod
    def dump(self, target: DumpTarget, sink: Sink) -> DumpDetails:
        """Stream the raw dump of `target` into `sink`; raise DumpError on any failure."""

    @classmethod
    @abstractmethod
    def new_check(cls, format_name: str, tool: str | None = None) -> StreamCheck:
        """The structural check for a stored format (used by the gate and by `verify`)."""

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

    def targets(self, only_database: str | None = None) -> list[DumpTarget]:
        """The files this run makes: server-wide ones first, then each selected database."""
        if only_database is not None:
            return [self.database_target(only_database)]
        wanted = self.job.databases
        names = select_databases(self.discover(), self.job.exclude) if wanted is None else list(wanted)
        return [*self.extra_targets(), *(self.database_target(name) for name in names)]


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
