"""The snapshot over the replication protocol against a throwaway redis-server: what arrives, and how it fails.

A snapshot that arrives whole passes the RDB check with the server's key counts; a wrong password,
a user without SYNC, a server that stops or stalls mid-transfer each end as a clear error and
leave a stream the check rejects.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
from servers.redis import RedisServer, fill_every_type

from agent.engines.redis.client import Endpoint, RedisConnection
from agent.engines.redis.rdb import RdbCheck
from agent.errors import ConnectionFailed, DumpError, VerificationError
from agent.process import StreamLimits
from agent.secrets import Secret

pytestmark = pytest.mark.redis


def endpoint(server: RedisServer, *, unix_socket: bool = False) -> Endpoint:
    if unix_socket:
        return Endpoint(socket=server.socket)
    return Endpoint(host=server.host, port=server.port)


class Received:
    """A sink that checks what it is fed and can act once a given number of bytes went by."""

    def __init__(self, after_bytes: int | None = None, action: object = None) -> None:
        self.check = RdbCheck()
        self.bytes = 0
        self._after = after_bytes
        self._action = action
        self.acted = False

    def __call__(self, data: bytes) -> None:
        self.check.feed(data)
        self.bytes += len(data)
        if self._after is not None and not self.acted and self.bytes >= self._after:
            self.acted = True
            assert callable(self._action)
            self._action()


def snapshot(server: RedisServer, sink: Received, *, limits: StreamLimits | None = None, **kw: bool) -> int:
    with RedisConnection.open(endpoint(server, **kw), server.user, Secret(server.password), timeout=10) as connection:
        return connection.stream_snapshot(sink, limits or StreamLimits(timeout=120, stall_timeout=30))


@pytest.fixture
def big_server(redis_empty: RedisServer) -> Iterator[RedisServer]:
    """About 40 MB of incompressible-as-stored values: a transfer that takes many reads."""
    client = redis_empty.client()
    client.config_set("rdbcompression", "no")
    client.execute_command("DEBUG", "POPULATE", 40_000, "big", 1000)
    try:
        yield redis_empty
    finally:
        redis_empty.start()
        redis_empty.client().config_set("rdbcompression", "yes")


def test_a_whole_snapshot_arrives_and_passes_with_the_servers_key_counts(redis_empty: RedisServer) -> None:
    counts = fill_every_type(redis_empty)
    for unix_socket in (False, True):
        sink = Received()
        size = snapshot(redis_empty, sink, unix_socket=unix_socket)
        sink.check.finish()
        assert size == sink.bytes > 100_000
        assert sink.check.summary.key_counts() == counts
        assert sink.check.summary.checksum == "verified"


def test_a_disk_based_transfer_with_a_length_header_arrives_too(redis_empty: RedisServer) -> None:
    counts = fill_every_type(redis_empty)
    client = redis_empty.client()
    client.config_set("repl-diskless-sync", "no")
    try:
        sink = Received()
        snapshot(redis_empty, sink)
    finally:
        client.config_set("repl-diskless-sync", "yes")
    sink.check.finish()
    assert sink.check.summary.key_counts() == counts


def test_a_value_of_many_megabytes_arrives_whole(redis_empty: RedisServer) -> None:
    value = os.urandom(24 << 20)
    redis_empty.client().set("blob", value)
    sink = Received()
    snapshot(redis_empty, sink)
    sink.check.finish()
    assert sink.bytes > len(value)
    assert sink.check.summary.key_counts() == {"db0": 1}


def test_a_wrong_password_is_a_connection_failure_that_never_shows_the_password(redis_empty: RedisServer) -> None:
    wrong = "not-the-" + redis_empty.password
    with pytest.raises(ConnectionFailed) as failure:
        RedisConnection.open(endpoint(redis_empty), redis_empty.user, Secret(wrong), timeout=5)
    assert "WRONGPASS" in str(failure.value)
    assert wrong not in str(failure.value)
    assert redis_empty.password not in str(failure.value)


def test_a_user_without_sync_is_refused_with_the_servers_reason(redis_empty: RedisServer) -> None:
    client = redis_empty.client()
    client.acl_setuser("reader", enabled=True, passwords=["+reader-pw"], commands=["-@all", "+ping", "+replconf"])
    try:
        with (
            RedisConnection.open(endpoint(redis_empty), "reader", Secret("reader-pw"), timeout=5) as connection,
            pytest.raises(DumpError) as failure,
        ):
            connection.stream_snapshot(Received(), StreamLimits(timeout=30))
    finally:
        client.acl_deluser("reader")
    assert failure.value.reason == "permission_denied"
    assert "NOPERM" in str(failure.value)


def test_a_server_killed_mid_transfer_fails_the_snapshot_and_its_check(big_server: RedisServer) -> None:
    stopper = threading.Thread(target=big_server.kill)  # the transfer goes on being read meanwhile
    sink = Received(after_bytes=1 << 20, action=stopper.start)
    with pytest.raises(DumpError) as failure:
        snapshot(big_server, sink)
    stopper.join()
    assert sink.acted
    assert failure.value.reason == "connection_lost"
    assert "ended early" in str(failure.value)
    with pytest.raises(VerificationError, match="truncated"):
        sink.check.finish()


def test_a_server_terminated_mid_transfer_either_finishes_it_or_fails_it_never_half(big_server: RedisServer) -> None:
    """SIGTERM is a graceful shutdown: Redis may let a replica's transfer end first. Either way
    nothing truncated passes: a lost connection fails, and so does the check of what came."""
    stopper = threading.Thread(target=big_server.stop)
    sink = Received(after_bytes=1 << 20, action=stopper.start)
    try:
        snapshot(big_server, sink)
    except DumpError as error:
        assert error.reason == "connection_lost"
        with pytest.raises(VerificationError, match="truncated"):
            sink.check.finish()
    else:
        sink.check.finish()
        assert sink.check.summary.key_counts() == {"db0": 40_000}
    finally:
        stopper.join()
    assert sink.acted
    assert not big_server.is_running()


def test_a_server_that_stalls_mid_transfer_hits_the_stall_timeout(big_server: RedisServer) -> None:
    pid = big_server.pid
    assert pid is not None

    def freeze() -> None:
        os.kill(pid, signal.SIGSTOP)
        threading.Timer(8, os.kill, (pid, signal.SIGCONT)).start()

    sink = Received(after_bytes=1 << 20, action=freeze)
    started = time.monotonic()
    with pytest.raises(DumpError) as failure:
        snapshot(big_server, sink, limits=StreamLimits(timeout=120, stall_timeout=2))
    assert failure.value.reason == "stalled"
    assert time.monotonic() - started < 7
    time.sleep(max(0.0, 8.5 - (time.monotonic() - started)))  # the server runs again before the next test


def test_a_shutdown_request_stops_the_transfer(big_server: RedisServer) -> None:
    stopping = threading.Event()
    sink = Received(after_bytes=1 << 20, action=stopping.set)
    with pytest.raises(DumpError) as failure:
        snapshot(big_server, sink, limits=StreamLimits(timeout=120, should_stop=stopping.is_set))
    assert failure.value.reason == "shutdown"
