"""The in-process custom-format check, against real pg_dump archives cut and split every which way."""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql
from servers.postgres import PostgresServer

from agent.engines.postgres.archive import CustomArchiveCheck, UnsupportedArchiveError
from agent.engines.postgres.engine import CUSTOM_FORMAT, PgRestoreCheck, PostgresEngine
from agent.errors import VerificationError

pytestmark = pytest.mark.postgres

# Every kind of block and every row shape the end-marker search must get right: COPY lines whose
# length prefix has zero bytes (256, 65536, 131072 and 16 MiB long, first in their table), control
# characters, NULs in bytea and large objects, an empty table, a sequence, a materialized view.
SCHEMA = r"""
CREATE TABLE numbers (id bigint PRIMARY KEY, amount numeric(12,2), at timestamptz, ratio double precision);
INSERT INTO numbers SELECT i, i * 1.25, '2024-01-01 00:00:00+00'::timestamptz + i * interval '1 minute', i / 7.0
  FROM generate_series(1, 4000) AS i;
CREATE TABLE texts (id int PRIMARY KEY, body text, doc jsonb, raw bytea);
INSERT INTO texts VALUES
  (1, E'tab\there, newline\nthere, backslash \\ and \x01\x02 control', '{"a": [1, 2, {"b": null}]}',
   '\x00ff0000000000ff'::bytea),
  (2, NULL, NULL, NULL),
  (3, repeat('zero-free text ', 500), '{"k": "v"}', decode(repeat('00', 3000), 'hex'));
CREATE TABLE wide (id int, body text);
INSERT INTO wide VALUES (1, repeat('x', 65533));
CREATE TABLE wider (id int, body text);
INSERT INTO wider VALUES (1, repeat('y', 131069)), (2, repeat('z', 253));
CREATE TABLE huge_row (id int, body text);
INSERT INTO huge_row VALUES (1, repeat('q', 16777213));
CREATE TABLE short_first (id int, body text);
INSERT INTO short_first VALUES (1, repeat('s', 253)), (2, 'after');
CREATE TABLE empty_table (id int);
CREATE SEQUENCE counter; SELECT setval('counter', 42);
CREATE MATERIALIZED VIEW totals AS SELECT count(*) AS n FROM numbers;
SELECT lo_from_bytea(0, decode(repeat('00ff00', 20000), 'hex'));
SELECT lo_from_bytea(0, '\x00'::bytea);
CREATE SCHEMA "odd schema";
CREATE TABLE "odd schema"."ten bytes" (id int, body text);
INSERT INTO "odd schema"."ten bytes" SELECT i, lpad(i::text, 7, 'x') FROM generate_series(1, 9) AS i;
CREATE TABLE prefix_newlines (id int, body text);
INSERT INTO prefix_newlines SELECT i, repeat('n', 2566 + i) FROM generate_series(0, 300) AS i;
INSERT INTO prefix_newlines SELECT i, repeat('m', 65536 * 10 + 8) FROM generate_series(1, 2) AS i;
CREATE TABLE empty_strings (body text);
INSERT INTO empty_strings SELECT '' FROM generate_series(1, 25);
INSERT INTO empty_strings VALUES (E'\n'), (E'\n\n\r'), (E'\\'), (NULL);
CREATE TABLE parent (id int, at date) PARTITION BY RANGE (at);
CREATE TABLE parent_2024 PARTITION OF parent FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE parent_2025 PARTITION OF parent FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
INSERT INTO parent SELECT i, '2024-06-01'::date + i FROM generate_series(1, 400) AS i;
"""


@dataclass(frozen=True)
class Archives:
    uncompressed: bytes  # pg_dump -Fc -Z0 to a pipe: what the agent stores
    compressed: bytes  # pg_dump -Fc (zlib) to a pipe: walked chunk by chunk
    seekable: bytes  # written to a file: offsets set in the TOC
    data_entries: int  # TABLE DATA and BLOBS lines in `pg_restore --list`
    pg_restore: str
    counts: dict[str, int]  # count(*) of every table, as the engine's drill counts them


def _pg_dump(server: PostgresServer, env: dict[str, str], database: str, *options: str) -> bytes:
    argv = [
        str(Path(server.bin_dir) / "pg_dump"),
        f"--host={server.host}",
        f"--port={server.port}",
        f"--username={server.user}",
        "--no-password",
        "--format=custom",
        *options,
        database,
    ]
    return subprocess.run(argv, env=env, capture_output=True, check=True).stdout


