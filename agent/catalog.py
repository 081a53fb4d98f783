"""What is on disk: every backup under the storage path, read from file names and manifests.

A manifest is untrusted input (anyone who can write to storage can edit it), so a backup is `good`
only when its manifest decodes with every type right, names its own file, has the size of that
file, and names the job and database of the folder it sits in. Anything else is `invalid`: never
offered as latest, never counted by retention or used for a prediction, and reported by `verify`
with the field named. The next backup of its database is made as if it were not there.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from agent import catalog_index
from agent.budget import allocated_of
from agent.catalog_index import Summary
from agent.manifest import Manifest, ManifestError, manifest_path, read_manifest
from agent.naming import MANIFEST_SUFFIX, PARTIAL_SUFFIX, decode_name, folder_matches, parse_backup_filename
from agent.storage import StorageLayout, lock_held_since


class BackupStatus(StrEnum):
    GOOD = "good"
    INCOMPLETE = "incomplete"  # a data file without a manifest (a crash before it): never latest, never counted
    INVALID = "invalid"  # a manifest that does not fit its file or folder: treated as incomplete
    PARTIAL = "partial"  # a `.partial` left by a crash
    IN_PROGRESS = "in_progress"  # a `.partial` (or a data file before its manifest) of the run holding the job lock


GOOD = BackupStatus.GOOD
INCOMPLETE = BackupStatus.INCOMPLETE
INVALID = BackupStatus.INVALID
PARTIAL = BackupStatus.PARTIAL
IN_PROGRESS = BackupStatus.IN_PROGRESS
NO_MANIFEST = "no manifest"


@dataclass(frozen=True, slots=True)
class BackupRecord:
    job: str
    folder: str  # the encoded database name, or _globals / _grants / _server
    path: Path
    created_at: datetime | None
    status: BackupStatus
    manifest: Manifest | None = None  # set only for a good backup, and never by an indexed scan
    problem: str = ""
    summary: Summary | None = None  # set for every good backup: what the views show of its manifest
    allocated: int | None = None  # bytes its data file and manifest occupy on disk, as scanned
    sequence: int | None = None  # the `-N` of its name, as scanned (None: parse the name when asked)

    def __post_init__(self) -> None:
        if self.summary is None and self.manifest is not None:  # a record made from a manifest in hand
            object.__setattr__(self, "summary", summarize(self.manifest))

    @property
    def database(self) -> str:
        """The original database name: from the manifest, else decoded from the folder."""
        if self.summary is not None:
            return self.summary.database
        return decode_name(self.folder) or self.folder

    @property
    def kind(self) -> str:
        if self.summary is not None:
            return self.summary.kind
        return self.folder.lstrip("_") if self.folder.startswith("_") else "database"

    @property
    def order(self) -> tuple[datetime, int]:
        """Sort key for "newest": time, then the `-N` suffix of runs in the same second."""
        parsed = parse_backup_filename(self.path.name.removesuffix(PARTIAL_SUFFIX))
        return (self.created_at or datetime.min.replace(tzinfo=UTC), parsed.sequence if parsed else 0)

    @property
    def stored_bytes(self) -> int:
        if self.summary is not None:  # a good backup: its manifest's figure is its size, as scanned
            return self.summary.stored_bytes
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


def scan(storage: Path, job: str | None = None, *, indexed: bool = False) -> list[BackupRecord]:
    """Every backup, partial, incomplete and invalid file, oldest first within each folder.

    `indexed` (for the views: status, list, prune --dry-run) takes what an unchanged manifest said
    from the catalog index instead of reading it again, and leaves `manifest` unset; the records
    are otherwise the same. Whatever deletes or restores scans without it; verify reads the manifest
    of each backup it re-reads.
    """
    memo = _Index(storage, job) if indexed else None
    records: list[BackupRecord] = []
    for job_directory in _job_directories(storage, job):
        with os.scandir(job_directory) as entries:
            folders = sorted(entry.name for entry in entries if entry.is_dir(follow_symlinks=False))
        for name in folders:
            records.extend(_scan_folder(job_directory.name, job_directory / name, memo))
    if memo is not None:
        memo.save()
        del memo  # the old entries go before the callers build their views
    running: dict[str, int | None] = {}
    for index, record in enumerate(records):
        if record.status == PARTIAL or (record.status == INCOMPLETE and record.problem == NO_MANIFEST):
            if record.job not in running:
                running[record.job] = job_running_since(storage, record.job)
            if _written_since(record.path, running[record.job]):
                records[index] = BackupRecord(record.job, record.folder, record.path, record.created_at, IN_PROGRESS)
    return records


def job_running_since(storage: Path, job: str) -> int | None:
    """When the run of `job` that holds its lock now took it (ns); None when no run holds it."""
    return lock_held_since(StorageLayout(storage).lock_file(f"job-{job}"))


def is_being_written(storage: Path, job: str, path: Path) -> bool:
    """A `.partial`, or a data file whose manifest is not written yet, of the run holding the job lock."""
    return _written_since(path, job_running_since(storage, job))


def _written_since(path: Path, since: int | None) -> bool:
    # a file the running job wrote since it took the lock; an older one was left by an earlier run;
    # one gone since it was listed was published or removed by its run (a run does both before it
    # lets the lock go, so a file still there after that was left behind)
    try:
        written = path.stat(follow_symlinks=False).st_mtime_ns
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return since is not None and written >= since


class _Index:
    """The catalog index as one scan uses it: old entries matched by key and let go as they are used
    (a record keeps only the summary), the new index written only when something changed."""

    def __init__(self, storage: Path, job: str | None) -> None:
        self._agent_directory = StorageLayout(storage).agent_directory
        self._root = str(storage.absolute())
        self._old = catalog_index.load(self._agent_directory, self._root)
        self._scope = f"{job}/" if job is not None else ""  # entries of other jobs stay as they were
        self._seen: list[tuple[bytes, BackupRecord]] = []  # each record with its key, taken before any read
        self._changed = False

    def record(
        self,
        job: str,
        folder: Path,
        name: str,
        created_at: datetime,
        *,
        data: os.stat_result,
        manifest: os.stat_result,
        sequence: int,
    ) -> BackupRecord:
        file_key = catalog_index.file_key(data, manifest)
        allocated = allocated_of(data) + allocated_of(manifest)
        entry = self._old.pop(f"{job}/{folder.name}/{name}", None)
        if entry is not None and entry.key == file_key:
            status = GOOD if entry.good else INVALID
            found = BackupRecord(
                job,
                folder.name,
                folder / name,
                created_at,
                status,
                None,
                entry.problem,
                entry.summary,
                allocated,
                sequence,
            )
            self._seen.append((entry.key, found))
            return found
        self._changed = True  # new, changed, or gone from the index
        record = classify(folder / name, created_at, data.st_size, allocated=allocated, sequence=sequence)
        record = dataclasses.replace(record, manifest=None)
        if record.status == GOOD or "unreadable manifest" not in record.problem:  # a failed read may pass later
            self._seen.append((file_key, record))
        return record

    def save(self) -> None:
        gone = any(key.startswith(self._scope) for key in self._old)  # indexed files no longer there
        if not (self._changed or gone):
            return
        entries = {key: entry for key, entry in self._old.items() if not key.startswith(self._scope)}
        for file_key, record in self._seen:
            good = record.status == GOOD
            entries[f"{record.job}/{record.folder}/{record.path.name}"] = catalog_index.Entry(
                file_key, good, record.problem, record.summary
            )
        catalog_index.save(self._agent_directory, self._root, entries)


def _scan_folder(job: str, folder: Path, index: _Index | None = None) -> Iterator[BackupRecord]:
    # the agent never makes a symlink: one here was planted, and is neither a backup nor a manifest
    with os.scandir(folder) as entries:
        present = {entry.name: entry for entry in entries if not entry.is_symlink()}
    for name in sorted(present):
        if name.endswith(PARTIAL_SUFFIX):
            parsed = parse_backup_filename(name.removesuffix(PARTIAL_SUFFIX))
            yield BackupRecord(job, folder.name, folder / name, parsed.created_at if parsed else None, PARTIAL)
            continue
        if name.endswith(MANIFEST_SUFFIX):
            continue
        parsed = parse_backup_filename(name)
        if parsed is None:
            continue
        beside = present.get(name + MANIFEST_SUFFIX)
        if beside is None:
            yield BackupRecord(job, folder.name, folder / name, parsed.created_at, INCOMPLETE, problem=NO_MANIFEST)
            continue
        try:
            data = present[name].stat(follow_symlinks=False)
        except FileNotFoundError:  # deleted by a prune meanwhile
            continue
        try:
            manifest = beside.stat(follow_symlinks=False)
        except FileNotFoundError:  # deleted meanwhile: classify says how the manifest cannot be read
            yield classify(folder / name, parsed.created_at, data.st_size, allocated=allocated_of(data))
            continue
        if index is None:
            path = folder / name
            allocated = allocated_of(data) + allocated_of(manifest)
            yield classify(path, parsed.created_at, data.st_size, allocated=allocated, sequence=parsed.sequence)
        else:
            yield index.record(
                job, folder, name, parsed.created_at, data=data, manifest=manifest, sequence=parsed.sequence
            )


def classify(
    path: Path,
    created_at: datetime | None,
    size: int,
    *,
    in_storage: bool = True,
    allocated: int | None = None,
    sequence: int | None = None,
) -> BackupRecord:
    """A data file with a manifest beside it: good, or invalid with the problem named.

    In storage (`<storage>/<job>/<folder>/<file>`) the manifest must name that job and folder too.
    """
    job, folder = path.parent.parent.name, path.parent.name
    try:
        manifest = read_manifest(manifest_path(path))
    except ManifestError as error:
        return BackupRecord(
            job, folder, path, created_at, INVALID, problem=str(error), allocated=allocated, sequence=sequence
        )
    place = {"job": job, "folder": folder} if in_storage else {"job": None, "folder": None}
    problem = manifest_problem(manifest, name=path.name, size=size, **place)
    if problem:
        where = f"{manifest_path(path)}: {problem}"
        return BackupRecord(
            job, folder, path, created_at, INVALID, problem=where, allocated=allocated, sequence=sequence
        )
    return BackupRecord(job, folder, path, created_at, GOOD, manifest, allocated=allocated, sequence=sequence)


def summarize(manifest: Manifest) -> Summary:
    return Summary(
        kind=manifest.kind,
        database=manifest.database,
        started_at=manifest.started_at,
        stored_bytes=manifest.stored_bytes,
        raw_bytes=manifest.raw_bytes,
        sha256=manifest.sha256,
        duration_seconds=manifest.duration_seconds,
        warnings=tuple(manifest.warnings),
        label=manifest.label,
        keep_until=manifest.keep_until,
    )


def manifest_problem(manifest: Manifest, *, job: str | None, folder: str | None, name: str, size: int) -> str:
    """What makes a well-typed manifest wrong for the file it sits beside ("" when nothing does).

    `job` and `folder` are those of the file's place in storage (None: not inside storage).
    """
    if manifest.file != name:
        return f"file: the manifest names another file ({manifest.file!r})"
    if manifest.stored_bytes != size:
        return f"stored_bytes: the manifest says {manifest.stored_bytes}, the file has {size} bytes"
    if manifest.raw_bytes == 0:
        return "raw_bytes: the manifest says the dump is empty"
    if job is not None and manifest.job != job:
        return f"job: the manifest names job {manifest.job!r}, but the file is in the folder of job {job!r}"
    if folder is not None and not folder_matches(manifest.kind, manifest.database, folder):
        return f"database: a {manifest.kind} backup of {manifest.database!r} does not belong in the folder {folder!r}"
    return ""


def latest_good(records: list[BackupRecord], job: str, database: str, kind: str = "database") -> BackupRecord | None:
    candidates = [
        record
        for record in records
        if record.status == GOOD and record.job == job and record.kind == kind and record.database == database
    ]
    return max(candidates, key=lambda record: record.order, default=None)
