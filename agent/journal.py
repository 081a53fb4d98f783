"""The append-only journal `<storage>/.agent/journal.jsonl`, hash-chained line to line.

Each line holds the sha256 of the line before it, so an edited or removed entry breaks the chain
and `verify` reports it. It records every dump created, every file deleted and every drill.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

GENESIS = "0" * 64


def journal_path(storage: Path) -> Path:
    return storage / ".agent" / "journal.jsonl"


def _line_hash(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def append(storage: Path, event: str, **fields: Any) -> None:
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


def read_entries(storage: Path) -> tuple[list[dict[str, Any]], list[JournalProblem]]:
    """All entries, and every place where the chain is broken."""
    path = journal_path(storage)
    if not path.exists():
        return [], []
    entries: list[dict[str, Any]] = []
    problems: list[JournalProblem] = []
    expected = GENESIS
    with path.open("rb") as stream:
        for number, line in enumerate(stream, start=1):
            try:
                entry = json.loads(line)
            except ValueError:
                problems.append(JournalProblem(number, "not valid JSON"))
                expected = _line_hash(line)
                continue
            if entry.get("prev") != expected:
                problems.append(JournalProblem(number, "hash chain broken (an entry was edited or removed)"))
            entries.append(entry)
            expected = _line_hash(line)
    return entries, problems
