"""The RDB check on hand-built snapshots: the types and opcodes a Redis 7.0 server never writes.

Real snapshots of every type the installed server writes are in tests/integration; these cover
newer servers (set listpacks, stream listpacks v3, hash field TTLs, slot info), module values and
older servers (ziplists, zipmaps, string-encoded scores, second-resolution expiry), built byte by
byte from the layout in src/rdb.c, and the corruptions a framing check must name.
"""

from __future__ import annotations

import struct

import anycrc
import pytest

from agent.engines.redis import rdb
from agent.engines.redis.rdb import RdbCheck, RdbSummary
from agent.errors import VerificationError

_CRC = anycrc.Model("CRC64-REDIS")


def length(value: int) -> bytes:
    if value < 64:
        return bytes([value])
    if value < 16384:
        return bytes([0x40 | value >> 8, value & 0xFF])
    if value < 2**32:
        return b"\x80" + struct.pack(">I", value)
    return b"\x81" + struct.pack(">Q", value)


def string(data: bytes | str) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return length(len(raw)) + raw


def listpack(*entries: bytes) -> bytes:
    """A listpack-shaped blob: total bytes, element count, entries, the 0xFF end byte."""
    body = b"".join(entries)
    return string(struct.pack("<IH", 6 + len(body) + 1, len(entries)) + body + b"\xff")


def ziplist(*entries: bytes) -> bytes:
    body = b"".join(entries)
    total = 10 + len(body) + 1
    return string(struct.pack("<IIH", total, total - 1, len(entries)) + body + b"\xff")


def intset(*values: int) -> bytes:
    return string(struct.pack("<II", 2, len(values)) + b"".join(struct.pack("<h", value) for value in values))


def key(kind: int, name: str, value: bytes) -> bytes:
    return bytes([kind]) + string(name) + value


def snapshot(*items: bytes, version: int = 12, announce: tuple[int, int] | None = None, checksum: bool = True) -> bytes:
    body = b"REDIS%04d" % version + bytes([rdb.AUX]) + string("redis-ver") + string("7.4.0")
    body += bytes([rdb.SELECTDB]) + length(0)
    if announce is not None:
        body += bytes([rdb.RESIZEDB]) + length(announce[0]) + length(announce[1])
    body += b"".join(items) + bytes([rdb.EOF])
    if version < 5:
        return body
    return body + (struct.pack("<Q", _CRC.calc(body)) if checksum else bytes(8))


def check(data: bytes) -> RdbSummary:
    checker = RdbCheck()
    for start in range(0, len(data), 5):  # small feeds: every item crosses a feed boundary somewhere
        checker.feed(data[start : start + 5])
    checker.finish()
    return checker.summary


def fails(data: bytes) -> str:
    with pytest.raises(VerificationError) as failure:
        check(data)
    return str(failure.value)


STREAM_ID = struct.pack(">QQ", 1700000000000, 0)


def stream_v3() -> bytes:
    nodes = length(1) + string(STREAM_ID) + listpack(b"\x81a", b"\x81b")
    counters = b"".join(length(value) for value in (1, 1700000000000, 0, 1700000000000, 0, 0, 0, 1))
    pending = STREAM_ID + struct.pack("<Q", 1700000000001) + length(1)
    consumer = string("alice") + struct.pack("<QQ", 1700000000002, 1700000000003) + length(1) + STREAM_ID
    last_delivered = length(1700000000000) + length(0) + length(1)  # ID and offset
    group = string("workers") + last_delivered + length(1) + pending + length(1) + consumer
    return nodes + counters + length(1) + group


def module_value() -> bytes:
    return (
        length(0x1234567890)  # module id (name and encoding version packed in 64 bits)
        + length(2) + length(42)  # UINT
        + length(1) + length(7)  # SINT
        + length(3) + struct.pack("<f", 1.5)  # FLOAT
        + length(4) + struct.pack("<d", 2.5)  # DOUBLE
        + length(5) + string("payload")  # STRING
        + length(0)  # EOF
    )  # fmt: skip


TTL = struct.pack("<Q", 1700000000000)
# scores as text: a length byte and digits, or 253/254/255 for NaN, +inf, -inf
OLD_SCORES = length(4) + string("a") + b"\x031.5" + string("b") + b"\xfd" + string("c") + b"\xfe"
OLD_SCORES += string("d") + b"\xff"
NEWER_AND_OLDER_KEYS = [
    key(rdb.SET_LISTPACK, "set-listpack", listpack(b"\x01", b"\x02")),
    key(rdb.STREAM_LISTPACKS_3, "stream-v3", stream_v3()),
    key(rdb.HASH_METADATA, "hash-ttl", TTL + length(1) + length(5) + string("f") + string("v")),
    key(rdb.HASH_METADATA_PRE_GA, "hash-ttl-rc", length(2) + (length(0) + string("a") + string("b")) * 2),
    key(rdb.HASH_LISTPACK_EX, "hash-lp-ttl", TTL + listpack(b"\x81f", b"\x81v", b"\x00")),
    key(rdb.MODULE_2, "module", module_value()),
    key(rdb.LIST, "old-list", length(2) + string("a") + string("b" * 70)),
    key(rdb.ZSET, "old-zset", OLD_SCORES),
    key(rdb.LIST_ZIPLIST, "ziplist", ziplist(b"\x00\x01a")),
    key(rdb.LIST_QUICKLIST, "quicklist-v1", length(2) + ziplist(b"\x00\x01a") + ziplist(b"\x00\x01b")),
    key(rdb.LIST_QUICKLIST_2, "quicklist", length(2) + length(1) + string("plain") + length(2) + listpack(b"\x81x")),
    key(rdb.HASH_ZIPMAP, "zipmap", string(b"\x01\x01a\x01\x00b\xff")),
    key(rdb.SET_INTSET, "intset", intset(1, 2, 3)),
    key(rdb.STRING, "big-length", b"\x81" + struct.pack(">Q", 3) + b"abc"),
    key(rdb.STRING, "int32", b"\xc2" + struct.pack("<i", -100000)),
    key(rdb.STRING, "lzf", b"\xc3" + length(4) + length(10) + b"\x01ab\xe0"),
]  # fmt: skip


