"""What is on disk: every backup under the storage path, read from file names and manifests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from agent.manifest import Manifest, ManifestError, manifest_path, read_manifest
from agent.naming import MANIFEST_SUFFIX, PARTIAL_SUFFIX, decode_name, parse_backup_filename

GOOD = "good"
INCOMPLETE = "incomplete"  # a data file without a valid manifest: never latest, never counted
PARTIAL = "partial"  # a `.partial` left by a crash


@dataclass(frozen=True, slots=True)
class BackupRecord:
    job: str
    folder: str  # the encoded database name, or _globals / _grants
    path: Path
    created_at: datetime | None
    status: str
    manifest: Manifest | None = None
    problem: str = ""

    @property
    def database(self) -> str:
        """The original database name: from the manifest, else decoded from the folder."""
        if self.manifest is not None:
            return self.manifest.database
        return decode_name(self.folder) or self.folder

    @property
    def kind(self) -> str:
        if self.manifest is not None:
            return self.manifest.kind
        return self.folder.lstrip("_") if self.folder.startswith("_") else "database"

    @property
    def order(self) -> tuple[datetime, int]:
        """Sort key for "newest": time, then the `-N` suffix of runs in the same second."""
        parsed = parse_backup_filename(self.path.name.removesuffix(PARTIAL_SUFFIX))
        return (self.created_at or datetime.min.replace(tzinfo=UTC), parsed.sequence if parsed else 0)

    @property
    def stored_bytes(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0


def _job_directories(storage: Path, job: str | None) -> Iterator[Path]:
    if not storage.is_dir():
        return
    for entry in sorted(storage.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir() or entry.is_symlink():
            continue
        if job is None or entry.name == job:
            yield entry


def scan(storage: Path, job: str | None = None) -> list[BackupRecord]:
    """Every backup, partial and incomplete file, oldest first within each folder."""
    records: list[BackupRecord] = []
    for job_directory in _job_directories(storage, job):
        for folder in sorted(job_directory.iterdir()):
            if not folder.is_dir() or folder.is_symlink():
                continue
            records.extend(_scan_folder(job_directory.name, folder))
    return records


def _scan_folder(job: str, folder: Path) -> Iterator[BackupRecord]:
    # the agent never makes a symlink: one here was planted, and is neither a backup nor a manifest
    with os.scandir(folder) as entries:
        present = {entry.name for entry in entries if not entry.is_symlink()}
    for name in sorted(present):
        path = folder / name
        if name.endswith(PARTIAL_SUFFIX):
            parsed = parse_backup_filename(name.removesuffix(PARTIAL_SUFFIX))
            yield BackupRecord(job, folder.name, path, parsed.created_at if parsed else None, PARTIAL)
            continue
        if name.endswith(MANIFEST_SUFFIX):
            continue
        parsed = parse_backup_filename(name)
        if parsed is None:
            continue
        if name + MANIFEST_SUFFIX not in present:
            yield BackupRecord(job, folder.name, path, parsed.created_at, INCOMPLETE, problem="no manifest")
            continue
        try:
            manifest = read_manifest(manifest_path(path))
        except ManifestError as error:
            yield BackupRecord(job, folder.name, path, parsed.created_at, INCOMPLETE, problem=str(error))
            continue
        if manifest.file != name:
            yield BackupRecord(
                job,
                folder.name,
                path,
                parsed.created_at,
                INCOMPLETE,
                manifest,
                problem="manifest names another file",
            )
            continue
        yield BackupRecord(job, folder.name, path, parsed.created_at, GOOD, manifest)


def latest_good(records: list[BackupRecord], job: str, database: str, kind: str = "database") -> BackupRecord | None:
    candidates = [
        record
        for record in records
        if record.status == GOOD and record.job == job and record.kind == kind and record.database == database
    ]
    return max(candidates, key=lambda record: record.order, default=None)
