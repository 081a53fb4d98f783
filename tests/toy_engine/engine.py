"""The toy engine: dumps a database folder as JSON lines ending in a line that counts them."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from agent.engines.base import (
    EMPTY,
    MISSING,
    NOT_EMPTY,
    DumpDetails,
    DumpTarget,
    Engine,
    PrivilegeFinding,
    ServerInfo,
    Sink,
    StreamCheck,
    options_of,
)
from agent.errors import DumpError, VerificationError
from toy_engine import ToyOptions

if TYPE_CHECKING:
    from pathlib import Path

    from agent.manifest import Manifest

FORMAT = "toy-jsonl"


class ToyCheck:
    """Whole when the last line says how many row lines came before it."""

    def __init__(self) -> None:
        self._data = bytearray()

    def feed(self, data: bytes) -> None:
        self._data += data

    def finish(self) -> None:
        lines = bytes(self._data).splitlines()
        try:
            trailer = json.loads(lines[-1])
        except (IndexError, ValueError):
            raise VerificationError("the toy dump does not end with its trailer: it is truncated") from None
        if not isinstance(trailer, dict) or trailer.get("rows") != len(lines) - 1:
            raise VerificationError("the toy dump's trailer does not match its rows: it is truncated")

    def abort(self) -> None:
        self._data.clear()


class ToyEngine(Engine):
    @property
    def root(self) -> Path:
        return options_of(self.job, ToyOptions).root

    def probe(self) -> ServerInfo:
        if not self.root.is_dir():
            raise DumpError(f"{self.root} is not a folder", "not_found")
        return ServerInfo(str(self.root), "1", "toy", "toy 1")

    def discover(self) -> list[str]:
        return sorted(path.name for path in self.root.iterdir() if path.is_dir())

    def database_target(self, database: str) -> DumpTarget:
        return DumpTarget(database, extension="jsonl", format=FORMAT)

    def size_estimate(self, database: str) -> int | None:
        return sum(path.stat().st_size for path in (self.root / database).glob("*.json"))

    @classmethod
    def new_check(cls, format_name: str, tool: str | None = None) -> StreamCheck:
        if format_name != FORMAT:
            raise VerificationError(f"unknown toy format {format_name!r}")
        return ToyCheck()

    def dump(self, target: DumpTarget, sink: Sink) -> DumpDetails:
        folder = self.root / target.database
        if not folder.is_dir():
            raise DumpError(f"database {target.database!r} does not exist", "not_found")
        details = DumpDetails(counts_consistent=True)
        rows = 0
        for table in sorted(folder.glob("*.json")):
            content = json.loads(table.read_text())
            details.counts[table.stem] = len(content)
            for row in content:
                sink(json.dumps({"table": table.stem, "row": row}).encode() + b"\n")
                rows += 1
        sink(json.dumps({"rows": rows}).encode() + b"\n")
        return details

    def database_state(self, database: str) -> str:
        folder = self.root / database
        if not folder.is_dir():
            return MISSING
        return NOT_EMPTY if any(folder.iterdir()) else EMPTY

    def create_database(self, database: str) -> None:
        (self.root / database).mkdir()

    def drop_database(self, database: str) -> None:
        shutil.rmtree(self.root / database, ignore_errors=True)

    def restore(
        self,
        chunks: Iterable[bytes],
        manifest: Manifest,
        database: str,
        *,
        tables: Sequence[str] = (),
        drill: bool = False,
    ) -> None:
        restored: dict[str, list[object]] = {}
        for line in b"".join(chunks).splitlines()[:-1]:
            entry = json.loads(line)
            if not tables or entry["table"] in tables:
                restored.setdefault(entry["table"], []).append(entry["row"])
        for table in manifest.counts:
            if not tables or table in tables:
                (self.root / database / f"{table}.json").write_text(json.dumps(restored.get(table, [])))

    def count_rows(self, database: str) -> dict[str, int]:
        return {path.stem: len(json.loads(path.read_text())) for path in (self.root / database).glob("*.json")}

    def check_privileges(self) -> list[PrivilegeFinding]:
        readable = os.access(self.root, os.R_OK | os.X_OK)
        return [PrivilegeFinding(readable, f"{self.root} is {'readable' if readable else 'not readable'}")]
