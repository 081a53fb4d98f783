"""What the agent reads about a MongoDB server, shared by the engine and the built-in dumper."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pymongo

CLEANUP_SECONDS = 2.0  # closing a client ends sessions and kills cursors: bounded when the server is gone
_SNAPSHOT_WIRE_VERSION = 13  # MongoDB 5.0: snapshot reads outside transactions


@dataclass(slots=True)
class Topology:
    """What `hello` and `buildInfo` said about the server."""

    version: str = ""
    version_tuple: tuple[int, ...] = ()
    replica_set: str | None = None
    sharded: bool = False
    wire_version: int = 0

    @property
    def snapshots(self) -> bool:
        return (self.replica_set is not None or self.sharded) and self.wire_version >= _SNAPSHOT_WIRE_VERSION


def read_topology(client: pymongo.MongoClient[dict[str, Any]]) -> Topology:
    hello = client.admin.command("hello")
    build = client.admin.command("buildInfo")
    version = str(build.get("version", ""))
    return Topology(
        version=version,
        version_tuple=_version_tuple(version),
        replica_set=hello.get("setName"),
        sharded=hello.get("msg") == "isdbgrid",
        wire_version=int(hello.get("maxWireVersion", 0)),
    )


def first_line(error: BaseException) -> str:
    """The error's first line, without PyMongo's timeout settings and topology description."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    for noise in (" (configured timeouts", ", Timeout: ", ", full error: "):
        line = line.split(noise, 1)[0]
    return line


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = re.findall(r"\d+", text)
    return tuple(int(part) for part in parts[:3])


def dumpable_collection(name: str) -> bool:
    """mongodump's rule: no `system.*` (except system.js and admin's users/roles), no `$` names."""
    if "$" in name:
        return False
    return not name.startswith("system.") or name == "system.js"
