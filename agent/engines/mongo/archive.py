"""The mongodump archive format (`mongodump --archive`): a writer and a streaming parser, pure of I/O.

Layout (see shared/formats/mongodump-archive.md): magic, a header document, one metadata document
per namespace, a terminator; then blocks, each a namespace header followed by raw BSON documents
(or nothing, for the end-of-namespace block) and a terminator. Each namespace ends with a block
carrying the CRC-64/XZ of all its documents' bytes. Both sides work on bytes handed to them, so the
same code serves the dumper, the stream check, `verify` and the restore, and memory never holds more
than one document plus the chunk being read.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import bson
import fastcrc
from bson import json_util
from bson.codec_options import CodecOptions
from bson.int64 import Int64
from bson.son import SON

from agent.errors import VerificationError

MAGIC = struct.pack("<I", 0x8199E26D)
TERMINATOR = b"\xff\xff\xff\xff"
MAX_BSON_SIZE = 16 * 1024 * 1024
FORMAT_VERSION = "0.1"
BUCKETS_PREFIX = "system.buckets."

_UINT64 = 1 << 64
_INT64_LIMIT = 1 << 63
_TERMINATOR_VALUE = 0xFFFFFFFF
_LENGTH = struct.Struct("<I")
_FLUSH_SIZE = 1 << 20
_DECODE = CodecOptions(document_class=dict)
_HEADER_KEYS = ("concurrent_collections", "version", "server_version", "tool_version")
_ENTRY_KEYS = ("db", "collection", "metadata", "size", "type")
_NAMESPACE_KEYS = ("db", "collection", "EOF", "CRC")


# --------------------------------------------------------------------------------------------------
# CRC-64/XZ (Go's crc64.ECMA table, as mongodump uses), at GB/s from fastcrc


def crc64(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-64/XZ of `data`, continuing from `crc` (the result of the bytes before it; 0 to start)."""
    return int(fastcrc.crc64.xz(data, crc)) if len(data) else crc


def crc_to_int64(crc: int) -> Int64:
    """The unsigned CRC stored bit for bit in a BSON int64, as Go's `int64(crc)` does."""
    return Int64(crc - _UINT64 if crc >= _INT64_LIMIT else crc)


def crc_from_int64(value: int) -> int:
    return value % _UINT64


# --------------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True, slots=True)
class ArchiveHeader:
    server_version: str
    tool_version: str
    concurrent_collections: int = 1
    version: str = FORMAT_VERSION


@dataclass(frozen=True, slots=True)
class PreludeEntry:
    """One namespace the archive promises an end-of-namespace block for."""

    database: str
    collection: str
    metadata: str  # canonical Extended JSON, as in a directory dump's .metadata.json ("" for the oplog)
    type: str = "collection"  # collection | view | timeseries | "" (oplog)
    size: int = 0

    @property
    def namespace(self) -> str:
        return f"{self.database}.{self.collection}"

    def data_collections(self) -> tuple[str, ...]:
        """The body namespaces that may carry this entry's data (time-series before 8.3 use buckets)."""
        if self.type == "timeseries":
            return (self.collection, BUCKETS_PREFIX + self.collection)
        return (self.collection,)


@dataclass(slots=True)
class NamespaceSummary:
    database: str
    collection: str
    documents: int = 0
    bytes: int = 0
    crc: int = 0
    ended: bool = False

    @property
    def namespace(self) -> str:
        return f"{self.database}.{self.collection}"


@dataclass(slots=True)
class ArchiveSummary:
    header: ArchiveHeader | None = None
    entries: list[PreludeEntry] = field(default_factory=list)
    namespaces: dict[tuple[str, str], NamespaceSummary] = field(default_factory=dict)
    bytes: int = 0

    def counts(self) -> dict[tuple[str, str], int]:
        """Documents per prelude entry (time-series bucket data counted under the entry's name)."""
        result: dict[tuple[str, str], int] = {}
        for entry in self.entries:
            total = 0
            for name in entry.data_collections():
                summary = self.namespaces.get((entry.database, name))
                total += summary.documents if summary else 0
            result[(entry.database, entry.collection)] = total
        return result


