"""How a PostgreSQL server wants the password, asked without sending one.

libpq before 16 has no `require_auth`: told `password` by whatever answers, it sends the password
in clear text. Where the driver's libpq is that old, the agent first opens a connection of its
own, sends only the startup message, reads the server's first authentication request and hangs
up. The dump tools (pg_dump 15 uses the system's libpq 15) are covered by the driver's check made
right before each is started.
"""

from __future__ import annotations

import socket
import struct

PROTOCOL_3 = 196608
AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_NAMES = {0: "none (trust)", 3: "password (clear text)", 5: "md5", 7: "gss", 9: "sspi", 10: "SASL (scram)"}


def startup_message(user: str, database: str) -> bytes:
    """A protocol 3.0 StartupMessage: never a password, only who and where."""
    body = struct.pack("!I", PROTOCOL_3)
    for key, value in (("user", user), ("database", database), ("application_name", "backup-agent")):
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def first_request(data: bytes) -> int | None:
    """The authentication code of the server's first message ('R'), or None for an error or anything else."""
    if len(data) < 9 or data[:1] != b"R":
        return None
    return int(struct.unpack("!I", data[5:9])[0])


def asked_method(address: str | tuple[str, int], user: str, database: str, timeout: float) -> int | None:
    """Connect (a Unix socket path or a host and port), send the startup message, read one reply, hang up."""
    if isinstance(address, str):
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.settimeout(timeout)
        connection.connect(address)
    else:
        connection = socket.create_connection(address, timeout=timeout)
    with connection:
        connection.sendall(startup_message(user, database))
        data = b""
        while len(data) < 9:
            chunk = connection.recv(9 - len(data))
            if not chunk:
                break
            data += chunk
    return first_request(data)
