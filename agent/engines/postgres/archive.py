"""A streaming structural check of pg_dump's custom format, run in the agent's own thread.

It reads the header and the table of contents, then walks the data blocks as they stream by and
fails unless every TOC entry that has data got exactly one complete block, so a dump cut anywhere
(inside the TOC, inside a block, or exactly between two blocks) is caught. It replaces a
`pg_restore --file=/dev/null` child fed every raw byte through a pipe, whose CPU competed with
pg_dump, the server and zstd on small machines (figures in docs/performance.md).

Layout (src/bin/pg_dump/pg_backup_archiver.c and pg_backup_custom.c):
  header  "PGDMP", version major/minor/revision bytes, int size, offset size, format (1 = custom),
          compression (1.15+: algorithm byte; before: int level), creation time (7 ints),
          database name, server version, pg_dump version (strings)
  TOC     int count, then per entry: dump id, had-dumper, table oid, oid, tag, desc, section,
          defn, drop, copy, namespace, tablespace, tableam (1.14+), relkind (1.16+), owner,
          "with oids", dependency strings ended by a NULL string, data offset (flag + bytes)
  blocks  block type (1 data, 3 large objects) and dump id; data: chunks of int length + bytes
          ended by a zero length; large objects: (oid, chunks)* ended by oid 0
An int is a sign byte and `int size` little-endian bytes; a string is an int length (-1 = NULL)
and that many bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from agent.engines.base import StreamCheck
from agent.errors import VerificationError

MAGIC = b"PGDMP"
FORMAT_CUSTOM = 1
BLOCK_DATA = 1
BLOCK_LARGE_OBJECTS = 3
OFFSET_NOT_SET = 1
OFFSET_SET = 2
OFFSET_NO_DATA = 3
OLDEST_VERSION = (1, 12)  # pg_dump 9.0; older archives lack fields this reader assumes
NEWEST_VERSION = (1, 16)  # pg_dump 17 and 18; a newer format may add fields, so it is refused

# block-phase states
_BLOCK_HEADER = "block header"
_CHUNK_LENGTH = "chunk length"
_CHUNK_BYTES = "chunk bytes"
_LARGE_OBJECT_OID = "large object id"
_FAST_SCAN = "table data"


class _IncompleteError(Exception):
    """The buffer ends before the item being read; wait for more bytes."""


class UnsupportedArchiveError(VerificationError):
    """The archive's format version is one this reader does not know (the caller may fall back)."""


@dataclass(slots=True)
class TocEntry:
    dump_id: int
    description: str
    tag: str
    namespace: str
    has_data: bool

    def label(self) -> str:
        name = f"{self.namespace}.{self.tag}" if self.namespace else self.tag
        return f"{self.description} {name} (dump id {self.dump_id})"


@dataclass(frozen=True, slots=True)
class ArchiveHeader:
    version: tuple[int, int, int]
    int_size: int
    offset_size: int
    compressed: bool
    database: str
    server_version: str
    dump_version: str


class _Reader:
    """Reads header and TOC items from a buffer; raises _IncompleteError at its end."""

    def __init__(self, buffer: bytearray, position: int, int_size: int = 4) -> None:
        self.buffer = buffer
        self.position = position
        self.int_size = int_size

    def take(self, size: int) -> bytes:
        end = self.position + size
        if end > len(self.buffer):
            raise _IncompleteError
        data = bytes(self.buffer[self.position : end])
        self.position = end
        return data

    def byte(self) -> int:
        if self.position >= len(self.buffer):
            raise _IncompleteError
        value = self.buffer[self.position]
        self.position += 1
        return value

    def integer(self) -> int:
        sign = self.byte()
        value = int.from_bytes(self.take(self.int_size), "little")
        if sign not in (0, 1):
            raise VerificationError(f"corrupt custom-format archive: bad integer sign byte {sign}")
        return -value if sign else value

    def string(self) -> str | None:
        length = self.integer()
        if length < 0:
            return None
        return self.take(length).decode("utf-8", "replace")


def _parse_header(reader: _Reader) -> ArchiveHeader:
    if reader.take(len(MAGIC)) != MAGIC:
        raise VerificationError("not a pg_dump custom-format archive (no PGDMP signature)")
    major, minor = reader.byte(), reader.byte()
    revision = reader.byte() if (major, minor) > (1, 0) else 0
    if not OLDEST_VERSION <= (major, minor) <= NEWEST_VERSION:
        raise UnsupportedArchiveError(f"custom-format archive version {major}.{minor} is not one this check reads")
    reader.int_size = reader.byte()
    if not 1 <= reader.int_size <= 8:
        raise VerificationError(f"corrupt custom-format archive: integer size {reader.int_size}")
    offset_size = reader.byte()
    if not 1 <= offset_size <= 16:
        raise VerificationError(f"corrupt custom-format archive: offset size {offset_size}")
    archive_format = reader.byte()
    if archive_format != FORMAT_CUSTOM:
        raise VerificationError(f"not a custom-format archive (format byte {archive_format})")
    compressed = reader.byte() != 0 if (major, minor) >= (1, 15) else reader.integer() != 0
    for _ in range(7):  # creation time: sec, min, hour, mday, mon, year, isdst
        reader.integer()
    database = reader.string() or ""
    server_version = reader.string() or ""
    dump_version = reader.string() or ""
    return ArchiveHeader(
        (major, minor, revision), reader.int_size, offset_size, compressed, database, server_version, dump_version
    )