class ArchiveError(VerificationError):
    """The bytes are not a whole, intact mongodump archive."""


# --------------------------------------------------------------------------------------------------
# Metadata


def collection_metadata(
    name: str,
    *,
    options: Mapping[str, Any] | None,
    indexes: Sequence[Mapping[str, Any]],
    uuid: bytes | None = None,
    collection_type: str = "collection",
) -> str:
    """The metadata JSON mongodump writes: compact canonical Extended JSON, mongodump's key order."""
    document: SON[str, Any] = SON()
    if options:
        document["options"] = options
    document["indexes"] = list(indexes)
    if uuid:
        document["uuid"] = uuid.hex()
    document["collectionName"] = name
    if collection_type:
        document["type"] = collection_type
    return json_util.dumps(
        document, json_options=json_util.CANONICAL_JSON_OPTIONS, separators=(",", ":"), ensure_ascii=False
    )


def parse_metadata(text: str) -> dict[str, Any]:
    """Metadata JSON back to values (canonical or relaxed Extended JSON); {} for an empty string."""
    if not text:
        return {}
    value = json_util.loads(text, json_options=json_util.JSONOptions(document_class=SON))
    if not isinstance(value, dict):
        raise ArchiveError("collection metadata is not a JSON object")
    return value


# --------------------------------------------------------------------------------------------------
# Writing


def _document(pairs: Iterable[tuple[str, Any]]) -> bytes:
    return bson.encode(SON(list(pairs)))


def split_documents(data: bytes | bytearray | memoryview, what: str = "data") -> int:
    """Count the whole BSON documents `data` holds back to back; raise ArchiveError if it is not that."""
    view = memoryview(data)
    size = len(view)
    position = count = 0
    unpack = _LENGTH.unpack_from
    while position < size:
        if size - position < 5:
            raise ArchiveError(f"{what}: {size - position} stray bytes after the last document")
        (length,) = unpack(view, position)
        if length < 5 or length > MAX_BSON_SIZE or position + length > size:
            raise ArchiveError(f"{what}: bad document length {length} at byte {position}")
        if view[position + length - 1] != 0:
            raise ArchiveError(f"{what}: the document at byte {position} does not end with a zero byte")
        position += length
        count += 1
    return count


