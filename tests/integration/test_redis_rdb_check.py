"""The RDB check against real snapshots from a throwaway redis-server: every value type, cut and altered.

`redis-check-rdb` (the server's own checker) is the reference: it accepts what the check accepts
and rejects the truncated snapshots the check rejects.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers.common import require_binaries
from servers.redis import RedisServer, fill_every_type

from agent.engines.redis.rdb import RdbCheck, RdbSummary
from agent.errors import VerificationError

pytestmark = pytest.mark.redis

_PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@dataclass(frozen=True)
class Samples:
    every_type: bytes  # every type and encoding, big collections included
    every_type_lfu: bytes  # the same under an LFU policy: a FREQ opcode before every key
    every_type_lru: bytes  # ... and LRU: an IDLE opcode before every key
    uncompressed: bytes  # rdbcompression no: no LZF strings
    small: bytes  # one small key of each kind: cut and altered at every byte
    counts: dict[str, int]
    small_counts: dict[str, int]
    server_version: str


def _fill_small(server: RedisServer) -> dict[str, int]:
    client = server.client(0)
    client.set("int", 7)
    client.set("text", "value")
    client.set("lzf", "z" * 100)
    client.set("ttl", "t", px=3_600_000)
    client.rpush("list", "a", "b")
    client.sadd("ints", 1, 2, 3)
    client.sadd("names", "x", "y")
    client.zadd("zset", {"a": 1.5})
    client.hset("hash", mapping={"f": "v"})
    client.xadd("stream", {"k": "v"})
    client.xgroup_create("stream", "group", id="0")
    client.xreadgroup("group", "consumer", {"stream": ">"})
    client.execute_command("FUNCTION", "LOAD", "#!lua name=tiny\nredis.register_function('f', function() return 1 end)")
    server.client(2).set("other", "database")
    return {"db0": 10, "db2": 1}


@pytest.fixture(scope="module")
def samples(redis_server: RedisServer) -> Iterator[Samples]:
    redis_server.flush()
    client = redis_server.client()
    try:
        client.function_flush()
        small_counts = _fill_small(redis_server)
        small = redis_server.saved_rdb()
        redis_server.flush()
        client.function_flush()
        counts = fill_every_type(redis_server)
        every_type = redis_server.saved_rdb()
        client.config_set("maxmemory-policy", "allkeys-lfu")
        lfu = redis_server.saved_rdb()
        client.config_set("maxmemory-policy", "allkeys-lru")
        lru = redis_server.saved_rdb()
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("rdbcompression", "no")
        uncompressed = redis_server.saved_rdb()
        client.config_set("rdbcompression", "yes")
        version = str(client.info("server")["redis_version"])
        yield Samples(every_type, lfu, lru, uncompressed, small, counts, small_counts, version)
    finally:
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("rdbcompression", "yes")
        redis_server.flush()
        client.function_flush()


def checked(data: bytes, chunk_size: int = 1 << 20) -> RdbSummary:
    check = RdbCheck()
    for start in range(0, len(data), chunk_size):
        check.feed(data[start : start + chunk_size])
    check.finish()
    return check.summary


def rejects(data: bytes, chunk_size: int = 1 << 20) -> str:
    with pytest.raises(VerificationError) as failure:
        checked(data, chunk_size)
    return str(failure.value)


def without_checksum(data: bytes) -> bytes:
    """What a server with `rdbchecksum no` writes: the same bytes with a zero checksum."""
    return data[:-8] + bytes(8)


def test_a_real_snapshot_of_every_type_passes_with_its_keys_counted_per_database(samples: Samples) -> None:
    for data in (samples.every_type, samples.every_type_lfu, samples.every_type_lru, samples.uncompressed):
        summary = checked(data)
        assert summary.key_counts() == samples.counts
        assert summary.expire_counts() == {"db0": 2, "db3": 1, "db15": 0}
        assert summary.checksum == "verified"
        assert summary.version == 10
        assert summary.aux["redis-ver"] == samples.server_version
        assert summary.functions == 1


def test_the_lfu_and_lru_snapshots_really_carry_their_per_key_opcodes(samples: Samples) -> None:
    assert len(samples.every_type_lfu) > len(samples.every_type)  # one FREQ byte pair per key
    assert len(samples.every_type_lru) > len(samples.every_type)


def test_any_chunking_of_the_stream_gives_the_same_result(samples: Samples) -> None:
    expected = checked(samples.every_type).key_counts()
    for chunk_size in (1, 7, 4096, 65536 + 3):
        assert checked(samples.every_type, chunk_size).key_counts() == expected


@_PROPERTY
@given(cut=st.floats(min_value=0.0, max_value=1.0, exclude_max=True))
def test_a_snapshot_cut_anywhere_fails(samples: Samples, cut: float) -> None:
    data = samples.every_type
    rejects(data[: int(len(data) * cut)], chunk_size=65536)


def test_the_small_snapshot_cut_at_every_byte_fails_even_without_a_checksum(samples: Samples) -> None:
    for data in (samples.small, without_checksum(samples.small)):
        for cut in range(len(data)):
            rejects(data[:cut])


def test_a_cut_names_what_it_interrupted(samples: Samples) -> None:
    message = rejects(samples.every_type[: len(samples.every_type) // 2])
    assert "truncated" in message
    assert "database" in message


def test_every_single_byte_altered_in_the_small_snapshot_fails(samples: Samples) -> None:
    data = samples.small
    for position in range(len(data)):
        altered = bytearray(data)
        altered[position] ^= 0x20
        rejects(bytes(altered))


@_PROPERTY
@given(position=st.floats(min_value=0.0, max_value=1.0, exclude_max=True), mask=st.integers(1, 255))
def test_any_byte_altered_anywhere_fails(samples: Samples, position: float, mask: int) -> None:
    altered = bytearray(samples.every_type)
    altered[int(len(altered) * position)] ^= mask
    rejects(bytes(altered), chunk_size=65536)


def test_a_snapshot_saved_without_a_checksum_passes_and_says_so(samples: Samples) -> None:
    summary = checked(without_checksum(samples.small))
    assert summary.checksum == "disabled"
    assert summary.key_counts() == samples.small_counts


def test_bytes_after_the_end_of_the_snapshot_fail(samples: Samples) -> None:
    assert "follow the end" in rejects(samples.small + b"\n")
    assert "follow the end" in rejects(samples.small + samples.small)


def test_an_empty_stream_and_a_foreign_file_fail(samples: Samples) -> None:
    assert "empty" in rejects(b"")
    assert "REDIS signature" in rejects(b"PGDMP" + samples.small[5:])


@pytest.fixture(scope="module")
def reference_checker() -> str:
    return require_binaries(["redis-check-rdb"], hint="install redis-tools")["redis-check-rdb"]


def _reference_accepts(checker: str, data: bytes, folder: Path) -> bool:
    path = folder / "sample.rdb"
    path.write_bytes(data)
    result = subprocess.run([checker, str(path)], capture_output=True, text=True, timeout=60, check=False)
    return result.returncode == 0 and "RDB looks OK" in result.stdout


def test_redis_check_rdb_agrees_with_the_check(samples: Samples, reference_checker: str, tmp_path: Path) -> None:
    assert shutil.which(reference_checker)
    for data in (samples.every_type, samples.every_type_lfu, samples.uncompressed, samples.small):
        assert _reference_accepts(reference_checker, data, tmp_path)
    for fraction in (0.1, 0.5, 0.9, 0.999):
        cut = samples.every_type[: int(len(samples.every_type) * fraction)]
        assert not _reference_accepts(reference_checker, cut, tmp_path)
        rejects(cut)


def test_redis_cli_rdb_output_that_exits_0_with_its_end_marker_attached_is_caught(redis_server: RedisServer) -> None:
    """Why the agent reads the replication stream itself: redis-cli 7.0 `--rdb -` exits 0 but leaves
    the 40-byte end marker of a diskless transfer after the snapshot; the check refuses that."""
    cli = require_binaries(["redis-cli"], hint="install redis-tools")["redis-cli"]
    argv = [cli, "-h", redis_server.host, "-p", str(redis_server.port), "--user", redis_server.user, "--askpass"]
    redis_server.flush()
    redis_server.client().set("one", "key")
    try:
        done = subprocess.run(
            [*argv, "--rdb", "-"],
            input=(redis_server.password + "\n").encode(),
            capture_output=True,
            timeout=60,
            check=False,
        )
        wrong = subprocess.run(
            [*argv, "--rdb", "-"], input=b"wrong-password\n", capture_output=True, timeout=60, check=False
        )
    finally:
        redis_server.flush()
    assert done.returncode == 0
    summary_or_error: RdbSummary | str
    try:
        summary_or_error = checked(done.stdout)
    except VerificationError as error:
        summary_or_error = str(error)
    if done.stdout[-40:].isalnum():  # the marker: 40 hex digits (this redis-cli does not strip it)
        assert "40 bytes follow the end" in str(summary_or_error)
    else:
        assert isinstance(summary_or_error, RdbSummary)
    assert wrong.returncode != 0
    assert "empty" in rejects(wrong.stdout)
