"""How fast can the agent decode manifests with their types checked? msgspec, cattrs, hand-written.

    python bench/decode_bench.py [--count 20000] [--repeat 5]

Decodes `count` realistic manifests (bytes in memory, so only decoding is timed) five ways: the
agent's `agent.manifest.decode_manifest` (msgspec, every field's type checked), the same through
cattrs (a converter structuring a dataclass from `json.loads`; it coerces rather than checks, so
"5" becomes 5), hand-written isinstance checks after `json.loads`, and the old unchecked read
(`json.loads` then the dataclass). Prints the best of `repeat` runs per way, in ms and µs/manifest.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.manifest import Manifest, decode_manifest


@dataclasses.dataclass(frozen=True, slots=True)
class PlainManifest:
    """The manifest as the old dataclass: what cattrs and the unchecked read build."""

    job: str
    engine: str
    kind: str
    database: str
    file: str
    host: str
    server: str
    server_version: str
    tool: str
    tool_version: str
    format: str
    compression: str
    compression_level: int | None
    started_at: str
    finished_at: str
    duration_seconds: float
    raw_bytes: int
    stored_bytes: int
    sha256: str
    run_id: str
    agent_version: str
    predicted_bytes: int | None = None
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    counts_consistent: bool = False
    point_in_time: bool = False
    warnings: list[str] = dataclasses.field(default_factory=list)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    format_version: int = 1


_STRINGS = ("job", "engine", "database", "file", "host", "server", "server_version", "tool", "tool_version")
_STRINGS += ("format", "started_at", "finished_at", "run_id", "agent_version")


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def hand_checked(data: bytes) -> PlainManifest:
    """What checking every field by hand takes (the code msgspec replaces)."""
    raw = json.loads(data)
    if not isinstance(raw, dict) or raw.get("format_version") != 1:
        raise ValueError("not a version 1 manifest")
    for name in _STRINGS:
        if not isinstance(raw.get(name), str):
            raise ValueError(f"{name}: expected a string")
    if raw["kind"] not in ("database", "globals", "grants", "server"):
        raise ValueError("kind: not a known kind")
    if raw["compression"] not in ("zstd", "gzip", "none"):
        raise ValueError("compression: not a known method")
    for name in ("raw_bytes", "stored_bytes"):
        if not _integer(raw.get(name)) or raw[name] < 0:
            raise ValueError(f"{name}: expected a non-negative integer")
    for name in ("compression_level", "predicted_bytes"):
        if raw.get(name) is not None and not _integer(raw[name]):
            raise ValueError(f"{name}: expected an integer or null")
    duration = raw.get("duration_seconds")
    if not isinstance(duration, int | float) or isinstance(duration, bool) or duration < 0:
        raise ValueError("duration_seconds: expected a non-negative number")
    sha256 = raw.get("sha256")
    if not isinstance(sha256, str) or len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError("sha256: expected 64 hex digits")
    counts = raw.get("counts", {})
    if not isinstance(counts, dict) or not all(isinstance(k, str) and _integer(v) for k, v in counts.items()):
        raise ValueError("counts: expected names and integers")
    for name in ("counts_consistent", "point_in_time"):
        if not isinstance(raw.get(name, False), bool):
            raise ValueError(f"{name}: expected true or false")
    warnings = raw.get("warnings", [])
    if not isinstance(warnings, list) or not all(isinstance(item, str) for item in warnings):
        raise ValueError("warnings: expected a list of strings")
    if not isinstance(raw.get("details", {}), dict):
        raise ValueError("details: expected an object")
    known = {field.name for field in dataclasses.fields(PlainManifest)}
    return PlainManifest(**{key: value for key, value in raw.items() if key in known})


def unchecked(data: bytes) -> PlainManifest:
    """The read before issue 13: any type goes through."""
    raw = json.loads(data)
    known = {field.name for field in dataclasses.fields(PlainManifest)}
    return PlainManifest(**{key: value for key, value in raw.items() if key in known})


def with_cattrs(data: bytes) -> PlainManifest:
    import cattrs  # not a dependency of the agent: `pip install cattrs` to compare

    structured: PlainManifest = _converters.setdefault("cattrs", cattrs.Converter()).structure(
        json.loads(data), PlainManifest
    )
    return structured


_converters: dict[str, Any] = {}


def with_msgspec(data: bytes) -> Manifest:
    return decode_manifest(data, "bench")


def manifests(count: int) -> list[bytes]:
    documents = []
    for number in range(count):
        manifest = Manifest(
            job="app",
            engine="postgresql",
            kind="database",  # type: ignore[arg-type] - a StrEnum value, as read from disk
            database=f"shop_{number % 40}",
            file=f"app.shop_{number % 40}.20261203T0{number % 10}0000Z.pgdump.zst",
            host="web-1",
            server="127.0.0.1:5432",
            server_version="15.14",
            tool="pg_dump",
            tool_version="15.14",
            format="postgresql-custom",
            compression="zstd",
            compression_level=3,
            started_at="2026-12-03T06:00:00.123456+00:00",
            finished_at="2026-12-03T06:01:12.654321+00:00",
            duration_seconds=72.53,
            raw_bytes=1_234_567_890 + number,
            stored_bytes=234_567_890 + number,
            predicted_bytes=250_000_000,
            sha256=hashlib.sha256(str(number).encode()).hexdigest(),
            run_id=f"{number:012x}",
            agent_version="0.1.0",
            counts={f"public.table_{table}": table * 1000 + number for table in range(12)},
            counts_consistent=True,
            warnings=[],
            details={"restrict_key": True},
        )
        documents.append(manifest.to_json())
    return documents


def best_of(repeat: int, decode: Callable[[bytes], object], documents: list[bytes]) -> float:
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        for document in documents:
            decode(document)
        timings.append(time.perf_counter() - started)
    return min(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    documents = manifests(args.count)
    size = sum(map(len, documents)) / len(documents)
    print(f"{args.count} manifests of {size:.0f} bytes each, best of {args.repeat}:")
    ways: list[tuple[str, Callable[[bytes], object]]] = [
        ("msgspec (agent.manifest, types checked)", with_msgspec),
        ("hand-written isinstance checks", hand_checked),
        ("unchecked json.loads + dataclass (before)", unchecked),
    ]
    if importlib.util.find_spec("cattrs") is not None:
        ways.insert(2, ("cattrs structure (coerces, no checks)", with_cattrs))
    for name, decode in ways:
        seconds = best_of(args.repeat, decode, documents)
        print(f"  {name:44} {seconds * 1000:8.1f} ms  {seconds / args.count * 1e6:6.1f} µs/manifest")


if __name__ == "__main__":
    main()
