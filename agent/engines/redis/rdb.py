"""A streaming structural check of Redis RDB snapshots, run in the agent's own thread.

It walks every opcode and every value's framing as the bytes stream by (never a second read, never
a whole value in memory), counts keys per logical database, and compares the trailing CRC-64 with
one computed over the stream, so a snapshot cut anywhere or altered anywhere fails. Layout
(src/rdb.h and src/rdb.c of Redis 7.4; RDB versions 1 to 12):

  header   "REDIS" and a 4-digit version
  opcodes  AUX (two strings), SELECTDB (length), RESIZEDB (two lengths: keys, keys with a TTL),
           EXPIRETIME (4 bytes) / EXPIRETIME_MS (8 bytes), IDLE (length), FREQ (1 byte),
           FUNCTION2 (string), MODULE_AUX (module id, when, annotated module value),
           SLOT_INFO (three lengths), then a value type byte starts a key: key string, value
  EOF      0xFF, then (version >= 5) the CRC-64/Jones of everything before it, little-endian;
           all zero when the server runs with `rdbchecksum no`
A length is 6 bits, 14 bits, or 0x80/0x81 and a 32/64-bit big-endian number; a string is a length
and its bytes, an integer (0xC0-0xC2: 1, 2 or 4 bytes), or LZF (0xC3: compressed length,
original length, compressed bytes). Listpacks, ziplists and intsets are strings whose own header
gives their size; uncompressed ones are checked against it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from functools import partial

import anycrc

from agent.errors import VerificationError

RDB_FORMAT = "redis-rdb"
MAGIC = b"REDIS"
NEWEST_VERSION = 12  # Redis 7.4 and 8; a newer version may add types, so it is refused
CHECKSUM_SINCE_VERSION = 5

# value types (src/rdb.h RDB_TYPE_*)
STRING, LIST, SET, ZSET, HASH, ZSET_2, MODULE_PRE_GA, MODULE_2 = 0, 1, 2, 3, 4, 5, 6, 7
HASH_ZIPMAP, LIST_ZIPLIST, SET_INTSET, ZSET_ZIPLIST, HASH_ZIPLIST = 9, 10, 11, 12, 13
LIST_QUICKLIST, STREAM_LISTPACKS, HASH_LISTPACK, ZSET_LISTPACK = 14, 15, 16, 17
LIST_QUICKLIST_2, STREAM_LISTPACKS_2, SET_LISTPACK, STREAM_LISTPACKS_3 = 18, 19, 20, 21
HASH_METADATA_PRE_GA, HASH_LISTPACK_EX_PRE_GA, HASH_METADATA, HASH_LISTPACK_EX = 22, 23, 24, 25

# opcodes (src/rdb.h RDB_OPCODE_*)
SLOT_INFO, FUNCTION2, FUNCTION_PRE_GA, MODULE_AUX = 0xF4, 0xF5, 0xF6, 0xF7
IDLE, FREQ, AUX, RESIZEDB = 0xF8, 0xF9, 0xFA, 0xFB
EXPIRETIME_MS, EXPIRETIME, SELECTDB, EOF = 0xFC, 0xFD, 0xFE, 0xFF

# annotated module values (RDB_MODULE_OPCODE_*)
_MODULE_EOF, _MODULE_SINT, _MODULE_UINT, _MODULE_FLOAT, _MODULE_DOUBLE, _MODULE_STRING = 0, 1, 2, 3, 4, 5

TYPE_NAMES = {
    STRING: "string", LIST: "list", SET: "set", ZSET: "sorted set", HASH: "hash", ZSET_2: "sorted set",
    MODULE_PRE_GA: "module value (pre-release)", MODULE_2: "module value", HASH_ZIPMAP: "hash (zipmap)",
    LIST_ZIPLIST: "list (ziplist)", SET_INTSET: "set (intset)", ZSET_ZIPLIST: "sorted set (ziplist)",
    HASH_ZIPLIST: "hash (ziplist)", LIST_QUICKLIST: "list (quicklist)", STREAM_LISTPACKS: "stream",
    HASH_LISTPACK: "hash (listpack)", ZSET_LISTPACK: "sorted set (listpack)", LIST_QUICKLIST_2: "list",
    STREAM_LISTPACKS_2: "stream", SET_LISTPACK: "set (listpack)", STREAM_LISTPACKS_3: "stream",
    HASH_METADATA_PRE_GA: "hash with field TTLs", HASH_LISTPACK_EX_PRE_GA: "hash with field TTLs (listpack)",
    HASH_METADATA: "hash with field TTLs", HASH_LISTPACK_EX: "hash with field TTLs (listpack)",
}  # fmt: skip

# strings that are encoded containers, and which header they carry
_ZIPLIST_TYPES = frozenset({LIST_ZIPLIST, ZSET_ZIPLIST, HASH_ZIPLIST})
_LISTPACK_TYPES = frozenset({HASH_LISTPACK, ZSET_LISTPACK, SET_LISTPACK, HASH_LISTPACK_EX_PRE_GA})
_QUICKLIST_PLAIN, _QUICKLIST_PACKED = 1, 2
_STREAM_ID_BYTES = 16

_U32 = struct.Struct("<I")
_U32_BE = struct.Struct(">I")
_U64_BE = struct.Struct(">Q")
_U64 = struct.Struct("<Q")
_CRC = anycrc.Model("CRC64-REDIS")


class _TruncatedError(Exception):
    """The stream ended while the parser waited for more bytes."""


@dataclass(slots=True)
class DatabaseKeys:
    keys: int = 0
    expires: int = 0  # keys with a TTL (they may be gone by the time the snapshot is loaded)


@dataclass(slots=True)
class RdbSummary:
    """What the check learned: format version, the producer's AUX fields, keys per database."""

    version: int = 0
    aux: dict[str, str] = field(default_factory=dict)
    databases: dict[int, DatabaseKeys] = field(default_factory=dict)
    checksum: str = ""  # "verified" | "disabled" (rdbchecksum no) | "absent" (version < 5)
    functions: int = 0
    total_bytes: int = 0

    def key_counts(self) -> dict[str, int]:
        """Keys per database, keyed `db0`, `db1`... as in the manifest's `counts`."""
        return {f"db{number}": entry.keys for number, entry in sorted(self.databases.items())}

    def expire_counts(self) -> dict[str, int]:
        return {f"db{number}": entry.expires for number, entry in sorted(self.databases.items())}


