"""The built-in restore: a mongodump archive (the agent's or mongodump's) into a database of any name.

Used when mongorestore is not installed. The archive is parsed as it is read, so memory holds one
insert batch per open collection. For each collection of the source database: create it with its
options (capped, validator, collation, ...; views too), insert its documents as they stream by in
unordered batches of raw BSON (never decoded), and when its end block arrives and the CRC of all its
documents matches, build its indexes. Success is declared only when every collection the prelude
promised has ended with a matching CRC. As with mongorestore, documents are already inserted when a
CRC mismatch is found: restore into a new database and drop it on failure.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from bson.raw_bson import RawBSONDocument
from bson.son import SON
from pymongo import InsertOne, MongoClient
from pymongo.database import Database
from pymongo.errors import BulkWriteError, PyMongoError

from agent.engines.mongo.archive import (
    BUCKETS_PREFIX,
    ArchiveParser,
    ArchiveSummary,
    ArchiveVisitor,
    NamespaceSummary,
    PreludeEntry,
    parse_metadata,
)
from agent.errors import AgentError

_READ_SIZE = 1 << 20
_BATCH_BYTES = 8 << 20
_BATCH_DOCUMENTS = 10_000


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class MongoRestoreError(AgentError):
    """The restore was refused (nothing changed) or failed part way (the message says which)."""


@dataclass(slots=True)
class RestoreResult:
    database: str
    source_database: str
    documents: dict[str, int] = field(default_factory=dict)  # collection -> documents inserted
    views: list[str] = field(default_factory=list)
    indexes: int = 0  # built, not counting _id
    crc_checked: int = 0  # namespaces whose CRC matched
    warnings: list[str] = field(default_factory=list)


class ChunkStream:
    """A `read(size)` over an iterable of byte chunks (the runner's decompressed stream)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._pending = b""

    def read(self, size: int = -1, /) -> bytes:
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return b""
        if size < 0 or size >= len(self._pending):
            data, self._pending = self._pending, b""
        else:
            data, self._pending = self._pending[:size], self._pending[size:]
        return data


def restore_archive(
    stream: Readable,
    client: MongoClient[Any],
    target_database: str,
    *,
    drop: bool = False,
    source_database: str | None = None,
) -> RestoreResult:
    """Restore the one database in the archive (or `source_database`) into `target_database`.

    Refuses, before changing anything, when a collection of the archive already exists in the
    target, unless `drop` (then those collections are dropped first).
    """
    restorer = _Restorer(client[target_database], drop=drop, source_database=source_database)
    parser = ArchiveParser(restorer)
    while chunk := stream.read(_READ_SIZE):
        parser.feed(chunk)
    summary = parser.finish()
    return restorer.finish(summary)


@dataclass(slots=True)
class _Target:
    entry: PreludeEntry
    name: str
    options: dict[str, Any]
    indexes: list[dict[str, Any]]
    pending: list[RawBSONDocument] = field(default_factory=list)
    pending_bytes: int = 0
    inserted: int = 0


class _Restorer(ArchiveVisitor):
    def __init__(self, database: Database[Any], *, drop: bool, source_database: str | None) -> None:
        self.database = database
        self.drop = drop
        self.source = source_database
        self.entries: list[PreludeEntry] = []
        self.targets: dict[tuple[str, str], _Target] = {}  # data namespace -> target
        self.result = RestoreResult(database=database.name, source_database=source_database or "")

    # -- prelude ----------------------------------------------------------------------------------
    def collection(self, entry: PreludeEntry) -> None:
        self.entries.append(entry)

    def prelude_end(self) -> None:
        source = self._source_database()
        self.result.source_database = source
        chosen: list[_Target] = []
        for entry in self.entries:
            if entry.database == "" and entry.collection == "oplog":
                self.result.warnings.append("the archive's oplog is not replayed (mongorestore --oplogReplay does)")
                continue
            if entry.database != source:
                continue
            if entry.collection.startswith("$admin."):
                self.result.warnings.append(f"{entry.collection[1:]} (users and roles) is not restored")
                continue
            metadata = parse_metadata(entry.metadata)
            indexes = [dict(index) for index in metadata.get("indexes", [])]
            chosen.append(_Target(entry, entry.collection, dict(metadata.get("options", {})), indexes))
        others = sorted({entry.database for entry in self.entries if entry.database not in ("", source)})
        if others:
            self.result.warnings.append(f"other databases in the archive were skipped: {', '.join(others)}")
        self._prepare(chosen)
        for target in chosen:
            for name in target.entry.data_collections():
                self.targets[(source, name)] = target

    def _source_database(self) -> str:
        names = sorted(
            {entry.database for entry in self.entries if entry.database and not entry.collection.startswith("$admin.")}
        )
        if self.source is not None:
            if self.source not in names:
                raise MongoRestoreError(
                    f"the archive holds no database {self.source!r} (it holds: {', '.join(names) or 'none'})"
                )
            return self.source
        if len(names) != 1:
            raise MongoRestoreError(
                f"the archive holds {len(names)} databases ({', '.join(names) or 'none'}); say which to restore"
            )
        return names[0]

    def _prepare(self, chosen: list[_Target]) -> None:
        """Refuse or drop existing collections, then create every collection, then the views."""
        try:
            existing = set(self.database.list_collection_names())
            clashes = [target.name for target in chosen if target.name in existing]
            if clashes and not self.drop:
                raise MongoRestoreError(
                    f"database {self.database.name!r} already has {', '.join(sorted(clashes))}; "
                    "nothing was changed (restore into a new database, or drop them first)"
                )
            for name in clashes:
                self.database.drop_collection(name)
            for target in sorted(chosen, key=lambda item: item.entry.type == "view"):
                self.database.command(SON([("create", target.name), *target.options.items()]))
                if target.entry.type == "view":
                    self.result.views.append(target.name)
                else:
                    self.result.documents[target.name] = 0
        except PyMongoError as error:
            raise MongoRestoreError(f"creating the collections in {self.database.name!r} failed: {error}") from None

    # -- body ---------------------------------------------------------------------------------
    def documents(self, database: str, collection: str, data: memoryview, count: int) -> None:
        target = self.targets.get((database, collection))
        if target is None:
            return  # oplog, users, other databases: still parsed and CRC-checked, not restored
        position = 0
        size = len(data)
        while position < size:
            length = int.from_bytes(data[position : position + 4], "little")
            target.pending.append(RawBSONDocument(bytes(data[position : position + length])))
            target.pending_bytes += length
            position += length
            if target.pending_bytes >= _BATCH_BYTES or len(target.pending) >= _BATCH_DOCUMENTS:
                self._flush(target, collection)

    def namespace_end(self, summary: NamespaceSummary) -> None:
        target = self.targets.get((summary.database, summary.collection))
        self.result.crc_checked += 1
        if target is None:
            return
        self._flush(target, summary.collection)
        if target.entry.type == "view":
            return
        self.result.documents[target.name] = target.inserted
        if summary.collection.startswith(BUCKETS_PREFIX) and target.entry.type == "timeseries":
            pass  # bucket documents: one per bucket, not one per measurement
        elif target.inserted != summary.documents:
            raise MongoRestoreError(
                f"{target.name}: {summary.documents} documents in the archive, {target.inserted} inserted"
            )
        self._build_indexes(target)

    def _flush(self, target: _Target, collection: str) -> None:
        if not target.pending:
            return
        documents, target.pending, target.pending_bytes = target.pending, [], 0
        try:
            result = self.database[collection].bulk_write(
                [InsertOne(document) for document in documents], ordered=False, bypass_document_validation=True
            )
        except BulkWriteError as error:
            errors = error.details.get("writeErrors", [])
            first = errors[0].get("errmsg", "") if errors else str(error)
            raise MongoRestoreError(
                f"inserting into {self.database.name}.{collection} failed for {len(errors)} document(s): {first}"
            ) from None
        except PyMongoError as error:
            raise MongoRestoreError(f"inserting into {self.database.name}.{collection} failed: {error}") from None
        target.inserted += result.inserted_count  # as the server counted them

    def _build_indexes(self, target: _Target) -> None:
        specs = [
            {key: value for key, value in index.items() if key != "ns"}
            for index in target.indexes
            if index.get("name") != "_id_" and not index.get("clustered")
        ]
        if not specs:
            return
        try:
            self.database.command(SON([("createIndexes", target.name), ("indexes", specs)]))
        except PyMongoError as error:
            namespace = f"{self.database.name}.{target.name}"
            raise MongoRestoreError(f"building the indexes of {namespace} failed: {error}") from None
        self.result.indexes += len(specs)

    def finish(self, summary: ArchiveSummary) -> RestoreResult:
        del summary  # the parser has already checked every namespace ended with a matching CRC
        return self.result
