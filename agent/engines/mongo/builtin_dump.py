"""The built-in dumper: one database as a mongodump archive from raw cursor batches, never decoded.

Used when mongodump is not installed (or `tool = "builtin"`). Memory is bounded by one batch
whatever the collection's size; on a replica set every collection is read in one snapshot session.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pymongo
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from agent import __version__
from agent.engines.base import DumpDetails, Sink
from agent.engines.mongo.archive import BUCKETS_PREFIX, ArchiveHeader, ArchiveWriter, PreludeEntry, collection_metadata
from agent.engines.mongo.options import BUILTIN
from agent.engines.mongo.server import CLEANUP_SECONDS, Topology, dumpable_collection, first_line, read_topology
from agent.errors import DumpError
from agent.scope import resolve

if TYPE_CHECKING:
    from agent.engines.mongo.engine import MongoEngine

_SNAPSHOT_TOO_OLD = 239
_BATCH_BYTES = 4 << 20  # aim for cursor batches of this size; the server caps each at 16 MiB
_MAX_BATCH_DOCUMENTS = 100_000
_RAW = CodecOptions(document_class=RawBSONDocument)


@dataclass(slots=True)
class _Collection:
    name: str
    type: str
    options: dict[str, Any]
    uuid: bytes | None
    indexes: list[Any] = field(default_factory=list)
    schema_only: bool = False  # table scope: options and indexes, no documents

    @property
    def has_data(self) -> bool:
        return self.type != "view"


def _system_collection_kept(database: str, name: str) -> bool:
    return database == "admin" and name in ("system.users", "system.roles", "system.version")


class BuiltinDump:
    """Writes one database as a mongodump archive from raw cursor batches (no decoding)."""

    def __init__(self, engine: MongoEngine, database: str, sink: Sink) -> None:
        self.engine = engine
        self.database = database
        self.writer = ArchiveWriter(sink)
        self.details = DumpDetails(counts_consistent=True)
        self.limits = engine.context.limits
        self.started = time.monotonic()

    def run(self) -> DumpDetails:
        with self.engine.connected() as client:
            topology = read_topology(client)  # connection and login problems surface here, as such
            try:
                self._dump(client, topology)
            except OperationFailure as error:
                if error.code == _SNAPSHOT_TOO_OLD:
                    raise DumpError(
                        f"the dump of {self.database!r} took longer than the server keeps snapshot history "
                        "(minSnapshotHistoryWindowInSeconds, 300 s by default): raise it on the server",
                        "snapshot_too_old",
                    ) from None
                raise DumpError(f"reading {self.database!r} failed: {first_line(error)}", "server_error") from None
            except ConnectionFailure as error:
                raise DumpError(
                    f"lost the connection to MongoDB while dumping {self.database!r}: {first_line(error)}",
                    "connection_lost",
                ) from None
            except PyMongoError as error:
                raise DumpError(f"reading {self.database!r} failed: {first_line(error)}", "server_error") from None
        return self.details

    def _dump(self, client: pymongo.MongoClient[dict[str, Any]], topology: Topology) -> None:
        database = client[self.database]
        collections = self._collections(database, topology)
        entries = [
            PreludeEntry(
                database=self.database,
                collection=item.name,
                metadata=collection_metadata(
                    item.name, options=item.options, indexes=item.indexes, uuid=item.uuid, collection_type=item.type
                ),
                type=item.type,
            )
            for item in collections
        ]
        header = ArchiveHeader(server_version=topology.version, tool_version=f"backup-agent {__version__} (builtin)")
        self.writer.begin(header, entries)
        self.batch_size = self._batch_size(database)
        use_snapshot = topology.snapshots
        session_context = client.start_session(snapshot=True) if use_snapshot else contextlib.nullcontext()
        with session_context as session:
            for item in collections:
                self._collection(database, item, session)
            snapshot_time = getattr(session, "_snapshot_time", None) if session is not None else None
        self.writer.close()
        self.details.point_in_time = use_snapshot
        self.details.details.update(
            tool=BUILTIN,
            collections=sum(1 for item in collections if item.type != "view"),
            views=sum(1 for item in collections if item.type == "view"),
            indexes=sum(len(item.indexes) for item in collections),
            read_in_one_snapshot=use_snapshot,
        )
        if snapshot_time is not None:
            self.details.details["snapshot_time"] = {"t": snapshot_time.time, "i": snapshot_time.inc}
        if topology.replica_set is not None:
            self.details.details["replica_set"] = topology.replica_set
        if not use_snapshot:
            self.details.warnings.append(
                "the server does not offer snapshot reads (not a replica set, or older than 5.0): "
                "collections were read one after another, not at one point in time"
            )
        if self.engine.options.point_in_time and self.engine.job.databases is None:
            self.details.warnings.append(
                "the built-in dumper reads each database in its own snapshot; point in time across "
                "databases needs mongodump --oplog"
            )

    def _collections(self, database: Any, topology: Topology) -> list[_Collection]:
        listed = [
            info
            for info in database.list_collections()
            if dumpable_collection(info["name"]) or _system_collection_kept(self.database, info["name"])
        ]
        scope = self.engine.job.scope.for_database(self.database)
        resolved = None
        if not scope.is_everything:  # resolved on the same listing the dump follows
            resolved = resolve(scope, [str(info["name"]) for info in listed])
            self.details.scope = resolved
            self.details.warnings += self.engine.scope_warnings(self.database, resolved)
            views = {str(info["name"]) for info in listed if info.get("type") == "view"}
            self.details.empty_tables = tuple(name for name in resolved.schema_only if name not in views)
        found: list[_Collection] = []
        for info in sorted(listed, key=lambda item: item["name"]):
            name = info["name"]
            if resolved is not None and name in resolved.excluded:
                continue
            kind = str(info.get("type", "collection"))
            uuid = info.get("info", {}).get("uuid")
            item = _Collection(
                name=name,
                type=kind,
                options=dict(info.get("options", {})),
                uuid=bytes(uuid) if getattr(uuid, "subtype", None) == 4 else None,
            )
            if kind == "timeseries" and topology.version_tuple >= (8, 3):
                raise DumpError(
                    f"time-series collection {self.database}.{name}: on MongoDB 8.3+ its buckets can only "
                    "be read with rawData, which the built-in dumper does not do; install mongodump",
                    "unsupported",
                )
            if item.has_data:
                item.indexes = list(database[name].list_indexes())
            item.schema_only = resolved is not None and name in resolved.schema_only
            found.append(item)
        return found

    def _collection(self, database: Any, item: _Collection, session: Any) -> None:
        if not item.has_data:
            self.writer.end(self.database, item.name)
            return
        data_name = BUCKETS_PREFIX + item.name if item.type == "timeseries" else item.name
        if item.schema_only:
            self.writer.end(self.database, data_name)  # its prelude entry holds options and indexes
            return
        collection = database.get_collection(data_name, codec_options=_RAW)
        cursor = collection.find_raw_batches({}, session=session, hint=[("$natural", 1)], batch_size=self.batch_size)
        documents = 0
        try:
            for batch in cursor:
                self._check_limits()
                documents += self.writer.write(self.database, data_name, batch)
        finally:
            with contextlib.suppress(PyMongoError), pymongo.timeout(CLEANUP_SECONDS):
                cursor.close()
        self.writer.end(self.database, data_name)
        self.details.counts[item.name] = documents

    @staticmethod
    def _batch_size(database: Any) -> int:
        """Documents per cursor batch for about _BATCH_BYTES each: memory follows the batch, not the data."""
        try:
            average = float(database.command("dbStats").get("avgObjSize") or 0)
        except PyMongoError:
            average = 0
        if average <= 0:
            return 1000
        return max(1, min(_MAX_BATCH_DOCUMENTS, int(_BATCH_BYTES / average)))

    def _check_limits(self) -> None:
        limits = self.limits
        if limits.should_stop():
            raise DumpError(f"the dump of {self.database!r} was stopped: the agent is shutting down", "shutdown")
        now = time.monotonic()
        if limits.timeout is not None and now - self.started > limits.timeout:
            raise DumpError(
                f"the dump of {self.database!r} ran longer than its timeout of {limits.timeout:.0f}s", "timeout"
            )