class ArchiveWriter:
    """Writes one archive into `sink`: `begin`, then `write`/`end` per namespace, then `close`.

    Documents arrive as raw bytes (whole BSON documents back to back, e.g. a cursor's raw batch)
    and are copied without decoding. A new namespace header is written only when the namespace
    changes, as mongodump does, so interleaving collections is allowed.
    """

    def __init__(self, sink: Callable[[bytes], None], flush_size: int = _FLUSH_SIZE) -> None:
        self._sink = sink
        self._flush_size = flush_size
        self._buffer = bytearray()
        self._current: tuple[str, str] | None = None
        self._expected: dict[tuple[str, str], PreludeEntry] = {}
        self.namespaces: dict[tuple[str, str], NamespaceSummary] = {}
        self.bytes_written = 0

    def begin(self, header: ArchiveHeader, entries: Sequence[PreludeEntry]) -> None:
        self._emit(MAGIC)
        self._emit(
            _document(
                [
                    ("concurrent_collections", int(header.concurrent_collections)),
                    ("version", header.version),
                    ("server_version", header.server_version),
                    ("tool_version", header.tool_version),
                ]
            )
        )
        for entry in entries:
            self._emit(
                _document(
                    [
                        ("db", entry.database),
                        ("collection", entry.collection),
                        ("metadata", entry.metadata),
                        ("size", int(entry.size)),
                        ("type", entry.type),
                    ]
                )
            )
            self._expected[(entry.database, entry.collection)] = entry
        self._emit(TERMINATOR)

    def write(self, database: str, collection: str, data: bytes | bytearray | memoryview) -> int:
        """Append whole documents to a namespace; returns how many there were."""
        key = (database, collection)
        summary = self._summary(key)
        count = split_documents(data, f"documents for {database}.{collection}")
        if count == 0:
            return 0
        if self._current != key:
            self._close_segment()
            self._emit(self._namespace_header(database, collection, eof=False, crc=0))
            self._current = key
        summary.crc = crc64(data, summary.crc)
        summary.documents += count
        summary.bytes += len(data)
        if len(data) >= self._flush_size:
            self._flush()
            self._send(bytes(data))
        else:
            self._emit(data)
        return count

    def end(self, database: str, collection: str) -> NamespaceSummary:
        """Close a namespace with its end-of-namespace block and CRC."""
        key = (database, collection)
        summary = self._summary(key)
        self._close_segment()
        self._emit(self._namespace_header(database, collection, eof=True, crc=summary.crc))
        self._emit(TERMINATOR)
        summary.ended = True
        return summary

    def close(self) -> None:
        """Flush everything; refuse to finish an archive that leaves a promised namespace open."""
        self._close_segment()
        self._flush()
        for key, entry in self._expected.items():
            if not any(self.namespaces.get((key[0], name), _OPEN).ended for name in entry.data_collections()):
                raise ArchiveError(f"namespace {entry.namespace} was never ended")

    def _summary(self, key: tuple[str, str]) -> NamespaceSummary:
        summary = self.namespaces.get(key)
        if summary is None:
            summary = self.namespaces[key] = NamespaceSummary(*key)
        if summary.ended:
            raise ArchiveError(f"namespace {key[0]}.{key[1]} was already ended")
        return summary

    def _close_segment(self) -> None:
        if self._current is not None:
            self._emit(TERMINATOR)
            self._current = None

    @staticmethod
    def _namespace_header(database: str, collection: str, *, eof: bool, crc: int) -> bytes:
        return _document([("db", database), ("collection", collection), ("EOF", eof), ("CRC", crc_to_int64(crc))])

    def _emit(self, data: bytes | bytearray | memoryview) -> None:
        self._buffer += data
        if len(self._buffer) >= self._flush_size:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            self._send(bytes(self._buffer))
            self._buffer.clear()

    def _send(self, data: bytes) -> None:
        self.bytes_written += len(data)
        self._sink(data)


_OPEN = NamespaceSummary("", "")


# --------------------------------------------------------------------------------------------------
# Reading


class ArchiveVisitor:
    """Receives what the parser reads; the default ignores everything (a pure structural check)."""

    def header(self, header: ArchiveHeader) -> None:
        """The archive header, first."""

    def collection(self, entry: PreludeEntry) -> None:
        """One prelude entry."""

    def prelude_end(self) -> None:
        """All prelude entries have been seen."""

    def documents(self, database: str, collection: str, data: memoryview, count: int) -> None:
        """`count` whole documents back to back; `data` is valid only during the call."""

    def namespace_end(self, summary: NamespaceSummary) -> None:
        """A namespace's end block was read and its CRC matched."""


_MAGIC_STATE, _HEADER_STATE, _PRELUDE_STATE, _BLOCK_STATE, _SEGMENT_STATE, _EOF_TERM_STATE = range(6)
_STATE_NAMES = {
    _MAGIC_STATE: "the magic number",
    _HEADER_STATE: "the archive header",
    _PRELUDE_STATE: "the prelude",
    _BLOCK_STATE: "a namespace header",
    _SEGMENT_STATE: "a document",
    _EOF_TERM_STATE: "an end-of-namespace block",
}


