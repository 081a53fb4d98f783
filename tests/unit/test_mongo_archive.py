"""The mongodump archive writer and parser, checked against a reader written here from the format notes.

The reader below follows shared/formats/mongodump-archive.md on its own: magic, header field order,
terminators, namespace blocks, and CRC-64/XZ computed bit by bit (no table, no library), so a bug
shared by the agent's writer and parser cannot hide.
"""

from __future__ import annotations

import os
import struct
import time
from typing import Any

import bson
import pytest
from bson.son import SON
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.engines.mongo.archive import (
    ArchiveCheck,
    ArchiveError,
    ArchiveHeader,
    ArchiveParser,
    ArchiveWriter,
    PreludeEntry,
    collection_metadata,
    crc64,
    parse_metadata,
)

# --------------------------------------------------------------------------------------------------
# An independent reader

TERM = b"\xff\xff\xff\xff"


def bitwise_crc64_xz(data: bytes) -> int:
    """CRC-64/XZ one bit at a time: reflected polynomial 0xC96C5795D7870F42, init and xorout all ones."""
    value = 0xFFFFFFFFFFFFFFFF
    for byte in data:
        value ^= byte
        for _ in range(8):
            value = (value >> 1) ^ 0xC96C5795D7870F42 if value & 1 else value >> 1
    return value ^ 0xFFFFFFFFFFFFFFFF


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def next_is_terminator(self) -> bool:
        return self.data[self.position : self.position + 4] == b"\xff\xff\xff\xff"

    def terminator(self) -> None:
        assert self.next_is_terminator(), f"expected a terminator at byte {self.position}"
        self.position += 4

    def document(self) -> tuple[bytes, list[tuple[str, Any]]]:
        (length,) = struct.unpack_from("<i", self.data, self.position)
        assert 5 <= length <= 16 * 1024 * 1024
        raw = self.data[self.position : self.position + length]
        assert len(raw) == length and raw[-1] == 0
        self.position += length
        return raw, list(bson.decode(raw, bson.CodecOptions(document_class=SON)).items())


def read_archive(data: bytes) -> dict[str, Any]:
    """Prelude entries, and per namespace: raw documents, the stored CRC (unsigned) and segment count."""
    reader = Reader(data)
    assert data[:4] == bytes.fromhex("6de29981")
    reader.position = 4
    _, header = reader.document()
    assert [key for key, _ in header] == ["concurrent_collections", "version", "server_version", "tool_version"]
    assert dict(header)["version"] == "0.1"
    prelude = []
    while not reader.next_is_terminator():
        _, entry = reader.document()
        assert [key for key, _ in entry] == ["db", "collection", "metadata", "size", "type"]
        prelude.append(dict(entry))
    reader.terminator()
    namespaces: dict[str, dict[str, Any]] = {}
    while reader.position < len(data):
        _, fields = reader.document()
        assert [key for key, _ in fields] == ["db", "collection", "EOF", "CRC"]
        values = dict(fields)
        namespace = namespaces.setdefault(
            f"{values['db']}.{values['collection']}", {"documents": [], "crc": None, "segments": 0}
        )
        assert namespace["crc"] is None, "a namespace header after the end block"
        if values["EOF"]:
            namespace["crc"] = values["CRC"] % 2**64
            namespace["stored_crc"] = values["CRC"]
            reader.terminator()
            continue
        assert values["CRC"] == 0
        namespace["segments"] += 1
        while not reader.next_is_terminator():
            raw, _ = reader.document()
            namespace["documents"].append(raw)
        reader.terminator()
    assert reader.position == len(data)
    return {"header": dict(header), "prelude": prelude, "namespaces": namespaces}


# --------------------------------------------------------------------------------------------------
# Sample archives


def documents(count: int, tag: str = "", size: int = 0) -> bytes:
    return b"".join(bson.encode({"_id": index, "tag": tag, "pad": "x" * size}) for index in range(count))


