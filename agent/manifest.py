"""The manifest beside every published file: what it is, where it came from, and its hash.

The manifest is written last and is the completion marker: a data file without a valid one is
incomplete, never offered as latest and never counted by retention. Read back, it is untrusted
input (anyone who can write to storage can edit it): `read_manifest` decodes it with every field's
type checked by msgspec, so a wrong type is a `ManifestError` naming the field, never a TypeError
later in a prediction or in `status`. Whether it also fits its file and folder is agent/catalog.py's.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import msgspec

from agent.compression import Compression
from agent.labels import LABEL_PATTERN
from agent.naming import MANIFEST_SUFFIX, TargetKind
from agent.scope import ResolvedScope
from agent.writer import write_small_file

FORMAT_VERSION = 1
MAX_MANIFEST_BYTES = 16 << 20  # a manifest is a few KiB; per-table counts of a huge schema stay far below

NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Seconds = Annotated[float, msgspec.Meta(ge=0)]
Sha256 = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
Label = Annotated[str, msgspec.Meta(pattern=LABEL_PATTERN)]
Moment = Annotated[datetime, msgspec.Meta(tz=True)]
TokenPart = Annotated[str, msgspec.Meta(max_length=4096)]


class ManifestScope(msgspec.Struct, frozen=True, kw_only=True):
    """The table scope a dump was made with: the patterns as configured and the tables they gave."""

    tables: list[str] | None = None  # None: every table not excluded
    exclude_tables: list[str] = msgspec.field(default_factory=list)
    schema_only_tables: list[str] = msgspec.field(default_factory=list)
    dumped: list[str] = msgspec.field(default_factory=list)  # with data
    schema_only: list[str] = msgspec.field(default_factory=list)  # definition only, restored empty
    excluded: list[str] = msgspec.field(default_factory=list)  # not in the dump at all


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    job: str
    engine: str
    kind: TargetKind
    database: str  # the original name, however the path had to encode it
    file: str  # the data file's name (same folder)
    host: str  # the node that made the dump
    server: str  # where the database lives (host:port, socket or file)
    server_version: str
    tool: str
    tool_version: str
    format: str  # e.g. postgresql-custom, sql, mongodump-archive, sqlite
    compression: Compression
    compression_level: int | None
    started_at: str  # ISO 8601 UTC
    finished_at: str
    duration_seconds: Seconds
    raw_bytes: NonNegative
    stored_bytes: NonNegative
    sha256: Sha256
    run_id: str
    agent_version: str
    predicted_bytes: NonNegative | None = None
    counts: dict[str, int] = msgspec.field(default_factory=dict)
    counts_consistent: bool = False  # counted in the dump's own snapshot
    point_in_time: bool = False
    warnings: list[str] = msgspec.field(default_factory=list)
    details: dict[str, Any] = msgspec.field(default_factory=dict)
    label: Label | None = None  # `backup --label`: kept like a pin until keep_until
    keep_until: Moment | None = None
    # what the engine read before the dump to prove a later "unchanged" (skip_unchanged); None: it cannot
    change_token: dict[TokenPart, TokenPart] | None = None
    scope: ManifestScope | None = None  # None: the whole database
    format_version: int = FORMAT_VERSION

    def to_json(self) -> bytes:
        return (json.dumps(msgspec.to_builtins(self), indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


class ManifestError(ValueError):
    """A manifest that cannot be read, or whose fields are missing or of the wrong type."""


class _StoredManifest(Manifest, frozen=True, kw_only=True):
    """A manifest as read from disk, where its format version must be stated."""

    format_version: int


_decoder = msgspec.json.Decoder(_StoredManifest)


def manifest_path(data_path: Path) -> Path:
    return data_path.with_name(data_path.name + MANIFEST_SUFFIX)


def write_manifest(data_path: Path, manifest: Manifest) -> Path:
    return write_small_file(data_path.parent, data_path.name + MANIFEST_SUFFIX, manifest.to_json())


def decode_manifest(data: bytes, where: str) -> Manifest:
    """The manifest in `data`, types checked; `where` names it in the error."""
    try:
        manifest = _decoder.decode(data)
    except msgspec.ValidationError as error:
        raise ManifestError(f"{where}: invalid manifest: {error}") from None
    except msgspec.DecodeError as error:
        raise ManifestError(f"{where}: unreadable manifest: {error}") from None
    if manifest.format_version != FORMAT_VERSION:
        raise ManifestError(f"{where}: not a version {FORMAT_VERSION} manifest")
    return manifest


def read_manifest(path: Path) -> Manifest:
    """Decode the manifest at `path`, never through a symlink (one in storage was planted)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(descriptor, "rb") as stream:
            data = stream.read(MAX_MANIFEST_BYTES + 1)
    except OSError as error:
        raise ManifestError(f"{path}: unreadable manifest: {error}") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path}: unreadable manifest: larger than {MAX_MANIFEST_BYTES} bytes")
    return decode_manifest(data, str(path))


def manifest_scope(resolved: ResolvedScope | None) -> ManifestScope | None:
    """What the manifest records of a dump's resolved table scope."""
    if resolved is None:
        return None
    scope = resolved.scope
    return ManifestScope(
        tables=list(scope.tables) if scope.tables is not None else None,
        exclude_tables=list(scope.exclude_tables),
        schema_only_tables=list(scope.schema_only_tables),
        dumped=list(resolved.dumped),
        schema_only=list(resolved.schema_only),
        excluded=list(resolved.excluded),
    )
