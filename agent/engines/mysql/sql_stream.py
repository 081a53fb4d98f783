"""Rewriters of the SQL streams on their way into a restore, and the dump's ALTER DATABASE lines (pure)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from agent.engines.base import Sink

# accounts every server creates for itself; restoring them elsewhere is never wanted
INTERNAL_ACCOUNTS = frozenset(
    {
        ("mariadb.sys", "localhost"),
        ("mysql.sys", "localhost"),
        ("mysql.session", "localhost"),
        ("mysql.infoschema", "localhost"),
    }
)
_DEFINER = re.compile(rb" ?DEFINER=`(?:[^`]|``)*`(?:@`(?:[^`]|``)*`)?")


def quote_identifier(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


class AlterDatabaseRewriter:
    """Drops the source database's name from the tool's `ALTER DATABASE `name` CHARACTER SET` lines.

    mysqldump switches the database collation around each routine whose collation differs; named,
    that statement fails on another server and alters the original database on this one.
    Works on the stream in place: only the pattern's length minus one byte is ever held back.
    """

    def __init__(self, database: str, sink: Sink) -> None:
        self._old = b"\nALTER DATABASE " + quote_identifier(database).encode() + b" CHARACTER SET "
        self._new = b"\nALTER DATABASE CHARACTER SET "
        self._keep = len(self._old) - 1
        self._carry = b""
        self._sink = sink
        self.rewritten = 0

    def feed(self, data: bytes) -> None:
        buffer = self._carry + data if self._carry else data
        found = buffer.count(self._old)
        if found:
            buffer = buffer.replace(self._old, self._new)
            self.rewritten += found
        if len(buffer) <= self._keep:
            self._carry = buffer
            return
        self._carry = buffer[-self._keep :]
        self._sink(buffer[: -self._keep])

    def flush(self) -> None:
        if self._carry:
            self._sink(self._carry)
            self._carry = b""


def keep_own_password(lines: Iterable[bytes], user: str) -> Iterator[bytes]:
    """Grants lines without the password clause of the agent's own account.

    Restoring a grants dump on another server would otherwise reset the agent's account to the old
    server's password and lock it out (its password file holds the new server's password).
    """
    own = re.compile(
        rb"^(GRANT .* TO " + re.escape(quote_identifier(user).encode()) + rb"@`[^`]*`) IDENTIFIED BY PASSWORD '[^']*'"
    )
    for line in lines:
        yield own.sub(rb"\1", line) if line.startswith(b"GRANT ") else line


_BUILTIN_ON_RESTORE = {*INTERNAL_ACCOUNTS, ("root", "localhost")}


def skip_builtin_accounts(lines: Iterable[bytes]) -> Iterator[bytes]:
    """Grants lines without those for accounts every server already has (root@localhost, mariadb.sys).

    Re-granting them needs privileges such as PROXY that the agent's account rarely holds, and a
    new server has them already.
    """
    names = []
    for user, host in _BUILTIN_ON_RESTORE:
        names += [f"`{user}`@`{host}`".encode(), f"'{user}'@'{host}'".encode()]
    for line in lines:
        if not any(name in line for name in names):
            yield line


def strip_definers(lines: Iterable[bytes]) -> Iterator[bytes]:
    """Dump lines without DEFINER clauses (data lines untouched): objects then belong to the restorer."""
    for line in lines:
        yield line if line.startswith(b"INSERT INTO ") else _DEFINER.sub(b"", line)


def lines_of(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Whole lines (newline kept) from chunks; the decompressing readers have no readline."""
    carry = b""
    for chunk in chunks:
        lines = (carry + chunk).split(b"\n")
        carry = lines.pop()
        for line in lines:
            yield line + b"\n"
    if carry:
        yield carry