def sample_archive(chunks: list[bytes] | None = None) -> bytes:
    out = chunks if chunks is not None else []
    writer = ArchiveWriter(out.append, flush_size=4096)
    writer.begin(
        ArchiveHeader(server_version="8.2.11", tool_version="test"),
        [
            PreludeEntry("shop", "orders", collection_metadata("orders", options={}, indexes=[])),
            PreludeEntry("shop", "empty", collection_metadata("empty", options={}, indexes=[])),
            PreludeEntry("shop", "recent", "", "view"),
            PreludeEntry("shop", "odd name.with dots", ""),
        ],
    )
    writer.write("shop", "orders", documents(30, "a"))
    writer.write("shop", "odd name.with dots", documents(2, "b"))
    writer.write("shop", "orders", documents(20, "c", size=600))
    writer.end("shop", "recent")
    writer.end("shop", "empty")
    writer.end("shop", "orders")
    writer.end("shop", "odd name.with dots")
    writer.close()
    return b"".join(out)


# --------------------------------------------------------------------------------------------------
# CRC


def test_crc64_gives_the_catalogue_check_value() -> None:
    assert bitwise_crc64_xz(b"123456789") == 0x995DC9BBDF1939FA
    assert crc64(b"123456789") == 0x995DC9BBDF1939FA
    assert crc64(b"") == 0


@given(st.binary(max_size=300), st.integers(min_value=0, max_value=300))
def test_crc64_continues_across_any_split(data: bytes, cut: int) -> None:
    cut = min(cut, len(data))
    expected = bitwise_crc64_xz(data)
    assert crc64(data[cut:], crc64(data[:cut])) == expected
    assert crc64(memoryview(data)) == expected


def test_crc64_is_fast() -> None:
    """200k documents must not take minutes: the CRC must be far faster than a pure-Python loop."""
    data = os.urandom(64 << 20)
    started = time.perf_counter()
    crc64(data)
    elapsed = time.perf_counter() - started
    print(f"\nCRC-64/XZ (fastcrc): {len(data) / elapsed / 1e6:.0f} MB/s")
    assert elapsed < 1.0


# --------------------------------------------------------------------------------------------------
# The writer, read back independently


def test_the_writer_output_follows_the_format_notes() -> None:
    archive = read_archive(sample_archive())
    assert archive["header"] == {
        "concurrent_collections": 1,
        "version": "0.1",
        "server_version": "8.2.11",
        "tool_version": "test",
    }
    assert [entry["collection"] for entry in archive["prelude"]] == ["orders", "empty", "recent", "odd name.with dots"]
    assert all(entry["size"] == 0 and entry["db"] == "shop" for entry in archive["prelude"])
    assert archive["prelude"][2]["type"] == "view" and archive["prelude"][0]["type"] == "collection"
    namespaces = archive["namespaces"]
    assert set(namespaces) == {"shop.orders", "shop.empty", "shop.recent", "shop.odd name.with dots"}
    orders = namespaces["shop.orders"]
    assert b"".join(orders["documents"]) == documents(30, "a") + documents(20, "c", size=600)
    assert orders["segments"] == 2  # interleaved with the odd-named collection, as mongodump does
    for namespace in namespaces.values():
        assert namespace["crc"] == bitwise_crc64_xz(b"".join(namespace["documents"]))
    assert namespaces["shop.empty"] == {"documents": [], "crc": 0, "stored_crc": 0, "segments": 0}


def test_a_crc_of_2_to_the_63_or_more_is_stored_as_a_negative_int64() -> None:
    payload = next(
        documents(1, tag=str(attempt)) for attempt in range(1000) if crc64(documents(1, tag=str(attempt))) >= 2**63
    )
    chunks: list[bytes] = []
    writer = ArchiveWriter(chunks.append)
    writer.begin(ArchiveHeader("8.0.0", "test"), [PreludeEntry("d", "c", "")])
    writer.write("d", "c", payload)
    writer.end("d", "c")
    writer.close()
    namespace = read_archive(b"".join(chunks))["namespaces"]["d.c"]
    assert namespace["stored_crc"] < 0
    assert namespace["crc"] == bitwise_crc64_xz(payload)