def test_types_of_newer_and_older_servers_pass_with_their_keys_counted() -> None:
    summary = check(snapshot(*NEWER_AND_OLDER_KEYS, announce=(len(NEWER_AND_OLDER_KEYS), 0)))
    assert summary.key_counts() == {"db0": len(NEWER_AND_OLDER_KEYS)}
    assert summary.checksum == "verified"
    assert summary.aux == {"redis-ver": "7.4.0"}


def test_opcodes_without_keys_are_walked() -> None:
    value_without_id = module_value()[len(length(0x1234567890)) :]
    module_aux = bytes([rdb.MODULE_AUX]) + length(0x99) + length(2) + length(1) + value_without_id
    items = [
        module_aux,
        bytes([rdb.FUNCTION2]) + string("#!lua name=lib\n"),
        bytes([rdb.SLOT_INFO]) + length(1234) + length(2) + length(1),
        bytes([rdb.EXPIRETIME]) + struct.pack("<i", 1900000000) + key(rdb.STRING, "seconds", string("x")),
        bytes([rdb.EXPIRETIME_MS]) + struct.pack("<q", 1900000000000) + key(rdb.STRING, "ms", string("y")),
        bytes([rdb.IDLE]) + length(300) + key(rdb.STRING, "idle", string("z")),
        bytes([rdb.FREQ, 5]) + key(rdb.STRING, "frequent", string("w")),
        bytes([rdb.SELECTDB]) + length(9) + bytes([rdb.RESIZEDB]) + length(1) + length(0),
        key(rdb.STRING, "nine", string("9")),
    ]  # fmt: skip
    summary = check(snapshot(*items, announce=(4, 2)))
    assert summary.key_counts() == {"db0": 4, "db9": 1}
    assert summary.expire_counts() == {"db0": 2, "db9": 0}
    assert summary.functions == 1


def test_an_old_snapshot_without_a_checksum_passes() -> None:
    summary = check(snapshot(key(rdb.STRING, "a", string("b")), version=4))
    assert summary.checksum == "absent"
    assert summary.key_counts() == {"db0": 1}


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (key(8, "k", string("v")), "unknown value type 8"),
        (bytes([0xF3]), "unknown opcode 0xf3"),
        (bytes([rdb.FUNCTION_PRE_GA]) + string("f"), "release-candidate format"),
        (key(rdb.MODULE_PRE_GA, "k", length(1)), "release-candidate format"),
        (key(rdb.SET, "empty", length(0)), "empty collection"),
        (key(rdb.SET_LISTPACK, "k", string(struct.pack("<IH", 99, 1) + b"\x01\xff")), "header does not give its size"),
        (key(rdb.SET_LISTPACK, "k", string(struct.pack("<IH", 9, 1) + b"\x01\x01\x00")), "without its end byte"),
        (key(rdb.SET_INTSET, "k", string(struct.pack("<II", 2, 5) + b"\x01\x00")), "intset's header"),
        (key(rdb.LIST_QUICKLIST_2, "k", length(1) + length(3) + string("x")), "unknown container type 3"),
        (key(rdb.MODULE_2, "k", length(1) + length(9)), "unknown module value opcode 9"),
        (key(rdb.STRING, "k", b"\xc5"), "unknown string encoding 5"),
        (key(rdb.STRING, "k", b"\xc3" + length(0) + length(5)), "zero length"),
        (key(rdb.STREAM_LISTPACKS_3, "k", length(1) + string(b"short") + listpack(b"\x01")), "16-byte stream ID"),
        (key(rdb.SET, "k", b"\x82"), "invalid length byte 0x82"),
    ],
)
def test_corrupt_framing_is_named(item: bytes, expected: str) -> None:
    assert expected in fails(snapshot(item, checksum=False))


def test_a_database_holding_other_keys_than_it_announces_fails() -> None:
    message = fails(snapshot(key(rdb.STRING, "a", string("b")), announce=(2, 0), checksum=False))
    assert "announces 2 keys" in message


def test_a_newer_rdb_version_is_refused_with_a_reason() -> None:
    assert "RDB version 13" in fails(snapshot(version=13))
    assert "not 4 digits" in fails(b"REDIS00x1" + bytes(20))


def test_a_value_larger_than_any_feed_is_passed_without_being_kept() -> None:
    big = b"x" * (3 << 20)
    checker = RdbCheck()
    data = snapshot(key(rdb.STRING, "big", string(big)))
    peak = 0
    for start in range(0, len(data), 65536):
        checker.feed(data[start : start + 65536])
        peak = max(peak, len(checker._buffer))
    checker.finish()
    assert checker.summary.key_counts() == {"db0": 1}
    assert peak <= 65536 + 16


def test_a_wrong_checksum_fails_as_altered() -> None:
    data = bytearray(snapshot(key(rdb.STRING, "a", string("b"))))
    data[-1] ^= 1
    assert "was altered" in fails(bytes(data))
