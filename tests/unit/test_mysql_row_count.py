"""Rows per table counted from mysqldump-style INSERT lines, however the stream is split."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.engines.mysql.row_count import InsertRowCounter, SqlDumpCheck

_ESCAPES = {0: b"\\0", 10: b"\\n", 13: b"\\r", 26: b"\\Z", 34: b'\\"', 39: b"\\'", 92: b"\\\\"}
# strings that look like the syntax the counter must not be fooled by
_TRICKY = st.sampled_from(["),(", "');", "\\", "'", "\\'", "(", "\n", "INSERT INTO `t` VALUES (", "''", ";\n("])


def _literal(value: object) -> bytes:
    """A value as mysqldump writes it (mysql_real_escape_string; --hex-blob for bytes)."""
    if value is None:
        return b"NULL"
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, bytes):
        return b"0x" + value.hex().upper().encode() if value else b"''"
    assert isinstance(value, str)
    return b"'" + b"".join(_ESCAPES.get(byte, bytes([byte])) for byte in value.encode()) + b"'"


_VALUE = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.text(max_size=30),
    st.lists(_TRICKY, max_size=4).map("".join),
    st.binary(max_size=20),
)
_ROWS = st.lists(st.lists(_VALUE, min_size=1, max_size=4).map(tuple), max_size=30)
_TABLE_NAMES = st.sampled_from(["t", "order", "we`ird name", "ünï", "a),(b"])


def _dump(tables: dict[str, list[tuple[object, ...]]], per_statement: int, separator: bytes = b", ") -> bytes:
    """Extended inserts on one line (separator ", ": MySQL) or a row per line (",\\n": MariaDB 10.11)."""
    lines = [b"-- MariaDB dump 10.19", b"/*!40101 SET NAMES utf8mb4 */;"]
    for name, rows in tables.items():
        quoted = b"`" + name.replace("`", "``").encode() + b"`"
        lines += [b"--", b"-- Dumping data for table " + quoted, b"--", b"", b"LOCK TABLES " + quoted + b" WRITE;"]
        for start in range(0, len(rows), per_statement):
            tuples = separator.join(
                b"(" + b",".join(map(_literal, row)) + b")" for row in rows[start : start + per_statement]
            )
            lines.append(b"INSERT INTO " + quoted + b" VALUES" + separator[1:] + tuples + b";")
        lines += [b"UNLOCK TABLES;", b"DELIMITER ;;"]
        lines += [b"/*!50003 CREATE TRIGGER x AFTER INSERT ON " + quoted + b" FOR EACH ROW BEGIN", b"INSERT INTO "]
        lines += [quoted + b" VALUES (1),(2);", b"INSERT INTO " + quoted + b" VALUES (1),(2);", b"END */;;"]
        lines += [b"DELIMITER ;"]
    lines.append(b"-- Dump completed on 2026-12-03 13:00:00")
    return b"\n".join(lines) + b"\n"


def _count(data: bytes, cuts: list[int]) -> dict[str, int] | None:
    check = SqlDumpCheck(b"\n-- Dump completed", "the SQL dump")
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    for start, end in itertools.pairwise(points):
        check.feed(data[start:end])
    check.finish()
    return check.row_counts()


@settings(max_examples=300, deadline=None)
@given(
    tables=st.dictionaries(_TABLE_NAMES, _ROWS, max_size=4),
    per_statement=st.integers(1, 7),
    separator=st.sampled_from([b", ", b",\n"]),
    cuts=st.lists(st.integers(min_value=0), max_size=30),
)
def test_rows_per_table_equal_the_rows_written_however_the_stream_is_split(
    tables: dict[str, list[tuple[object, ...]]], per_statement: int, separator: bytes, cuts: list[int]
) -> None:
    data = _dump(tables, per_statement, separator)
    assert _count(data, cuts) == {name: len(rows) for name, rows in tables.items()}


def test_every_split_point_of_a_tricky_statement_gives_the_same_counts() -> None:
    rows = [(1, "a'),('b", None), (2, "\\", b"\x00'\\"), (3, "x\\\\'y\n", "),(")]
    data = _dump({"t": rows, "empty": []}, 2, b",\n")
    for first, second in itertools.combinations(range(len(data) + 1), 2):
        if second - first < 4:
            assert _count(data, [first, second]) == {"t": 3, "empty": 0}


def test_one_byte_feeds_give_the_same_counts() -> None:
    data = _dump({"t": [(n, "a\\'b),(" * n) for n in range(50)]}, 9)
    counter = InsertRowCounter()
    for index in range(len(data)):
        counter.feed(data[index : index + 1])
    counter.finish()
    assert counter.complete and counter.counts == {"t": 50}


def test_a_cut_inside_an_insert_is_not_a_whole_count() -> None:
    data = _dump({"t": [(1, "abc"), (2, "def")]}, 5)
    counter = InsertRowCounter()
    counter.feed(data[: data.index(b"'def")])
    counter.finish()
    assert not counter.complete
