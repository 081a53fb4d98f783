"""A small RESP2 client: the few commands a backup needs, and the replication stream of a snapshot.

The snapshot comes from the server's own replication protocol (`REPLCONF capa eof`,
`REPLCONF rdb-only 1`, `SYNC`), the same request `redis-cli --rdb` makes, read straight from the
socket into the agent's writer. Why not `redis-cli --rdb -` (docs/redis.md has the figures): as
fast (the server's fork is the limit either way), but redis-cli 7.0 leaves the 40-byte EOF marker
of a diskless transfer at the end of its stdout, ignores a refused REPLCONF, and reports failures
only as stderr text; here the password never leaves the process (no argv, no environment, no
askpass pipe) and every refusal is the server's own error reply.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from agent.errors import ConnectionFailed, DumpError
from agent.process import StreamLimits
from agent.secrets import Secret

CHUNK_SIZE = 1 << 20
_EOF_MARK_BYTES = 40
_POLL_SECONDS = 0.5  # how often a blocked read wakes to look at the watchdogs
_MAX_LINE = 64 << 10

Reply = str | int | bytes | None | list["Reply"]


class ReplyError(Exception):
    """The server answered a command with an error reply (`-ERR ...`, `-NOPERM ...`)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = message.split(" ", 1)[0]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the server listens and how to reach it; never holds the password."""

    host: str | None = None
    port: int = 6379
    socket: str | None = None
    tls: bool = False
    ssl_ca: str | None = None
    ssl_cert: str | None = None
    ssl_key: str | None = None
    server_name: str | None = None  # TLS name to verify; the host when unset

    def label(self) -> str:
        if self.socket:
            return f"{self.socket} (socket)"
        return f"{self.host or '127.0.0.1'}:{self.port}"


def encode_command(*arguments: str | bytes | int) -> bytes:
    parts = [b"*%d\r\n" % len(arguments)]
    for argument in arguments:
        data = argument if isinstance(argument, bytes) else str(argument).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class RedisConnection:
    """One authenticated connection. `call` for commands; `stream_snapshot` ends its use."""

    def __init__(self, sock: socket.socket, label: str) -> None:
        self._socket = sock
        self._buffer = bytearray()
        self.label = label

    # --- opening --------------------------------------------------------------------------------
    @classmethod
    def open(cls, endpoint: Endpoint, user: str | None, password: Secret | None, *, timeout: float) -> RedisConnection:
        """Connect, wrap in TLS when asked, and AUTH; ConnectionFailed names the endpoint, never the secret."""
        label = endpoint.label()
        try:
            sock = _connect(endpoint, timeout)
        except (OSError, ssl.SSLError) as error:
            raise ConnectionFailed(f"cannot connect to Redis at {label}: {_reason(error)}") from None
        connection = cls(sock, label)
        try:
            if password is not None:
                arguments = ("AUTH", user, password.reveal()) if user else ("AUTH", password.reveal())
                connection.call(*arguments)
            elif user:
                raise ConnectionFailed(
                    f"Redis user {user!r} at {label} needs a password (password_file or password_env)"
                )
            connection.call("PING")
        except ReplyError as error:
            connection.close()
            raise ConnectionFailed(f"Redis at {label} refused the login: {error}") from None
        except (OSError, DumpError) as error:
            connection.close()
            raise ConnectionFailed(f"cannot talk to Redis at {label}: {error}") from None
        except BaseException:
            connection.close()
            raise
        return connection

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._socket.close()

    def __enter__(self) -> RedisConnection:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- commands -------------------------------------------------------------------------------
    def call(self, *arguments: str | bytes | int) -> Reply:
        """Send one command and return its reply; an error reply raises ReplyError."""
        self._socket.sendall(encode_command(*arguments))
        reply = self._read_reply()
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    def text(self, *arguments: str | bytes | int) -> str:
        reply = self.call(*arguments)
        if isinstance(reply, bytes):
            return reply.decode("utf-8", "replace")
        return str(reply)

    def _read_reply(self) -> Reply | ReplyError:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind in (b"+", b"-"):
            text = rest.decode("utf-8", "replace")
            return text if kind == b"+" else ReplyError(text)
        if kind == b":":
            return int(rest)
        if kind not in (b"$", b"*"):
            raise DumpError(f"Redis at {self.label} sent a reply this agent cannot read: {bytes(line[:40])!r}")
        size = int(rest)
        if size < 0:
            return None
        if kind == b"$":
            return self._exactly(size + 2)[:-2]
        items: list[Reply] = []
        for _ in range(size):
            item = self._read_reply()
            items.append(str(item) if isinstance(item, ReplyError) else item)
        return items

    def _fill(self) -> None:
        data = self._socket.recv(CHUNK_SIZE)
        if not data:
            raise DumpError(f"Redis at {self.label} closed the connection", reason="connection_lost")
        self._buffer += data

    def _line(self) -> bytes:
        while True:
            end = self._buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 2]
                return line
            if len(self._buffer) > _MAX_LINE:
                raise DumpError(f"Redis at {self.label} sent an over-long reply line")
            self._fill()

    def _exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._fill()
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    # --- the snapshot ---------------------------------------------------------------------------
    def stream_snapshot(self, sink: Callable[[bytes], None], limits: StreamLimits) -> int:
        """Ask for an RDB snapshot over the replication protocol and stream it into `sink`.

        Returns the snapshot's size. Raises DumpError when the server refuses, stops or stalls;
        the caller's check then sees a stream that lacks its end (nothing is passed as complete).
        """
        self.call("REPLCONF", "capa", "eof")  # diskless transfers end with a marker instead of a length
        with contextlib.suppress(ReplyError):  # Redis < 7 streams commands after the snapshot: we hang up
            self.call("REPLCONF", "rdb-only", "1")
        self._socket.sendall(encode_command("SYNC"))
        watch = _Watch(limits, f"the snapshot from Redis at {self.label}")
        self._socket.settimeout(_POLL_SECONDS)
        header = self._snapshot_header(watch)
        if header.startswith(b"EOF:"):
            return self._until_marker(header[4:], sink, watch)
        try:
            size = int(header)
        except ValueError:
            raise DumpError(f"Redis at {self.label} began a snapshot with {header[:40]!r}") from None
        return self._exactly_into(size, sink, watch)

    def _snapshot_header(self, watch: _Watch) -> bytes:
        """Skip the newlines a server sends while its child prepares the snapshot; read `$<len>`/`$EOF:<mark>`."""
        while True:
            while self._buffer[:1] == b"\n":
                del self._buffer[:1]
                watch.saw_data()
            end = self._buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 2]
                if line.startswith(b"-"):
                    error = line[1:].decode("utf-8", "replace")
                    reason = "permission_denied" if error.startswith("NOPERM") else "refused"
                    raise DumpError(f"Redis at {self.label} refused the snapshot: {error}", reason=reason)
                if not line.startswith(b"$"):
                    raise DumpError(f"Redis at {self.label} answered SYNC with {line[:40]!r}")
                return line[1:]
            if len(self._buffer) > _MAX_LINE:
                raise DumpError(f"Redis at {self.label} answered SYNC with an over-long line")
            self._buffer += self._receive(watch)

    def _receive(self, watch: _Watch) -> bytes:
        while True:
            watch.check()
            try:
                data = self._socket.recv(CHUNK_SIZE)
            except TimeoutError:
                continue
            except OSError as error:
                raise DumpError(f"{watch.what} failed: {_reason(error)}", reason="connection_lost") from None
            if not data:
                raise DumpError(
                    f"{watch.what} ended early: the server closed the connection after {watch.bytes} bytes",
                    reason="connection_lost",
                )
            watch.saw_data(len(data))
            return data

    def _exactly_into(self, size: int, sink: Callable[[bytes], None], watch: _Watch) -> int:
        remaining = size
        if self._buffer:
            first = bytes(self._buffer[:remaining])
            del self._buffer[: len(first)]
            remaining -= len(first)
            sink(first)
        while remaining:
            data = self._receive(watch)
            if len(data) > remaining:
                data = data[:remaining]  # the replication stream that follows is not ours
            remaining -= len(data)
            sink(data)
        return size

    def _until_marker(self, mark: bytes, sink: Callable[[bytes], None], watch: _Watch) -> int:
        """A diskless transfer: the snapshot ends where the 40-byte random marker of its header recurs."""
        if len(mark) != _EOF_MARK_BYTES:
            raise DumpError(f"Redis at {self.label} sent an EOF marker of {len(mark)} bytes")
        pending = bytes(self._buffer)
        self._buffer.clear()
        total = 0
        while True:
            marker_at = pending.find(mark)
            if marker_at >= 0:
                sink(pending[:marker_at])  # (anything after the marker is the replication stream)
                return total + marker_at
            if len(pending) > _EOF_MARK_BYTES:
                passed = len(pending) - _EOF_MARK_BYTES + 1  # keep what may be the start of the marker
                sink(pending[:passed])
                total += passed
                pending = pending[passed:]
            pending += self._receive(watch)


class _Watch:
    """The stream's watchdogs on the monotonic clock: shutdown, overall timeout, stall."""

    def __init__(self, limits: StreamLimits, what: str) -> None:
        self.limits = limits
        self.what = what
        self.started = self.last_data = time.monotonic()
        self.bytes = 0

    def saw_data(self, size: int = 0) -> None:
        self.last_data = time.monotonic()
        self.bytes += size

    def check(self) -> None:
        limits = self.limits
        if limits.should_stop():
            raise DumpError(f"{self.what} was stopped: the agent is shutting down", reason="shutdown")
        now = time.monotonic()
        if limits.timeout is not None and now - self.started > limits.timeout:
            raise DumpError(f"{self.what} ran longer than its timeout of {limits.timeout:.0f}s", "timeout")
        if limits.stall_timeout is not None and now - self.last_data > limits.stall_timeout:
            raise DumpError(f"{self.what} sent nothing for {limits.stall_timeout:.0f}s (stall_timeout)", "stalled")