def test_the_writer_is_byte_for_byte_stable() -> None:
    assert sample_archive() == sample_archive()


def test_the_metadata_json_is_mongodumps_compact_canonical_form() -> None:
    text = collection_metadata(
        "capped",
        options=SON([("capped", True), ("size", 1048576), ("max", 100)]),
        indexes=[SON([("v", 2), ("key", SON([("_id", 1)])), ("name", "_id_")])],
        uuid=bytes.fromhex("bf3c0f390ff84e4d87a198bd60f5fcab"),
    )
    assert text == (
        '{"options":{"capped":true,"size":{"$numberInt":"1048576"},"max":{"$numberInt":"100"}},'
        '"indexes":[{"v":{"$numberInt":"2"},"key":{"_id":{"$numberInt":"1"}},"name":"_id_"}],'
        '"uuid":"bf3c0f390ff84e4d87a198bd60f5fcab","collectionName":"capped","type":"collection"}'
    )
    assert parse_metadata(text)["options"] == {"capped": True, "size": 1048576, "max": 100}
    assert parse_metadata('{"indexes":[{"v":2}]}')["indexes"] == [{"v": 2}]  # relaxed numbers too


def test_the_writer_refuses_a_partial_document_and_an_unended_namespace() -> None:
    writer = ArchiveWriter(lambda _data: None)
    writer.begin(ArchiveHeader("8.0.0", "test"), [PreludeEntry("d", "c", "")])
    with pytest.raises(ArchiveError, match="bad document length"):
        writer.write("d", "c", documents(2)[:-3])
    with pytest.raises(ArchiveError, match="never ended"):
        writer.close()


# --------------------------------------------------------------------------------------------------
# The parser


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=997), min_size=1, max_size=40))
def test_the_parser_reads_an_archive_fed_in_any_chunk_sizes(sizes: list[int]) -> None:
    data = sample_archive()
    parser = ArchiveParser()
    position = 0
    index = 0
    while position < len(data):
        size = sizes[index % len(sizes)]
        parser.feed(data[position : position + size])
        position += size
        index += 1
    summary = parser.finish()
    assert summary.counts() == {
        ("shop", "orders"): 50,
        ("shop", "empty"): 0,
        ("shop", "recent"): 0,
        ("shop", "odd name.with dots"): 2,
    }
    assert summary.namespaces[("shop", "orders")].crc == bitwise_crc64_xz(
        documents(30, "a") + documents(20, "c", size=600)
    )


def test_every_truncation_of_an_archive_is_caught() -> None:
    data = sample_archive()
    for cut in range(len(data)):
        parser = ArchiveParser()
        with pytest.raises(ArchiveError, match=r"truncated|empty|before all collections"):
            parser.feed(data[:cut])
            parser.finish()


def test_the_stream_check_passes_a_whole_archive_and_fails_a_truncated_one() -> None:
    data = sample_archive()
    check = ArchiveCheck()
    check.feed(data)
    check.finish()
    check = ArchiveCheck()
    check.feed(data[: len(data) - 4])
    with pytest.raises(ArchiveError, match="truncated"):
        check.finish()


def test_a_changed_document_byte_is_a_crc_mismatch() -> None:
    data = bytearray(sample_archive())
    target = bson.encode({"_id": 7, "tag": "a", "pad": ""})
    position = data.index(target) + len(target) - 3  # inside the value of "tag"
    data[position] ^= 0x01
    parser = ArchiveParser()
    with pytest.raises(ArchiveError, match=r"CRC mismatch for namespace shop\.orders"):
        parser.feed(bytes(data))