class ArchiveParser:
    """A push parser: `feed` bytes as they arrive, `finish` at the end; follows mongorestore's rules.

    Checks the magic, the header, the prelude, every document's length and trailing zero, that no
    namespace is reopened after its end block, that each CRC matches the documents read, and at the
    end that the stream stopped right after a terminator and every prelude namespace was ended.
    """

    def __init__(self, visitor: ArchiveVisitor | None = None) -> None:
        self._visitor = visitor or ArchiveVisitor()
        self._buffer = bytearray()
        self._offset = 0  # stream offset of self._buffer[0]
        self._state = _MAGIC_STATE
        self._current: NamespaceSummary | None = None
        self._entries: dict[tuple[str, str], PreludeEntry] = {}
        self._data_owner: dict[tuple[str, str], PreludeEntry] = {}
        self.summary = ArchiveSummary()
        self._failed: ArchiveError | None = None

    # -- public ------------------------------------------------------------------------------
    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._failed is not None:
            raise self._failed
        self.summary.bytes += len(data)
        self._buffer += data
        try:
            consumed = self._parse()
        except ArchiveError as error:
            self._failed = error
            raise
        if consumed:
            del self._buffer[:consumed]
            self._offset += consumed

    def finish(self) -> ArchiveSummary:
        if self._failed is not None:
            raise self._failed
        if self._state != _BLOCK_STATE or self._buffer:
            where = _STATE_NAMES[self._state]
            if self._state == _MAGIC_STATE and not self._buffer and self.summary.bytes == 0:
                raise ArchiveError("the archive is empty")
            namespace = f" of {self._current.namespace}" if self._current else ""
            raise ArchiveError(
                f"the archive is truncated: it ends inside {where}{namespace} "
                f"after {self.summary.bytes} bytes (unexpected EOF)"
            )
        missing = [
            entry.namespace
            for key, entry in self._entries.items()
            if not any(self._ended((key[0], name)) for name in entry.data_collections())
        ]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ArchiveError(f"the archive finished before all collections were seen: no end block for {shown}")
        return self.summary

    # -- parsing -----------------------------------------------------------------------------
    def _ended(self, key: tuple[str, str]) -> bool:
        summary = self.summary.namespaces.get(key)
        return summary is not None and summary.ended

    def _error(self, position: int, message: str) -> ArchiveError:
        return ArchiveError(f"corruption found in archive at byte {self._offset + position}: {message}")

    def _parse(self) -> int:
        buffer = self._buffer
        size = len(buffer)
        position = 0
        while True:
            if self._state == _SEGMENT_STATE:
                position = self._documents(position)
            if size - position < 4:
                return position
            if self._state == _MAGIC_STATE:
                if bytes(buffer[position : position + 4]) != MAGIC:
                    raise self._error(position, "not a mongodump archive (bad magic number)")
                position += 4
                self._state = _HEADER_STATE
                continue
            (length,) = _LENGTH.unpack_from(buffer, position)
            if length == _TERMINATOR_VALUE:
                self._terminator(position)
                position += 4
                continue
            if length < 5 or length > MAX_BSON_SIZE:
                raise self._error(position, f"bad document length {length}")
            if size - position < length:
                return position
            if buffer[position + length - 1] != 0:
                raise self._error(position, "a document does not end with a zero byte")
            self._control_document(position, bytes(buffer[position : position + length]))
            position += length

    def _documents(self, position: int) -> int:
        """Consume every whole document at `position`; stop at a terminator or a partial document."""
        buffer = self._buffer
        size = len(buffer)
        start = position
        count = 0
        unpack = _LENGTH.unpack_from
        while size - position >= 4:
            (length,) = unpack(buffer, position)
            if length == _TERMINATOR_VALUE:
                break
            if length < 5 or length > MAX_BSON_SIZE:
                raise self._error(position, f"bad document length {length}")
            if size - position < length:
                break
            if buffer[position + length - 1] != 0:
                raise self._error(position, "a document does not end with a zero byte")
            position += length
            count += 1
        if count:
            current = self._current
            assert current is not None
            view = memoryview(buffer)[start:position]
            try:
                current.crc = crc64(view, current.crc)
                current.documents += count
                current.bytes += position - start
                self._visitor.documents(current.database, current.collection, view, count)
            finally:
                view.release()
        return position

    def _terminator(self, position: int) -> None:
        state = self._state
        if state == _PRELUDE_STATE:
            self._state = _BLOCK_STATE
            self._visitor.prelude_end()
        elif state in (_SEGMENT_STATE, _EOF_TERM_STATE):
            self._state = _BLOCK_STATE
            self._current = None
        elif state == _BLOCK_STATE:
            raise self._error(position, "two terminators in a row (headerless block)")
        else:
            raise self._error(position, f"a terminator where {_STATE_NAMES[state]} should be")

    def _control_document(self, position: int, raw: bytes) -> None:
        state = self._state
        if state == _EOF_TERM_STATE:
            raise self._error(position, "an end-of-namespace block holds a document")
        try:
            document = bson.decode(raw, _DECODE)
        except Exception as error:
            raise self._error(position, f"unreadable {_STATE_NAMES[state]} ({error})") from None
        if state == _HEADER_STATE:
            self._header(position, document)
        elif state == _PRELUDE_STATE:
            self._entry(position, document)
        else:
            self._namespace_header(position, document)

    def _header(self, position: int, document: dict[str, Any]) -> None:
        unknown = set(document) - set(_HEADER_KEYS)
        version = document.get("version")
        if unknown or not isinstance(version, str):
            raise self._error(position, f"bad archive header {sorted(document)}")
        if version != FORMAT_VERSION:
            raise self._error(position, f"unsupported archive version {version!r}")
        header = ArchiveHeader(
            server_version=str(document.get("server_version", "")),
            tool_version=str(document.get("tool_version", "")),
            concurrent_collections=int(document.get("concurrent_collections", 1)),
            version=version,
        )
        self.summary.header = header
        self._visitor.header(header)
        self._state = _PRELUDE_STATE

    def _entry(self, position: int, document: dict[str, Any]) -> None:
        database, collection = document.get("db"), document.get("collection")
        if set(document) - set(_ENTRY_KEYS) or not isinstance(database, str) or not isinstance(collection, str):
            raise self._error(position, f"bad prelude entry {sorted(document)}")
        entry = PreludeEntry(
            database=database,
            collection=collection,
            metadata=str(document.get("metadata", "")),
            type=str(document.get("type", "")),
            size=int(document.get("size", 0)),
        )
        if (database, collection) in self._entries:
            raise self._error(position, f"namespace {entry.namespace} is listed twice in the prelude")
        self._entries[(database, collection)] = entry
        for name in entry.data_collections():
            self._data_owner[(database, name)] = entry
        self.summary.entries.append(entry)
        self._visitor.collection(entry)

    def _namespace_header(self, position: int, document: dict[str, Any]) -> None:
        database, collection = document.get("db"), document.get("collection")
        eof, stored_crc = document.get("EOF", False), document.get("CRC", 0)
        if (
            set(document) - set(_NAMESPACE_KEYS)
            or not isinstance(database, str)
            or not isinstance(collection, str)
            or not isinstance(eof, bool)
            or not isinstance(stored_crc, int)
        ):
            raise self._error(position, f"bad namespace header {sorted(document)}")
        key = (database, collection)
        namespace = f"{database}.{collection}"
        if key not in self._data_owner:
            raise self._error(position, f"namespace {namespace} is not in the prelude")
        summary = self.summary.namespaces.get(key)
        if summary is None:
            summary = self.summary.namespaces[key] = NamespaceSummary(database, collection)
        elif summary.ended:
            raise self._error(position, f"namespace header for already ended namespace {namespace}")
        if not eof:
            self._current = summary
            self._state = _SEGMENT_STATE
            return
        expected = crc_from_int64(stored_crc)
        if expected != summary.crc:
            raise self._error(
                position,
                f"CRC mismatch for namespace {namespace}: the archive says {expected:#018x}, "
                f"its {summary.documents} documents give {summary.crc:#018x}",
            )
        summary.ended = True
        self._current = summary
        self._state = _EOF_TERM_STATE
        self._visitor.namespace_end(summary)


class ArchiveCheck:
    """The StreamCheck for archives: parses to the end as the bytes stream by."""

    def __init__(self) -> None:
        self.parser = ArchiveParser()

    def feed(self, data: bytes) -> None:
        self.parser.feed(data)

    def finish(self) -> None:
        self.parser.finish()

    def abort(self) -> None:
        self.parser = ArchiveParser()
