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

import struct
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
_COPY_ROWS = "table rows"
COPY_END = b"\\.\n\n\n"  # pg_dump ends each table's COPY data with this line and two blank ones
_PREFIX_FORMATS = {1: "<BB", 2: "<BH", 4: "<BI", 8: "<BQ"}  # sign byte + little-endian unsigned


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
    copy: bool = False  # its data is COPY text (not INSERT statements): one raw newline per row

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
    copy_statement = reader.string() or ""
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
    return TocEntry(dump_id, description, tag, namespace, flag != OFFSET_NO_DATA, copy_statement.startswith("COPY "))


class CustomArchiveCheck:
    """StreamCheck for `pg_dump --format=custom`: complete header, TOC and every data block.

    It also counts each table's rows from its COPY data as it streams by, so the manifest's counts
    come from the dump's own snapshot with no second scan on the server. pg_dump writes one chunk
    per COPY row, each behind a length prefix whose bytes may be 0x0A, so the chunks are walked
    (a struct unpack per row) and newlines are counted in the payloads only, at C speed: COPY text
    escapes a newline inside a value as `\\n`, so every raw newline of a payload ends a row.
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
        self._current: TocEntry | None = None
        self._prefix: struct.Struct | None = None  # a chunk's length prefix, when the int size has a format
        self._rows = 0  # rows of the current table so far
        self._terminated = False  # the current table's COPY data ended with its `\\.` line
        self._terminator: bytes | None = None  # the start of a chunk that may be that line
        self.counts: dict[str, int] = {}  # rows per table ("schema.table"), as `count(*)` would say
        self._uncounted: list[str] = []  # tables whose data is not COPY text (compressed, INSERTs)
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

    def row_counts(self) -> dict[str, int] | None:
        """Rows per table after `finish`, or None when some table's data could not be counted."""
        if self._delegate is not None or self._uncounted:
            return None
        return dict(self.counts)

    # --- header and table of contents ----------------------------------------------------------
    def _read_toc(self) -> None:
        reader = _Reader(self._buffer, 0, self.header.int_size if self.header else 4)
        try:
            if self.header is None:
                self.header = _parse_header(reader)
                prefix_format = _PREFIX_FORMATS.get(self.header.int_size)
                self._prefix = struct.Struct(prefix_format) if prefix_format else None
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
            if state == _COPY_ROWS:
                index = self._copy_rows(data, index)
            elif state == _CHUNK_BYTES:
                step = min(self._remaining, end - index)
                self._remaining -= step
                index += step
                if self._remaining == 0:
                    self._state = _CHUNK_LENGTH
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
        elif entry.description == "TABLE DATA" and entry.copy and not self.header.compressed and self._prefix:
            self._rows = 0
            self._remaining = 0
            self._terminated = False
            self._terminator = None
            self._state = _COPY_ROWS
        else:
            if entry.description == "TABLE DATA":
                self._uncounted.append(entry.label())
            self._in_large_object = False
            self._state = _CHUNK_LENGTH

    def _block_done(self, index: int) -> None:
        assert self._current is not None
        if self._state == _COPY_ROWS:
            if self._terminated:
                self.counts[f"{self._current.namespace}.{self._current.tag}"] = self._rows
            else:
                self._uncounted.append(self._current.label())
        self._pending.discard(self._current.dump_id)
        self.block_ends.append(self._base + index)
        self._in_large_object = False
        self._state = _BLOCK_HEADER

    def _copy_rows(self, data: bytes, index: int) -> int:
        """Walk the chunks of uncompressed COPY data, counting payload newlines; return where to go on."""
        prefix = self._prefix
        assert prefix is not None
        width, unpack_from, count = prefix.size, prefix.unpack_from, data.count
        end = len(data)
        rows = 0
        remaining = self._remaining  # payload bytes of the current chunk still to come
        while index < end:
            if remaining:
                stop = min(end, index + remaining)
                if self._terminator is None:
                    rows += count(b"\n", index, stop)
                else:
                    rows += self._split_end_of_data(data[index:stop])
                remaining -= stop - index
                index = stop
                continue
            if self._carry or index + width > end:  # a length prefix split across feeds
                item, index = self._small(data, index, width)
                if item is None:
                    break
                sign, length = prefix.unpack(item)
            else:
                sign, length = unpack_from(data, index)
                index += width
            if sign != 0:
                raise VerificationError(f"corrupt custom-format archive: bad chunk length in {self._where()}")
            if length == 0:
                self._rows += rows
                rows = 0
                self._block_done(index)
                break
            if length == len(COPY_END) and self._is_end_of_data(data, index):
                index += length
                continue
            stop = index + length
            if stop <= end:  # the whole payload is here (nearly always): counted without another turn
                rows += count(b"\n", index, stop)
                index = stop
                continue
            remaining = length
        self._remaining = remaining
        self._rows += rows
        return index

    def _is_end_of_data(self, data: bytes, index: int) -> bool:
        """Whether the chunk at `index` is the `\\.` line pg_dump writes after the rows, as a chunk of its own."""
        if index + len(COPY_END) <= len(data):
            self._terminated = data.startswith(COPY_END, index)
            return self._terminated
        self._terminator = b""  # split across feeds: decided when its last byte arrives
        return False

    def _split_end_of_data(self, part: bytes) -> int:
        """Rows in a part of a chunk that may be the end-of-data line (none if it is)."""
        assert self._terminator is not None
        self._terminator += part
        if len(self._terminator) < len(COPY_END):
            return 0
        chunk, self._terminator = self._terminator, None
        self._terminated = chunk == COPY_END
        return 0 if self._terminated else chunk.count(b"\n")