def _parse_toc_entry(reader: _Reader, header: ArchiveHeader) -> TocEntry:
    dump_id = reader.integer()
    if dump_id <= 0:
        raise VerificationError(f"corrupt custom-format archive: TOC entry id {dump_id}")
    reader.integer()  # had dumper
    reader.string()  # table oid
    reader.string()  # oid
    tag = reader.string() or ""
    description = reader.string() or ""
    reader.integer()  # section
    reader.string()  # definition
    reader.string()  # drop statement
    reader.string()  # copy statement
    namespace = reader.string() or ""
    reader.string()  # tablespace
    if header.version >= (1, 14, 0):
        reader.string()  # table access method
    if header.version >= (1, 16, 0):
        reader.integer()  # relkind
    reader.string()  # owner
    reader.string()  # "with oids"
    while reader.string() is not None:  # dependencies, ended by a NULL string
        pass
    flag = reader.byte()
    reader.take(header.offset_size)
    if flag not in (OFFSET_NOT_SET, OFFSET_SET, OFFSET_NO_DATA):
        raise VerificationError(f"corrupt custom-format archive: data offset flag {flag} in TOC entry {dump_id}")
    return TocEntry(dump_id, description, tag, namespace, flag != OFFSET_NO_DATA)


class CustomArchiveCheck:
    """StreamCheck for `pg_dump --format=custom`: complete header, TOC and every data block.

    Uncompressed table data (COPY text or INSERT statements, which never contain a NUL byte) is
    skipped at C speed by finding its end marker, a zero-length chunk: five zero bytes can only
    occur there, since every chunk before it is non-empty and its length prefix is followed by a
    non-NUL byte. Everything else (large objects, compressed data) is walked chunk by chunk.
    """

    def __init__(self, fallback: Callable[[], StreamCheck] | None = None) -> None:
        self._fallback = fallback  # for a format version this reader does not know (a newer pg_dump)
        self._delegate: StreamCheck | None = None
        self.header: ArchiveHeader | None = None
        self.entries: dict[int, TocEntry] = {}
        self.total_bytes = 0
        self._buffer = bytearray()  # header and TOC bytes not parsed yet
        self._toc_count: int | None = None
        self._in_blocks = False
        self._pending: set[int] = set()  # entries with data whose block has not been seen
        self._seen: set[int] = set()
        self._state = _BLOCK_HEADER
        self._carry = b""  # the start of a small item split across two feeds
        self._remaining = 0  # payload bytes of the current chunk still to pass
        self._in_large_object = False
        self._zero_run = 0  # trailing zero bytes of the last feed while scanning table data
        self._current: TocEntry | None = None
        self._end_marker = b""
        self._base = 0  # stream offset of the data being walked
        self.block_ends: list[int] = []  # stream offsets just after each complete data block
        self._failed: VerificationError | None = None

    # --- StreamCheck --------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        if self._delegate is not None:
            self._delegate.feed(data)
            return
        if self._failed is not None:
            return
        self.total_bytes += len(data)
        try:
            if self._in_blocks:
                self._walk(data, 0, self.total_bytes - len(data))
            else:
                self._buffer += data
                self._read_toc()
        except UnsupportedArchiveError as error:
            if self._fallback is None:
                self._failed = error
                return
            self._delegate = self._fallback()
            self._delegate.feed(bytes(self._buffer))
            self._buffer = bytearray()
        except VerificationError as error:
            self._failed = error

    def finish(self) -> None:
        if self._delegate is not None:
            self._delegate.finish()
            return
        if self._failed is not None:
            raise self._failed
        if self.total_bytes == 0:
            raise VerificationError("the archive is empty")
        if not self._in_blocks:
            where = "header" if self.header is None else "table of contents"
            raise VerificationError(f"the archive is truncated inside its {where}")
        if self._state != _BLOCK_HEADER or self._carry:
            what = self._current.label() if self._current else "a data block"
            raise VerificationError(f"the archive is truncated inside the data of {what}")
        if self._pending:
            missing = sorted(self._pending)
            names = ", ".join(self.entries[dump_id].label() for dump_id in missing[:3])
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise VerificationError(
                f"the archive is truncated: no data for {names}{more} (it ends between two data blocks)"
            )

    def abort(self) -> None:
        if self._delegate is not None:
            self._delegate.abort()
        self._buffer = bytearray()
        self._carry = b""

    # --- header and table of contents ----------------------------------------------------------
    def _read_toc(self) -> None:
        reader = _Reader(self._buffer, 0, self.header.int_size if self.header else 4)
        try:
            if self.header is None:
                self.header = _parse_header(reader)
                self._end_marker = bytes(1 + self.header.int_size)
                del self._buffer[: reader.position]
                reader.position = 0
            if self._toc_count is None:
                count = reader.integer()
                if count < 0:
                    raise VerificationError(f"corrupt custom-format archive: {count} TOC entries")
                self._toc_count = count
                del self._buffer[: reader.position]
                reader.position = 0
            while len(self.entries) < self._toc_count:
                entry = _parse_toc_entry(reader, self.header)
                if entry.dump_id in self.entries:
                    raise VerificationError(f"corrupt custom-format archive: TOC entry {entry.dump_id} twice")
                self.entries[entry.dump_id] = entry
                if entry.has_data:
                    self._pending.add(entry.dump_id)
                del self._buffer[: reader.position]
                reader.position = 0
        except _IncompleteError:
            return
        self._in_blocks = True
        rest = bytes(self._buffer)
        self._buffer = bytearray()
        self._walk(rest, 0, self.total_bytes - len(rest))

    # --- data blocks ---------------------------------------------------------------------------
    def _small(self, data: bytes, index: int, size: int) -> tuple[bytes | None, int]:
        """`size` bytes from the carry and `data[index:]`, or None (carried) when the feed ends first."""
        if self._carry:
            needed = size - len(self._carry)
            self._carry += data[index : index + needed]
            index = min(len(data), index + needed)
            if len(self._carry) < size:
                return None, index
            item, self._carry = self._carry, b""
            return item, index
        if index + size <= len(data):
            return data[index : index + size], index + size
        self._carry = data[index:]
        return None, len(data)

    def _integer(self, item: bytes) -> int:
        sign = item[0]
        if sign not in (0, 1):
            raise VerificationError(f"corrupt custom-format archive: bad integer in {self._where()}")
        value = int.from_bytes(item[1:], "little")
        return -value if sign else value

    def _where(self) -> str:
        return self._current.label() if self._current else "the data blocks"

    def _walk(self, data: bytes, index: int, base: int) -> None:
        assert self.header is not None
        self._base = base
        width = 1 + self.header.int_size
        end = len(data)
        while index < end:
            state = self._state
            if state == _CHUNK_BYTES:
                step = min(self._remaining, end - index)
                self._remaining -= step
                index += step
                if self._remaining == 0:
                    self._state = _CHUNK_LENGTH
            elif state == _FAST_SCAN:
                index = self._scan(data, index)
            else:
                item, index = self._small(data, index, 1 + width if state == _BLOCK_HEADER else width)
                if item is None:
                    return
                self._on_item(state, item, index)

    def _on_item(self, state: str, item: bytes, index: int) -> None:
        if state == _BLOCK_HEADER:
            self._start_block(item[0], self._integer(item[1:]))
        elif state == _LARGE_OBJECT_OID:
            if self._integer(item) == 0:
                self._block_done(index)
            else:
                self._state = _CHUNK_LENGTH
        else:
            length = self._integer(item)
            if length < 0:
                raise VerificationError(f"corrupt custom-format archive: chunk length {length} in {self._where()}")
            if length:
                self._remaining = length
                self._state = _CHUNK_BYTES
            elif self._in_large_object:
                self._state = _LARGE_OBJECT_OID
            else:
                self._block_done(index)

    def _start_block(self, block_type: int, dump_id: int) -> None:
        assert self.header is not None
        entry = self.entries.get(dump_id)
        if block_type not in (BLOCK_DATA, BLOCK_LARGE_OBJECTS):
            raise VerificationError(f"corrupt custom-format archive: block type {block_type} after {self._where()}")
        if entry is None or not entry.has_data:
            raise VerificationError(f"corrupt custom-format archive: a data block for unknown entry {dump_id}")
        if dump_id in self._seen:
            raise VerificationError(f"corrupt custom-format archive: two data blocks for {entry.label()}")
        self._seen.add(dump_id)
        self._current = entry
        if block_type == BLOCK_LARGE_OBJECTS:
            self._in_large_object = True
            self._state = _LARGE_OBJECT_OID
        elif entry.description == "TABLE DATA" and not self.header.compressed:
            self._zero_run = 0
            self._state = _FAST_SCAN
        else:
            self._in_large_object = False
            self._state = _CHUNK_LENGTH

    def _block_done(self, index: int) -> None:
        assert self._current is not None
        self._pending.discard(self._current.dump_id)
        self.block_ends.append(self._base + index)
        self._in_large_object = False
        self._state = _BLOCK_HEADER

    def _scan(self, data: bytes, index: int) -> int:
        """Find the zero-length chunk that ends uncompressed table data; return where to go on."""
        marker = self._end_marker
        width = len(marker)
        if self._zero_run:
            needed = width - self._zero_run
            head = data[index : index + needed]
            if head.count(0) == len(head) and len(head) == needed:
                self._block_done(index + needed)
                return index + needed
            if head.count(0) == len(head):  # still all zeros, but the feed ended
                self._zero_run += len(head)
                return index + len(head)
            self._zero_run = 0
        found = data.find(marker, index)
        if found >= 0:
            self._block_done(found + width)
            return found + width
        tail_start = max(index, len(data) - (width - 1))
        tail = data[tail_start:]
        self._zero_run = len(tail) - len(tail.rstrip(b"\x00"))
        return len(data)