def _archive_with(body: bytes, entries: tuple[str, ...] = ("c",)) -> bytes:
    """A prelude made by hand for namespaces d.<entries>, then `body`."""
    header = SON(
        [("concurrent_collections", 1), ("version", "0.1"), ("server_version", "8.0.0"), ("tool_version", "test")]
    )
    prelude = b"".join(
        bson.encode(SON([("db", "d"), ("collection", name), ("metadata", ""), ("size", 0), ("type", "collection")]))
        for name in entries
    )
    return bytes.fromhex("6de29981") + bson.encode(header) + prelude + TERM + body


def _header(collection: str, *, eof: bool, crc: int = 0) -> bytes:
    return bson.encode(SON([("db", "d"), ("collection", collection), ("EOF", eof), ("CRC", bson.Int64(crc))]))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (TERM, "two terminators in a row"),
        (_header("c", eof=True) + TERM + _header("c", eof=True) + TERM, "already ended"),
        (_header("other", eof=True) + TERM, "not in the prelude"),
        (_header("c", eof=True) + documents(1) + TERM, "holds a document"),
        (_header("c", eof=False) + documents(1)[:-1] + b"\x01" + TERM, "does not end with a zero byte"),
        (_header("c", eof=False) + struct.pack("<i", 3) + TERM, "bad document length 3"),
        (bson.encode({"db": "d", "collection": "c", "EOF": True, "CRC": 0, "extra": 1}) + TERM, "bad namespace header"),
    ],
)
def test_the_parser_rejects_malformed_bodies(body: bytes, message: str) -> None:
    parser = ArchiveParser()
    with pytest.raises(ArchiveError, match=message):
        parser.feed(_archive_with(body))
        parser.finish()


def test_a_namespace_without_its_end_block_is_reported() -> None:
    parser = ArchiveParser()
    parser.feed(_archive_with(_header("c", eof=True) + TERM, entries=("c", "lost")))
    with pytest.raises(ArchiveError, match=r"finished before all collections were seen: no end block for d\.lost"):
        parser.finish()


def test_an_empty_segment_before_the_end_block_is_accepted() -> None:
    """mongodump writes `header + TERM` with no documents for a namespace that was not current."""
    parser = ArchiveParser()
    parser.feed(_archive_with(_header("c", eof=False) + TERM + _header("c", eof=True) + TERM))
    assert parser.finish().counts() == {("d", "c"): 0}


def test_a_bad_magic_number_is_not_an_archive() -> None:
    parser = ArchiveParser()
    with pytest.raises(ArchiveError, match="not a mongodump archive"):
        parser.feed(b"PK\x03\x04" + bytes(100))


def test_time_series_bucket_data_ends_its_prelude_entry() -> None:
    chunks: list[bytes] = []
    writer = ArchiveWriter(chunks.append)
    writer.begin(ArchiveHeader("7.0.0", "test"), [PreludeEntry("d", "weather", "", "timeseries")])
    writer.write("d", "system.buckets.weather", documents(4))
    writer.end("d", "system.buckets.weather")
    writer.close()
    parser = ArchiveParser()
    parser.feed(b"".join(chunks))
    assert parser.finish().counts() == {("d", "weather"): 4}


def test_parsing_200k_documents_takes_well_under_a_few_seconds() -> None:
    chunks: list[bytes] = []
    writer = ArchiveWriter(chunks.append)
    writer.begin(ArchiveHeader("8.0.0", "test"), [PreludeEntry("d", "c", "")])
    batch = documents(10_000, size=60)
    started = time.perf_counter()
    for _ in range(20):
        writer.write("d", "c", batch)
    writer.end("d", "c")
    writer.close()
    written = time.perf_counter() - started
    data = b"".join(chunks)
    started = time.perf_counter()
    parser = ArchiveParser()
    for position in range(0, len(data), 1 << 20):
        parser.feed(data[position : position + (1 << 20)])
    assert parser.finish().counts() == {("d", "c"): 200_000}
    parsed = time.perf_counter() - started
    print(f"\n200k documents, {len(data) / 1e6:.0f} MB: written in {written:.2f}s, parsed in {parsed:.2f}s")
    assert written + parsed < 10
