"""Impostor database servers: a process of another user that took a server's port or socket.

Each speaks just enough of the real protocol to ask for the password in clear text (MySQL: a
handshake, then an auth switch to `mysql_clear_password`; PostgreSQL: AuthenticationCleartextPassword)
and records every byte a client sends, so a test can tell whether the password ever reached it.
It runs as ``nobody`` through setpriv (a test must run as root to start one), from the source
below passed with ``-c``, so the account needs no access to the checkout.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from servers.common import free_port, make_base_dir, skip_or_fail

IMPOSTOR_USER = "nobody"
IMPOSTOR_GROUP = "nogroup"

_SOURCE = r"""
import socket, struct, sys

protocol, where, record_path = sys.argv[1], sys.argv[2], sys.argv[3]
record = open(record_path, "ab", buffering=0)


def receive(connection, count):
    data = b""
    while len(data) < count:
        chunk = connection.recv(count - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    record.write(data)
    return data


def mysql_packet(sequence, payload):
    return struct.pack("<I", len(payload))[:3] + bytes([sequence]) + payload


def mysql_read(connection):
    head = receive(connection, 4)
    return head[3], receive(connection, int.from_bytes(head[:3], "little"))


def mysql(connection):
    capabilities = 1 | 8 | 0x200 | 0x2000 | 0x8000 | 0x80000 | 0x200000
    salt = b"abcdefghijklmnopqrst"
    handshake = b"\x0a5.5.5-10.11.19-MariaDB\x00" + struct.pack("<I", 7) + salt[:8] + b"\x00"
    handshake += struct.pack("<H", capabilities & 0xFFFF) + b"\x21" + struct.pack("<H", 2)
    handshake += struct.pack("<H", capabilities >> 16) + bytes([21]) + b"\x00" * 10 + salt[8:] + b"\x00"
    handshake += b"mysql_native_password\x00"
    connection.sendall(mysql_packet(0, handshake))
    sequence, _ = mysql_read(connection)
    connection.sendall(mysql_packet(sequence + 1, b"\xfemysql_clear_password\x00"))
    sequence, _ = mysql_read(connection)
    connection.sendall(mysql_packet(sequence + 1, b"\xff" + struct.pack("<H", 1045) + b"#28000Access denied"))


def postgres(connection):
    while True:
        length = struct.unpack("!I", receive(connection, 4))[0]
        body = receive(connection, length - 4)
        code = struct.unpack("!I", body[:4])[0]
        if code in (80877103, 80877104):  # SSLRequest, GSSENCRequest: not here
            connection.sendall(b"N")
            continue
        break
    connection.sendall(b"R" + struct.pack("!II", 8, 3))  # AuthenticationCleartextPassword
    kind = receive(connection, 1)
    length = struct.unpack("!I", receive(connection, 4))[0]
    receive(connection, length - 4)
    fields = b"SFATAL\x00C28P01\x00Mpassword authentication failed\x00\x00"
    connection.sendall(b"E" + struct.pack("!I", len(fields) + 4) + fields)


if where.startswith("/"):
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(where)
else:
    listener = socket.socket(socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(where)))
listener.listen(16)
while True:
    connection, _ = listener.accept()
    record.write(b"\n--- connection ---\n")
    try:
        {"mysql": mysql, "postgres": postgres}[protocol](connection)
    except (EOFError, OSError):
        pass
    finally:
        connection.close()
"""


@dataclass
class Impostor:
    """A running impostor; `received()` is every byte clients sent it, `connections()` how many came."""

    process: subprocess.Popen[bytes]
    record: Path
    socket: str | None
    port: int | None

    def received(self) -> bytes:
        return self.record.read_bytes() if self.record.exists() else b""

    def connections(self) -> int:
        return self.received().count(b"\n--- connection ---\n")


def _python() -> str:
    """The interpreter itself, not the checkout's venv link (the impostor's account may not reach it)."""
    return os.path.realpath(sys.executable)


@contextlib.contextmanager
def impostor(protocol: str, *, socket_path: Path | None = None) -> Iterator[Impostor]:
    """Start an impostor as `nobody` on a free loopback port, or on `socket_path` (its folder must let nobody in)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        skip_or_fail("an impostor server runs as another user: needs root and setpriv (util-linux)")
    base = make_base_dir("impostor-", IMPOSTOR_USER)
    record = base / "received"
    port = None if socket_path is not None else free_port()
    where = str(socket_path) if socket_path is not None else str(port)
    argv = [
        "setpriv",
        f"--reuid={IMPOSTOR_USER}",
        f"--regid={IMPOSTOR_GROUP}",
        "--clear-groups",
        _python(),
        "-I",
        "-c",
        _SOURCE,
        protocol,
        where,
        str(record),
    ]
    process = subprocess.Popen(
        argv, cwd=base, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _wait_listening(process, socket_path, port)
        yield Impostor(process, record, str(socket_path) if socket_path else None, port)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                socket_path.unlink()
        shutil.rmtree(base, ignore_errors=True)


def _wait_listening(process: subprocess.Popen[bytes], socket_path: Path | None, port: int | None) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise RuntimeError(f"the impostor exited with {process.returncode}: {stderr[-2000:]}")
        if socket_path is not None and socket_path.exists():
            return
        if port is not None and f":{port:04X} " in _listening_table():
            return
        time.sleep(0.05)
    raise RuntimeError("the impostor did not start listening within 15 s")


def _listening_table() -> str:
    return Path("/proc/net/tcp").read_text()