@pytest.fixture(scope="module")
def archives(pg_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archives]:
    folder = tmp_path_factory.mktemp("pg_archive")
    passfile = folder / "pgpass"
    passfile.touch(mode=0o600)
    passfile.write_text(f"*:*:*:{pg_server.user}:{pg_server.password}\n")
    env = {**os.environ, "PGPASSFILE": str(passfile)}
    database = "t_pg_archive_check"
    with pg_server.connect() as connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(database)))
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    try:
        pg_server.psql(database, SCHEMA)
        seekable_path = folder / "seekable.pgdump"
        _pg_dump(pg_server, env, database, "--compress=0", f"--file={seekable_path}")
        pg_restore = str(Path(pg_server.bin_dir) / "pg_restore")
        uncompressed = _pg_dump(pg_server, env, database, "--compress=0")
        listing = subprocess.run([pg_restore, "--list"], input=uncompressed, capture_output=True, check=True)
        data_entries = sum(
            1
            for line in listing.stdout.decode().splitlines()
            if not line.startswith(";") and (" TABLE DATA " in line or " BLOBS " in line)
        )
        yield Archives(
            uncompressed=uncompressed,
            compressed=_pg_dump(pg_server, env, database),
            seekable=seekable_path.read_bytes(),
            data_entries=data_entries,
            pg_restore=pg_restore,
            counts=_server_counts(pg_server, database),
        )
    finally:
        with pg_server.connect() as connection:
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))


def _server_counts(server: PostgresServer, database: str) -> dict[str, int]:
    """count(*) of every ordinary table (partitions, not their parents), keyed "schema.table"."""
    counts: dict[str, int] = {}
    with server.connect(database) as connection:
        tables = connection.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg\\_%'"
        ).fetchall()
        for schema, table in tables:
            query = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
            row = connection.execute(query).fetchone()
            counts[f"{schema}.{table}"] = int(row[0]) if row else 0
    return counts


def _check(data: bytes, cuts: list[int] | None = None) -> CustomArchiveCheck:
    """Feed `data` split at `cuts` (or in 64 KiB pieces), finish, and return the check."""
    check = CustomArchiveCheck()
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts or range(0, len(data), 65536))})
    for start, end in itertools.pairwise(points):
        check.feed(data[start:end])
    check.finish()
    return check


KINDS = ("uncompressed", "compressed", "seekable")
_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_every_kind_of_real_archive_passes_and_every_data_entry_has_its_block(archives: Archives) -> None:
    assert archives.data_entries >= 7  # six tables with rows or none, plus the large objects
    for kind in KINDS:
        check = _check(getattr(archives, kind))
        assert len(check.block_ends) == archives.data_entries, kind
        assert check.block_ends[-1] == len(getattr(archives, kind)), kind
    assert _check(archives.compressed).header.compressed  # type: ignore[union-attr]
    assert not _check(archives.uncompressed).header.compressed  # type: ignore[union-attr]


@_SETTINGS
@given(kind=st.sampled_from(KINDS), cuts=st.lists(st.integers(min_value=0), max_size=40))
def test_a_complete_archive_passes_however_the_stream_is_split(archives: Archives, kind: str, cuts: list[int]) -> None:
    check = _check(getattr(archives, kind), cuts)
    assert len(check.block_ends) == archives.data_entries


@_SETTINGS
@given(
    kind=st.sampled_from(KINDS),
    fraction=st.floats(min_value=0, max_value=1, exclude_max=True),
    cuts=st.lists(st.integers(min_value=0), max_size=8),
)
def test_an_archive_cut_at_any_offset_fails(archives: Archives, kind: str, fraction: float, cuts: list[int]) -> None:
    data = getattr(archives, kind)
    truncated = data[: int(len(data) * fraction)]
    with pytest.raises(VerificationError):
        _check(truncated, cuts)


def test_an_archive_cut_exactly_between_two_blocks_names_the_missing_data(archives: Archives) -> None:
    for kind in KINDS:
        data = getattr(archives, kind)
        ends = _check(data).block_ends
        for end in ends[:-1]:
            with pytest.raises(VerificationError, match="no data for"):
                _check(data[:end])
        with pytest.raises(VerificationError, match="truncated inside the data"):
            _check(data[: ends[0] - 1])  # the first block without the last byte of its end marker