def _string_end(buffer: bytearray, position: int) -> int:
    """End of the string at `position` when all of it is buffered, else -1 (the slow path decides)."""
    size = len(buffer)
    if position >= size:
        return -1
    first = buffer[position]
    kind = first >> 6
    if kind == 0:
        end = position + 1 + first
    elif kind == 1:
        if position + 2 > size:
            return -1
        end = position + 2 + (((first & 0x3F) << 8) | buffer[position + 1])
    elif first == 0x80:
        if position + 5 > size:
            return -1
        end = position + 5 + _U32_BE.unpack_from(buffer, position + 1)[0]
    elif first == 0xC0:
        end = position + 2
    elif first == 0xC1:
        end = position + 3
    elif first == 0xC2:
        end = position + 5
    else:
        return -1  # 64-bit lengths and LZF strings take the slow path
    return end if end <= size else -1


class RdbCheck:
    """StreamCheck for RDB snapshots: framing of every opcode and value, key counts, CRC-64."""

    def __init__(self) -> None:
        self.summary = RdbSummary()
        self._buffer = bytearray()  # bytes not yet parsed (the parser's position is an index into it)
        self._position = 0
        self._offset = 0  # stream offset of _buffer[0]
        self._ended = False
        self._done = False  # the parser read the EOF opcode and the checksum
        self._failed: VerificationError | None = None
        self._crc = 0
        self._held = b""  # the last 8 bytes seen: the checksum if the stream ends here
        self._trailing = 0  # bytes after the end of the RDB
        self._checksum = b""
        self._where: str | None = "the header"  # None: inside the key described by the three below
        self._database = 0
        self._counts = DatabaseKeys()
        self._key_type = 0
        self._announced: dict[int, tuple[int, int]] = {}  # RESIZEDB: keys and keys with a TTL per database
        self._readers = self._value_readers()
        self._opcodes = self._opcode_readers()
        self._parser = self._parse()
        self._resume()

    # --- StreamCheck --------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        if self._failed is not None or not data:
            return
        self.summary.total_bytes += len(data)
        self._update_crc(data)
        if self._done:
            self._trailing += len(data)
            return
        buffer = self._buffer
        if self._position:
            del buffer[: self._position]
            self._offset += self._position
            self._position = 0
        buffer += data
        self._resume()

    def finish(self) -> None:
        if self._failed is not None:
            raise self._failed
        if self.summary.total_bytes == 0:
            raise VerificationError("the RDB snapshot is empty")
        if not self._done:
            self._ended = True
            self._resume()
            if self._failed is not None:
                raise self._failed
        if self._trailing:
            raise VerificationError(
                f"{self._trailing} bytes follow the end of the RDB snapshot (byte {self._end_offset()}): "
                "it is not one whole snapshot"
            )
        self._verify_checksum()

    def abort(self) -> None:
        self._buffer = bytearray()
        self._parser.close()

    # --- driving the parser ---------------------------------------------------------------------
    def _resume(self) -> None:
        try:
            next(self._parser)
        except StopIteration:
            self._done = True
            # bytes of this feed past the checksum
            self._trailing = len(self._buffer) - self._position
        except _TruncatedError:
            self._failed = VerificationError(
                f"the RDB snapshot is truncated: it ends inside {self._describe_where()} after "
                f"{self.summary.total_bytes} bytes, before its EOF marker and checksum"
            )
        except VerificationError as error:
            self._failed = error

    def _update_crc(self, data: bytes) -> None:
        """CRC over every byte but the last 8 seen so far (those may be the checksum itself)."""
        if len(data) >= 8:
            if self._held:
                self._crc = _CRC.calc(self._held, self._crc)
            self._crc = _CRC.calc(memoryview(data)[:-8], self._crc)
            self._held = data[-8:]
        else:
            joined = self._held + data
            self._crc = _CRC.calc(joined[:-8], self._crc) if len(joined) > 8 else self._crc
            self._held = joined[-8:]

    def _verify_checksum(self) -> None:
        summary = self.summary
        if summary.version < CHECKSUM_SINCE_VERSION:
            summary.checksum = "absent"
            return
        if self._checksum == bytes(8):
            summary.checksum = "disabled"
            return
        expected = _U64.unpack(self._checksum)[0]
        if self._crc != expected or self._held != self._checksum:
            raise VerificationError(
                f"the RDB snapshot's CRC-64 does not match its contents (stored {expected:016x}, "
                f"computed {self._crc:016x}): it was altered"
            )
        summary.checksum = "verified"

    def _end_offset(self) -> int:
        return self.summary.total_bytes - self._trailing

    def _describe_where(self) -> str:
        if self._where is not None:
            return self._where
        kind = TYPE_NAMES.get(self._key_type, f"type {self._key_type}")
        return f"key {self._counts.keys + 1} of database {self._database} (a {kind})"

    def _corrupt(self, position: int, message: str) -> VerificationError:
        where = self._describe_where()
        return VerificationError(f"corrupt RDB snapshot at byte {self._offset + position}, in {where}: {message}")

    # --- waiting for bytes (generators: they suspend the parser until feed brings more) ---------
    def _need(self, position: int, size: int) -> Generator[None, None, int]:
        """Wait until `size` bytes from `position` are buffered; return the position (it moves on compaction)."""
        while position + size > len(self._buffer):
            self._position = position
            if self._ended:
                raise _TruncatedError
            yield
            position = self._position
        return position

    def _skip(self, position: int, size: int) -> Generator[None, None, int]:
        """Pass `size` bytes without keeping them: a 512 MB value never sits in memory."""
        while True:
            available = len(self._buffer) - position
            if size <= available:
                return position + size
            size -= available
            self._position = len(self._buffer)
            if self._ended:
                raise _TruncatedError
            yield
            position = self._position

    def _length(self, position: int) -> Generator[None, None, tuple[int, int]]:
        """A length (never a special encoding): (value, position after it)."""
        buffer = self._buffer
        if position + 9 > len(buffer):
            position = yield from self._need(position, 1)
        first = buffer[position]
        kind = first >> 6
        if kind == 0:
            return first, position + 1
        if kind == 1:
            if position + 2 > len(buffer):
                position = yield from self._need(position, 2)
            return ((first & 0x3F) << 8) | buffer[position + 1], position + 2
        if first == 0x80:
            if position + 5 > len(buffer):
                position = yield from self._need(position, 5)
            return _U32_BE.unpack_from(buffer, position + 1)[0], position + 5
        if first == 0x81:
            if position + 9 > len(buffer):
                position = yield from self._need(position, 9)
            return _U64_BE.unpack_from(buffer, position + 1)[0], position + 9
        raise self._corrupt(position, f"invalid length byte 0x{first:02x}")

    def _string(self, position: int) -> Generator[None, None, int]:
        """Pass one string of any encoding; return the position after it."""
        end = _string_end(self._buffer, position)
        if end >= 0:
            return end
        buffer = self._buffer
        position = yield from self._need(position, 1)
        first = buffer[position]
        if first >> 6 != 3:
            size, position = yield from self._length(position)
            return (yield from self._skip(position, size))
        encoding = first & 0x3F
        if encoding <= 2:
            return (yield from self._skip(position + 1, 1 << encoding))
        if encoding != 3:
            raise self._corrupt(position, f"unknown string encoding {encoding}")
        compressed, position = yield from self._length(position + 1)
        original, position = yield from self._length(position)
        if compressed == 0 or original == 0:
            raise self._corrupt(position, "an LZF string with a zero length")
        return (yield from self._skip(position, compressed))

    def _text(self, position: int, limit: int = 256) -> Generator[None, None, tuple[str | None, int]]:
        """A short string's text (AUX fields, names); None when it is compressed or long."""
        buffer = self._buffer
        position = yield from self._need(position, 1)
        first = buffer[position]
        if first >> 6 == 3 and first & 0x3F <= 2:
            width = 1 << (first & 0x3F)
            position = yield from self._need(position + 1, width)
            value = int.from_bytes(buffer[position : position + width], "little", signed=True)
            return str(value), position + width
        if first >> 6 == 3:
            return None, (yield from self._string(position))
        size, start = yield from self._length(position)
        if size > limit:
            return None, (yield from self._skip(start, size))
        start = yield from self._need(start, size)
        return bytes(buffer[start : start + size]).decode("utf-8", "replace"), start + size

    def _container(self, position: int, kind: str) -> Generator[None, None, int]:
        """Pass a ziplist/listpack/intset string, checking its header's size when it is stored plain."""
        buffer = self._buffer
        position = yield from self._need(position, 1)
        if buffer[position] >> 6 == 3:
            return (yield from self._string(position))  # LZF (the CRC covers what is inside)
        size, start = yield from self._length(position)
        header = min(size, 8)
        start = yield from self._need(start, header)
        if kind == "intset":
            if size < 8:
                raise self._corrupt(start, f"an intset of {size} bytes is shorter than its header")
            width, count = _U32.unpack_from(buffer, start)[0], _U32.unpack_from(buffer, start + 4)[0]
            if width not in (2, 4, 8) or 8 + width * count != size:
                raise self._corrupt(start, f"an intset's header does not match its {size} bytes")
            return (yield from self._skip(start, size))
        if size < 7 or _U32.unpack_from(buffer, start)[0] != size:
            raise self._corrupt(start, f"a {kind} whose header does not give its size of {size} bytes")
        end = yield from self._skip(start, size)
        if self._buffer[end - 1] != 0xFF:
            raise self._corrupt(end - 1, f"a {kind} without its end byte")
        return end

    def _module_value(self, position: int) -> Generator[None, None, int]:
        """Pass an annotated module value (MODULE_2 and MODULE_AUX): opcodes until the EOF opcode."""
        while True:
            opcode, position = yield from self._length(position)
            if opcode == _MODULE_EOF:
                return position
            if opcode in (_MODULE_SINT, _MODULE_UINT):
                _, position = yield from self._length(position)
            elif opcode == _MODULE_FLOAT:
                position = yield from self._skip(position, 4)
            elif opcode == _MODULE_DOUBLE:
                position = yield from self._skip(position, 8)
            elif opcode == _MODULE_STRING:
                position = yield from self._string(position)
            else:
                raise self._corrupt(position, f"unknown module value opcode {opcode}")

    # --- the snapshot ---------------------------------------------------------------------------
    def _parse(self) -> Generator[None, None, None]:
        yield  # primed by __init__: wait for the first bytes
        buffer = self._buffer
        position = yield from self._need(0, 9)
        if bytes(buffer[position : position + 5]) != MAGIC:
            raise VerificationError("not a Redis RDB snapshot (no REDIS signature)")
        digits = bytes(buffer[position + 5 : position + 9])
        if not digits.isdigit():
            raise VerificationError(f"not a Redis RDB snapshot (version {digits!r} is not 4 digits)")
        version = int(digits)
        if not 1 <= version <= NEWEST_VERSION:
            raise VerificationError(
                f"RDB version {version} is not one this agent can check (it knows 1 to {NEWEST_VERSION}); "
                "upgrade the agent for this server"
            )
        self.summary.version = version
        position += 9
        yield from self._body(position, version)

    def _body(self, position: int, version: int) -> Generator[None, None, None]:
        """Keys and the opcodes between them. The hot path (a key with short plain strings) is inlined:
        a function call per string would halve the speed on small keys."""
        buffer = self._buffer
        size = len(buffer)
        counts = self._counts = self.summary.databases.setdefault(0, DatabaseKeys())
        expiring = False
        while True:
            if position >= size:
                self._where = "the opcode after a key" if counts.keys else "an opcode"
                position = yield from self._need(position, 1)
                self._where = None
                size = len(buffer)
            opcode = buffer[position]
            position += 1
            if opcode <= HASH_LISTPACK_EX:
                self._key_type = opcode
                first = buffer[position] if position < size else 0xFF
                if first < 0x40 and position + 1 + first <= size:
                    position += 1 + first
                else:
                    position = yield from self._string(position)
                    size = len(buffer)
                if opcode == STRING:
                    first = buffer[position] if position < size else 0xFF
                    if first < 0x40 and position + 1 + first <= size:
                        position += 1 + first
                    else:
                        position = yield from self._string(position)
                        size = len(buffer)
                else:
                    position = yield from self._value(position, opcode)
                    size = len(buffer)
                counts.keys += 1
                if expiring:
                    counts.expires += 1
                    expiring = False
            elif opcode == EOF:
                yield from self._end(position, version)
                return
            else:
                expiring = expiring or opcode in (EXPIRETIME_MS, EXPIRETIME)
                position = yield from self._metadata(position, opcode)
                self._where = None
                size = len(buffer)
                counts = self._counts

    def _end(self, position: int, version: int) -> Generator[None, None, None]:
        self._where = "the checksum after the EOF opcode"
        if version >= CHECKSUM_SINCE_VERSION:
            position = yield from self._need(position, 8)
            self._checksum = bytes(self._buffer[position : position + 8])
            position += 8
        self._position = position
        self._finish_counts()

    def _opcode_readers(self) -> dict[int, Callable[[int], Generator[None, None, int]]]:
        """Opcodes that carry no key: what follows each one."""
        return {
            SELECTDB: self._select_database,
            RESIZEDB: self._resize_database,
            EXPIRETIME_MS: partial(self._fixed, size=8, what="an expire time"),
            EXPIRETIME: partial(self._fixed, size=4, what="an expire time"),
            AUX: self._aux,
            FREQ: partial(self._fixed, size=1, what="an LFU frequency"),
            IDLE: partial(self._lengths, count=1, what="an LRU idle time"),
            FUNCTION2: self._function,
            MODULE_AUX: self._module_aux,
            SLOT_INFO: partial(self._lengths, count=3, what="a SLOT_INFO opcode"),
        }

    def _metadata(self, position: int, opcode: int) -> Generator[None, None, int]:
        reader = self._opcodes.get(opcode)
        if reader is None:
            if opcode == FUNCTION_PRE_GA:
                raise self._corrupt(position - 1, "functions in the Redis 7.0 release-candidate format")
            raise self._corrupt(position - 1, f"unknown opcode 0x{opcode:02x}")
        return (yield from reader(position))

    def _fixed(self, position: int, size: int, what: str) -> Generator[None, None, int]:
        self._where = what
        return (yield from self._need(position, size)) + size

    def _lengths(self, position: int, count: int, what: str) -> Generator[None, None, int]:
        self._where = what
        for _ in range(count):
            _, position = yield from self._length(position)
        return position

    def _select_database(self, position: int) -> Generator[None, None, int]:
        self._where = "a SELECTDB opcode"
        self._database, position = yield from self._length(position)
        self._counts = self.summary.databases.setdefault(self._database, DatabaseKeys())
        return position

    def _resize_database(self, position: int) -> Generator[None, None, int]:
        self._where = "a RESIZEDB opcode"
        keys, position = yield from self._length(position)
        expires, position = yield from self._length(position)
        self._announced[self._database] = (keys, expires)
        return position

    def _aux(self, position: int) -> Generator[None, None, int]:
        self._where = "an AUX field"
        name, position = yield from self._text(position)
        value, position = yield from self._text(position)
        if name is not None and value is not None:
            self.summary.aux[name] = value
        return position

    def _function(self, position: int) -> Generator[None, None, int]:
        self._where = "a function library"
        self.summary.functions += 1
        return (yield from self._string(position))

    def _module_aux(self, position: int) -> Generator[None, None, int]:
        self._where = "module auxiliary data"
        _, position = yield from self._length(position)  # module id
        when_opcode, position = yield from self._length(position)
        if when_opcode != _MODULE_UINT:
            raise self._corrupt(position, f"module auxiliary data with a bad 'when' opcode {when_opcode}")
        _, position = yield from self._length(position)
        return (yield from self._module_value(position))

    def _finish_counts(self) -> None:
        """Drop the implicit empty database 0 and hold every database to what RESIZEDB announced."""
        databases = self.summary.databases
        if 0 in databases and databases[0].keys == 0 and 0 not in self._announced:
            del databases[0]
        for number, (keys, expires) in self._announced.items():
            found = databases.get(number, DatabaseKeys())
            if (found.keys, found.expires) != (keys, expires):
                raise VerificationError(
                    f"database {number} of the RDB snapshot announces {keys} keys ({expires} with a TTL) "
                    f"but holds {found.keys} ({found.expires} with a TTL)"
                )

    # --- values ---------------------------------------------------------------------------------
    def _value_readers(self) -> dict[int, Callable[[int], Generator[None, None, int]]]:
        listpack = partial(self._container, kind="listpack")
        ziplist = partial(self._container, kind="ziplist")
        stream = partial(self._stream, kind=STREAM_LISTPACKS_3)
        return {
            **dict.fromkeys(_LISTPACK_TYPES, listpack),
            **dict.fromkeys(_ZIPLIST_TYPES, ziplist),
            LIST_QUICKLIST_2: partial(self._quicklist, plain_allowed=True),
            LIST_QUICKLIST: partial(self._quicklist, plain_allowed=False),
            SET: partial(self._strings, per_element=1),
            LIST: partial(self._strings, per_element=1),
            HASH: partial(self._strings, per_element=2),
            ZSET_2: partial(self._sorted_set, binary=True),
            ZSET: partial(self._sorted_set, binary=False),
            SET_INTSET: partial(self._container, kind="intset"),
            STREAM_LISTPACKS_3: stream,
            STREAM_LISTPACKS_2: partial(self._stream, kind=STREAM_LISTPACKS_2),
            STREAM_LISTPACKS: partial(self._stream, kind=STREAM_LISTPACKS),
            HASH_LISTPACK_EX: self._listpack_with_ttls,
            HASH_METADATA: partial(self._hash_with_ttls, kind=HASH_METADATA),
            HASH_METADATA_PRE_GA: partial(self._hash_with_ttls, kind=HASH_METADATA_PRE_GA),
            HASH_ZIPMAP: self._string,
            MODULE_2: self._module,
        }

    def _value(self, position: int, kind: int) -> Generator[None, None, int]:
        reader = self._readers.get(kind)
        if reader is None:
            if kind == MODULE_PRE_GA:
                raise self._corrupt(position, "module values in the Redis 4.0 release-candidate format")
            raise self._corrupt(position - 1, f"unknown value type {kind}")
        return (yield from reader(position))

    def _module(self, position: int) -> Generator[None, None, int]:
        _, position = yield from self._length(position)  # module id
        return (yield from self._module_value(position))

    def _listpack_with_ttls(self, position: int) -> Generator[None, None, int]:
        position = (yield from self._need(position, 8)) + 8  # the smallest field TTL
        return (yield from self._container(position, "listpack"))

    def _count(self, position: int) -> Generator[None, None, tuple[int, int]]:
        count, position = yield from self._length(position)
        if count == 0:
            raise self._corrupt(position, "an empty collection (Redis never saves one)")
        return count, position

    def _strings(self, position: int, per_element: int) -> Generator[None, None, int]:
        buffer = self._buffer
        count, position = yield from self._count(position)
        size = len(buffer)
        for _ in range(count * per_element):
            first = buffer[position] if position < size else 0xFF
            if first < 0x40 and position + 1 + first <= size:
                position += 1 + first  # inlined: a short plain string, the common element
                continue
            end = _string_end(buffer, position)
            position = end if end >= 0 else (yield from self._string(position))
            size = len(buffer)
        return position

    def _sorted_set(self, position: int, *, binary: bool) -> Generator[None, None, int]:
        buffer = self._buffer
        count, position = yield from self._count(position)
        for _ in range(count):
            end = _string_end(buffer, position)
            position = end if end >= 0 else (yield from self._string(position))
            if binary:
                if position + 8 > len(buffer):
                    position = yield from self._need(position, 8)
                position += 8
                continue
            if position >= len(buffer):
                position = yield from self._need(position, 1)
            size = buffer[position]
            position += 1
            if size < 253:  # 253-255 are NaN and the infinities, with no digits
                position = yield from self._skip(position, size)
        return position

    def _quicklist(self, position: int, *, plain_allowed: bool) -> Generator[None, None, int]:
        count, position = yield from self._count(position)
        for _ in range(count):
            if not plain_allowed:
                position = yield from self._container(position, "ziplist")
                continue
            container, position = yield from self._length(position)
            if container == _QUICKLIST_PLAIN:
                position = yield from self._string(position)
            elif container == _QUICKLIST_PACKED:
                position = yield from self._container(position, "listpack")
            else:
                raise self._corrupt(position, f"a list node of unknown container type {container}")
        return position

    def _hash_with_ttls(self, position: int, kind: int) -> Generator[None, None, int]:
        if kind == HASH_METADATA:
            position = (yield from self._need(position, 8)) + 8  # the smallest field TTL
        count, position = yield from self._count(position)
        for _ in range(count):
            _, position = yield from self._length(position)  # the field's TTL
            position = yield from self._string(position)
            position = yield from self._string(position)
        return position

    def _stream(self, position: int, kind: int) -> Generator[None, None, int]:
        nodes, position = yield from self._length(position)
        for _ in range(nodes):
            start = yield from self._need(position, 1)
            if self._buffer[start] != _STREAM_ID_BYTES:
                raise self._corrupt(start, "a stream node key that is not a 16-byte stream ID")
            position = yield from self._string(start)
            position = yield from self._container(position, "listpack")
        lengths = 3 if kind == STREAM_LISTPACKS else 8  # length, last ID; then first ID, max deleted ID, added
        for _ in range(lengths):
            _, position = yield from self._length(position)
        groups, position = yield from self._length(position)
        for _ in range(groups):
            position = yield from self._string(position)  # group name
            for _ in range(2 if kind == STREAM_LISTPACKS else 3):  # last delivered ID (, offset)
                _, position = yield from self._length(position)
            pending, position = yield from self._length(position)
            for _ in range(pending):
                position = (yield from self._need(position, _STREAM_ID_BYTES + 8)) + _STREAM_ID_BYTES + 8
                _, position = yield from self._length(position)  # delivery count
            consumers, position = yield from self._length(position)
            for _ in range(consumers):
                position = yield from self._string(position)  # consumer name
                times = 16 if kind == STREAM_LISTPACKS_3 else 8  # seen time (, active time)
                position = (yield from self._need(position, times)) + times
                owned, position = yield from self._length(position)
                position = yield from self._skip(position, owned * _STREAM_ID_BYTES)
        return position
