"""The append-only journal `<storage>/.agent/journal.jsonl`, hash-chained line to line.

Each line holds the sha256 of the line before it, so an edited or removed entry breaks the chain
and `verify` reports it. It records every dump created, every file deleted, every drill and every
dump skipped as unchanged. Read back, each line is decoded with its fields' types checked
(msgspec): a line that does not fit is a problem naming the field, never a TypeError in `verify`
or `status`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import msgspec

GENESIS = "0" * 64


class Event(StrEnum):
    CREATED = "created"
    DELETED = "deleted"
    DRILL = "drill"
    RETIRED = "retired"  # a job's or database's series: `path` is its folder; nothing in it is missing after
    SKIPPED = "skipped"  # skip_unchanged: no new dump; `path` is the backup the skip relies on


class JournalEntry(msgspec.Struct, frozen=True):
    """One line; which fields it has depends on its event (created, deleted, drill)."""

    at: str
    event: Event
    prev: str
    path: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    run_id: str | None = None
    rule: str | None = None  # deleted: the retention rule
    job: str | None = None  # drill, retired, skipped
    database: str | None = None  # drill, retired (absent: the whole job), skipped
    result: str | None = None  # drill: passed | failed | ...
    reason: str = ""  # drill: why it failed (no_privilege, restore_failed, counts_differ, ...); skipped: unchanged
    differences: list[str] = msgspec.field(default_factory=list)  # drill
    error: str = ""  # drill

    def __getitem__(self, name: str) -> object:
        """`entry["path"]`, as scripts reading the JSON lines would."""
        return getattr(self, name)


_decoder = msgspec.json.Decoder(JournalEntry)


def journal_path(storage: Path) -> Path:
    return storage / ".agent" / "journal.jsonl"


def _line_hash(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def append(storage: Path, event: Event, **fields: Any) -> None:
    """Append one entry under an exclusive lock and fsync it before returning."""
    path = journal_path(storage)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        previous = _last_line(descriptor)
        entry = {
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "event": event,
            **fields,
            "prev": _line_hash(previous) if previous else GENESIS,
        }
        os.write(descriptor, (json.dumps(entry, sort_keys=True, ensure_ascii=True) + "\n").encode())
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _last_line(descriptor: int) -> bytes:
    size = os.lseek(descriptor, 0, os.SEEK_END)
    if size == 0:
        return b""
    block = min(size, 65536)
    while True:
        data = os.pread(descriptor, block, size - block)
        stripped = data.rstrip(b"\n")
        newline = stripped.rfind(b"\n")
        if newline != -1 or block == size:
            return stripped[newline + 1 :]
        block = min(size, block * 4)


@dataclass(frozen=True, slots=True)
class JournalProblem:
    line_number: int
    message: str


def read_events(storage: Path, event: Event) -> list[JournalEntry]:
    """The valid entries of one event, chain unchecked (`status` shows drills; `verify` checks the chain).

    Lines are picked by the text `append` writes for that event before any is decoded, so 20,000
    `created` lines cost a substring search each, not a decode.
    """
    path = journal_path(storage)
    marker = json.dumps({"event": str(event)})[1:-1].encode()  # '"event": "drill"', as json.dumps writes it
    found: list[JournalEntry] = []
    try:
        stream = path.open("rb")
    except FileNotFoundError:
        return found
    with stream:
        for line in stream:
            if marker not in line:
                continue
            try:
                entry = _decoder.decode(line)
            except msgspec.DecodeError:  # ValidationError included: an edited line is no drill
                continue
            if entry.event == event:
                found.append(entry)
    return found


def read_entries(storage: Path) -> tuple[list[JournalEntry], list[JournalProblem]]:
    """All valid entries, and every line that is not one or where the chain is broken."""
    numbered, problems = read_numbered_entries(storage)
    return [entry for _number, entry in numbered], problems


def read_numbered_entries(storage: Path) -> tuple[list[tuple[int, JournalEntry]], list[JournalProblem]]:
    """`read_entries` with each entry's line number, so a reader can tell lines before a break from after."""
    path = journal_path(storage)
    if not path.exists():
        return [], []
    entries: list[tuple[int, JournalEntry]] = []
    problems: list[JournalProblem] = []
    expected = GENESIS
    with path.open("rb") as stream:
        for number, line in enumerate(stream, start=1):
            try:
                entry = _decoder.decode(line)
            except msgspec.ValidationError as error:
                problems.append(JournalProblem(number, f"invalid entry: {error}"))
                expected = _line_hash(line)
                continue
            except msgspec.DecodeError:
                problems.append(JournalProblem(number, "not valid JSON"))
                expected = _line_hash(line)
                continue
            if entry.prev != expected:
                problems.append(JournalProblem(number, "hash chain broken (an entry was edited or removed)"))
            entries.append((number, entry))
            expected = _line_hash(line)
    return entries, problems
