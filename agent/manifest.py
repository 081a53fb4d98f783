"""The manifest beside every published file: what it is, where it came from, and its hash.

The manifest is written last and is the completion marker: a data file without a valid one is
incomplete, never offered as latest and never counted by retention.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.naming import MANIFEST_SUFFIX
from agent.writer import write_small_file

FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class Manifest:
    job: str
    engine: str
    kind: str  # database | globals | grants
    database: str  # the original name, however the path had to encode it
    file: str  # the data file's name (same folder)
    host: str  # the node that made the dump
    server: str  # where the database lives (host:port, socket or file)
    server_version: str
    tool: str
    tool_version: str
    format: str  # e.g. postgresql-custom, sql, mongodump-archive, sqlite
    compression: str
    compression_level: int | None
    started_at: str  # ISO 8601 UTC
    finished_at: str
    duration_seconds: float
    raw_bytes: int
    stored_bytes: int
    sha256: str
    run_id: str
    agent_version: str
    predicted_bytes: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    counts_consistent: bool = False  # counted in the dump's own snapshot
    point_in_time: bool = False
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


class ManifestError(ValueError):
    """A manifest that cannot be read or does not have the fields it must have."""


def manifest_path(data_path: Path) -> Path:
    return data_path.with_name(data_path.name + MANIFEST_SUFFIX)


def write_manifest(data_path: Path, manifest: Manifest) -> Path:
    return write_small_file(data_path.parent, data_path.name + MANIFEST_SUFFIX, manifest.to_json())


def read_manifest(path: Path) -> Manifest:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ManifestError(f"{path}: unreadable manifest: {error}") from None
    if not isinstance(raw, dict) or raw.get("format_version") != FORMAT_VERSION:
        raise ManifestError(f"{path}: not a version {FORMAT_VERSION} manifest")
    known = set(Manifest.__dataclass_fields__)
    try:
        return Manifest(**{key: value for key, value in raw.items() if key in known})
    except TypeError as error:
        raise ManifestError(f"{path}: {error}") from None
