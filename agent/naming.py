"""Safe, reversible file names for backups (pure functions).

A database name becomes one path component: ASCII letters, digits, `-`, `_` and inner `.` stay,
every other byte of its UTF-8 form is percent-encoded, so `..`, `/` and control characters can
never form a path, and two different names never share one. A leading `_` is encoded too, because
folders starting with `_` (`_globals`, `_grants`) belong to the agent. Names too long for a file
name are cut and given a hash suffix after `~` (a character the encoding never emits); the
manifest keeps the original.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
MAX_COMPONENT_BYTES = 120  # leaves room for job, timestamp, extensions and `.partial`/`.json` in 255
_HASH_CHARS = 16
TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
PARTIAL_SUFFIX = ".partial"
MANIFEST_SUFFIX = ".json"
_FILENAME = re.compile(
    r"^(?P<job>[A-Za-z0-9][A-Za-z0-9_.-]*)\.(?P<name>[^/]+?)\.(?P<stamp>\d{8}T\d{6}Z)(?:-(?P<seq>\d+))?"
    r"\.(?P<ext>[a-z0-9]+(?:\.[a-z0-9]+)*)$"
)


class TargetKind(StrEnum):
    """What a dump file holds: one database, or a server's roles (PostgreSQL) or grants (MySQL)."""

    DATABASE = "database"
    GLOBALS = "globals"
    GRANTS = "grants"
    SERVER = "server"  # a whole-server archive (MongoDB with point_in_time)


def series_label(kind: str, database: str) -> str:
    """The one name of a series in files, logs and every listing: the database, or `_globals`/`_grants`/`_server`."""
    return database if kind == TargetKind.DATABASE else f"_{kind}"


def folder_matches(kind: str, database: str, folder: str) -> bool:
    """Whether a backup of `kind` and `database` belongs in `folder`, as the runner names it.

    `_<kind>` holds the server-wide files (with no database name); a database's folder is its
    encoded name, or for a database that is a file (an absolute path: SQLite) its file name's.
    """
    if kind != TargetKind.DATABASE:
        return database == "" and folder == f"_{kind}"
    if folder == encode_name(database):
        return True
    return database.startswith("/") and folder == encode_name(posixpath.basename(database))


def encode_name(name: str) -> str:
    """Return the path component for a database name (reversible unless it had to be shortened)."""
    if not name:
        raise ValueError("a database name cannot be empty")
    raw = name.encode("utf-8", "surrogateescape")
    last = len(raw) - 1
    parts: list[str] = []
    for position, byte in enumerate(raw):
        edge_dot = byte == ord(".") and position in (0, last)
        leading_underscore = byte == ord("_") and position == 0
        if byte in _SAFE and not edge_dot and not leading_underscore:
            parts.append(chr(byte))
        else:
            parts.append(f"%{byte:02X}")
    encoded = "".join(parts)
    if len(encoded) <= MAX_COMPONENT_BYTES:
        return encoded
    digest = hashlib.sha256(raw).hexdigest()[:_HASH_CHARS]
    cut = MAX_COMPONENT_BYTES - _HASH_CHARS - 1
    head = encoded[:cut]
    # never leave half of a %XX escape at the cut
    escape_start = head.rfind("%", max(0, cut - 2))
    if escape_start != -1:
        head = head[:escape_start]
    return f"{head}~{digest}"


def decode_name(component: str) -> str | None:
    """Return the original name, or None when the component was shortened (read the manifest)."""
    if "~" in component:
        return None
    out = bytearray()
    index = 0
    while index < len(component):
        char = component[index]
        if char == "%":
            out.append(int(component[index + 1 : index + 3], 16))
            index += 3
        else:
            out.extend(char.encode("ascii"))
            index += 1
    return out.decode("utf-8", "surrogateescape")


def format_timestamp(moment: datetime) -> str:
    """UTC timestamp used in file names: sortable, no separators a shell would trip over."""
    return moment.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


def backup_filename(job: str, component: str, moment: datetime, extension: str, sequence: int = 0) -> str:
    """`<job>.<name>.<UTC stamp>[-N].<ext>`; N > 0 only when the same second was already taken."""
    stamp = format_timestamp(moment)
    if sequence:
        stamp = f"{stamp}-{sequence}"
    return f"{job}.{component}.{stamp}.{extension}"


@dataclass(frozen=True, slots=True)
class ParsedName:
    job: str
    component: str
    created_at: datetime
    sequence: int
    extension: str


def parse_backup_filename(filename: str) -> ParsedName | None:
    """Inverse of `backup_filename`, or None for files the agent did not name."""
    match = _FILENAME.match(filename)
    if match is None:
        return None
    stamp = match["stamp"]  # YYYYmmddTHHMMSSZ: sliced, as strptime costs ~20 us a name (a scan parses every file)
    try:
        created = datetime(
            int(stamp[0:4]), int(stamp[4:6]), int(stamp[6:8]), int(stamp[9:11]), int(stamp[11:13]), int(stamp[13:15]),
            tzinfo=UTC,
        )  # fmt: skip
    except ValueError:  # a 13th month or a 61st second: not a name the agent gave
        return None
    return ParsedName(
        job=match["job"],
        component=match["name"],
        created_at=created,
        sequence=int(match["seq"] or 0),
        extension=match["ext"],
    )