def _connect(endpoint: Endpoint, timeout: float) -> socket.socket:
    if endpoint.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(endpoint.socket)
        except OSError:
            sock.close()
            raise
    else:
        sock = socket.create_connection((endpoint.host or "127.0.0.1", endpoint.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if not endpoint.tls:
        return sock
    context = tls_context(endpoint)
    try:
        return context.wrap_socket(sock, server_hostname=endpoint.server_name or endpoint.host or "127.0.0.1")
    except BaseException:
        sock.close()
        raise


def tls_context(endpoint: Endpoint) -> ssl.SSLContext:
    """Verify the server against `ssl_ca` (or the system store); present a client certificate when given."""
    context = ssl.create_default_context(cafile=endpoint.ssl_ca)
    if endpoint.ssl_cert:
        context.load_cert_chain(endpoint.ssl_cert, endpoint.ssl_key)
    return context


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def read_config(connection: RedisConnection) -> dict[str, str]:
    """Every setting (`CONFIG GET *`) as text; raises ReplyError when the user may not read them."""
    reply = connection.call("CONFIG", "GET", "*")
    items = reply if isinstance(reply, list) else []
    values = [item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item) for item in items]
    return dict(zip(values[::2], values[1::2], strict=False))


def parse_info(text: str) -> dict[str, str]:
    """`INFO` text -> field: value (section headers and blank lines dropped)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition(":")
        fields[name.strip()] = value.strip()
    return fields


def parse_keyspace(fields: dict[str, str]) -> dict[str, tuple[int, int]]:
    """`db0:keys=3,expires=1,avg_ttl=0` fields -> {"db0": (keys, expires)}."""
    keyspace: dict[str, tuple[int, int]] = {}
    for name, value in fields.items():
        if not (name.startswith("db") and name[2:].isdigit()):
            continue
        parts = dict(item.partition("=")[::2] for item in value.split(","))
        with contextlib.suppress(ValueError):
            keyspace[name] = (int(parts.get("keys", "0")), int(parts.get("expires", "0")))
    return keyspace


@contextlib.contextmanager
def connected(
    endpoint: Endpoint, user: str | None, password: Secret | None, *, timeout: float
) -> Iterator[RedisConnection]:
    connection = RedisConnection.open(endpoint, user, password, timeout=timeout)
    try:
        yield connection
    finally:
        connection.close()