def test_an_end_marker_split_across_feeds_is_still_found(archives: Archives) -> None:
    for kind in ("uncompressed", "compressed"):
        data = getattr(archives, kind)
        for end in _check(data).block_ends:
            for offset in range(end - 6, end):
                assert len(_check(data, [offset]).block_ends) == archives.data_entries
                assert len(_check(data, [offset, offset + 1, offset + 2]).block_ends) == archives.data_entries


def test_an_archive_cut_inside_a_long_row_or_a_large_object_fails(archives: Archives) -> None:
    data = archives.uncompressed
    for marker in (b"x" * 1000, b"\x00\xff\x00" * 100):
        inside = data.index(marker) + 10
        with pytest.raises(VerificationError, match="truncated inside the data"):
            _check(data[:inside])


def test_a_foreign_file_appended_bytes_and_a_repeated_block_are_corrupt(archives: Archives) -> None:
    data = archives.uncompressed
    with pytest.raises(VerificationError, match="PGDMP"):
        _check(b"-- PostgreSQL database dump\n" + data)
    with pytest.raises(VerificationError):
        _check(data + b"\x01")
    ends = _check(data).block_ends
    last_block = data[ends[-2] : ends[-1]]
    with pytest.raises(VerificationError, match="two data blocks"):
        _check(data + last_block)
    with pytest.raises(VerificationError, match="empty"):
        _check(b"")


def _with_minor_version(data: bytes, minor: int) -> bytes:
    return data[:6] + bytes([minor]) + data[7:]


def test_a_newer_format_version_is_refused_or_handed_to_pg_restore(archives: Archives) -> None:
    newer = _with_minor_version(archives.uncompressed, 99)
    with pytest.raises(UnsupportedArchiveError):
        _check(newer)
    check = CustomArchiveCheck(fallback=lambda: PgRestoreCheck(archives.pg_restore))
    check.feed(newer)
    with pytest.raises(VerificationError, match="pg_restore could not read the archive"):
        check.finish()


def test_the_engine_checks_its_archives_in_process_and_still_catches_truncation(archives: Archives) -> None:
    check = PostgresEngine.new_check(CUSTOM_FORMAT, archives.pg_restore)
    assert isinstance(check, CustomArchiveCheck)
    check.feed(archives.uncompressed[:-1])
    with pytest.raises(VerificationError):
        check.finish()


@_SETTINGS
@given(kind=st.sampled_from(("uncompressed", "seekable")), cuts=st.lists(st.integers(min_value=0), max_size=60))
def test_row_counts_from_the_copy_data_equal_count_star_however_the_stream_is_split(
    archives: Archives, kind: str, cuts: list[int]
) -> None:
    """Rows whose length prefix holds 0x0A bytes (10, 2560-2815, 655368 bytes), empty and escaped lines."""
    assert archives.counts["odd schema.ten bytes"] == 9
    assert archives.counts["public.empty_strings"] == 29
    got = _check(getattr(archives, kind), cuts).row_counts()
    assert got is not None
    assert {k: (v, got.get(k)) for k, v in archives.counts.items() if got.get(k) != v} == {}
    assert got == archives.counts


def test_row_counts_split_at_every_offset_of_short_rows(archives: Archives) -> None:
    data = archives.uncompressed
    start = data.index(b"1\txxxxxx1\n") - 5  # the first 10-byte row of "odd schema"."ten bytes"
    for offset in range(start - 8, start + 120):
        assert _check(data, [offset, offset + 3]).row_counts() == archives.counts


def test_compressed_table_data_is_not_counted(archives: Archives) -> None:
    assert _check(archives.compressed).row_counts() is None


def test_pagila_row_counts_from_its_archive_equal_count_star(pg_server: PostgresServer, pg_database: str) -> None:
    from servers.fixtures_data import load_pagila

    load_pagila(pg_server, pg_database)
    env = {**os.environ, "PGPASSWORD": pg_server.password}
    data = _pg_dump(pg_server, env, pg_database, "--compress=0")
    expected = _server_counts(pg_server, pg_database)
    assert expected["public.rental"] == 16044
    assert _check(data).row_counts() == expected
    assert _check(data, list(range(0, len(data), 4093))).row_counts() == expected
