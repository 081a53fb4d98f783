"""Re-hash stored files against their manifests and re-run the engine's structural check.

One pass over each file: the bytes are hashed as read, decompressed, and fed to the same check
the dump had to pass. With no paths, every file under storage is checked, and the journal too:
a file it says was created and never deleted, but is gone, is `missing` (unless its series was
retired: `backup-agent retire`); an edited entry breaks the hash chain.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

from agent import catalog, catalog_index, journal, verified
from agent.compression import open_decompressed
from agent.engines import engine_class
from agent.engines.base import RowCountingCheck, StreamCheck, rows_out_of_scope
from agent.errors import AgentError
from agent.manifest import Manifest, manifest_path
from agent.naming import PARTIAL_SUFFIX, parse_backup_filename


class Verdict(StrEnum):
    OK = "ok"
    CORRUPT = "corrupt"  # the bytes do not form a whole dump
    TAMPERED = "tampered"  # the bytes differ from what the agent wrote
    INCOMPLETE = "incomplete"  # no manifest: it never counted as a backup
    INVALID = "invalid"  # a manifest that does not fit its file or folder: it never counted as a backup
    MISSING = "missing"
    PARTIAL = "partial"
    IN_PROGRESS = "in_progress"  # being written by the run holding its job's lock: no problem, not checked
    UNCHANGED = "unchanged"  # --incremental: unchanged since a check that passed, not re-read this run
    JOURNAL = "journal"


OK = Verdict.OK
CORRUPT = Verdict.CORRUPT
TAMPERED = Verdict.TAMPERED
INCOMPLETE = Verdict.INCOMPLETE
INVALID = Verdict.INVALID
MISSING = Verdict.MISSING
PARTIAL = Verdict.PARTIAL
IN_PROGRESS = Verdict.IN_PROGRESS
UNCHANGED = Verdict.UNCHANGED
JOURNAL = Verdict.JOURNAL

_READ_SIZE = 1 << 20


@dataclass(frozen=True, slots=True)
class Finding:
    path: Path
    status: Verdict
    message: str = ""


class _HashingReader:
    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.hash = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.hash.update(data)
        self.size += len(data)
        return data

    def close(self) -> None:
        self._stream.close()


def verify_file(path: Path, storage: Path | None = None, *, on_chunk: Callable[[int], None] | None = None) -> Finding:
    """One file; inside `storage`, its manifest must also name the job and database of its folder.

    `on_chunk` is told the size of each decompressed chunk checked (a restore's progress meter)."""
    # <storage>/<job>/<folder>/<name>
    root, job = (path.parents[2], path.parents[1].name) if len(path.parents) > 2 else (path.parent, "")
    partial = path.name.endswith(PARTIAL_SUFFIX)
    if (partial or not manifest_path(path).exists()) and catalog.is_being_written(root, job, path):
        return _in_progress(path, job)
    if partial:
        return Finding(path, PARTIAL, "left by an interrupted run; the next run of its job removes it")
    try:
        size = path.lstat().st_size
    except FileNotFoundError:
        return Finding(path, MISSING, "file does not exist")
    if not manifest_path(path).exists():
        return Finding(path, INCOMPLETE, "no manifest; it never counted as a backup")
    inside = storage is not None and path.parent.parent.parent == storage
    parsed = parse_backup_filename(path.name)
    record = catalog.classify(path, parsed.created_at if parsed else None, size, in_storage=inside)
    return _verdict_of(record, on_chunk)


def _verdict_of(record: catalog.BackupRecord, on_chunk: Callable[[int], None] | None = None) -> Finding:
    if record.status == catalog.GOOD and record.manifest is not None:
        return _check_against(record.path, record.manifest, on_chunk)
    if record.status == catalog.IN_PROGRESS:
        return _in_progress(record.path, record.job)
    if record.status == catalog.PARTIAL:
        return Finding(record.path, PARTIAL, "left by an interrupted run; the next run of its job removes it")
    if record.status == catalog.INVALID:
        return Finding(record.path, INVALID, f"{record.problem}; it never counted as a backup")
    return Finding(record.path, INCOMPLETE, f"{record.problem or 'no manifest'}; it never counted as a backup")


def _in_progress(path: Path, job: str) -> Finding:
    return Finding(path, IN_PROGRESS, f"being written by a running backup of job {job}")


def _check_against(path: Path, manifest: Manifest, on_chunk: Callable[[int], None] | None = None) -> Finding:
    try:
        check = engine_class(manifest.engine).new_check(manifest.format, manifest.tool)
    except AgentError as error:
        return Finding(path, CORRUPT, str(error))
    raw_bytes = 0
    try:
        with path.open("rb") as stream:
            hashing = _HashingReader(stream)
            reader = open_decompressed(hashing, manifest.compression)  # type: ignore[arg-type]
            while chunk := reader.read(_READ_SIZE):
                raw_bytes += len(chunk)
                check.feed(chunk)
                if on_chunk is not None:
                    on_chunk(len(chunk))
            while hashing.read(_READ_SIZE):
                pass  # hash any trailing bytes the decompressor did not need
    except Exception as error:
        check.abort()
        digest = hashing.hash.hexdigest() if "hashing" in locals() else ""
        status = TAMPERED if digest and digest != manifest.sha256 else CORRUPT
        return Finding(path, status, f"cannot be read to its end: {error}")
    if hashing.hash.hexdigest() != manifest.sha256:
        check.abort()
        return Finding(path, TAMPERED, "sha256 differs from the manifest: the file was changed after it was written")
    try:
        check.finish()
    except AgentError as error:
        return Finding(path, CORRUPT, str(error))
    problem = _content_problem(check, manifest, raw_bytes)
    return Finding(path, CORRUPT, problem) if problem else Finding(path, OK)


def _content_problem(check: StreamCheck, manifest: Manifest, raw_bytes: int) -> str | None:
    """A whole, well-formed stream that still is not what its manifest says: its length, or rows of a
    table its recorded table scope leaves out (counted by the check as it read them)."""
    if raw_bytes != manifest.raw_bytes:
        return f"{raw_bytes} bytes decompressed, the manifest says {manifest.raw_bytes}"
    if manifest.scope is None or not isinstance(check, RowCountingCheck):
        return None
    counts = check.row_counts()
    wrong = rows_out_of_scope(counts, manifest.scope.excluded, manifest.scope.schema_only) if counts else []
    return f"holds rows of tables its recorded scope leaves out: {', '.join(wrong[:5])}" if wrong else None


def _keys(storage: Path, records: list[catalog.BackupRecord]) -> dict[str, tuple[bytes, str]]:
    """Each good backup's (file key, manifest sha256), taken before any byte of it is read."""
    keys: dict[str, tuple[bytes, str]] = {}
    for record in records:
        if record.status != catalog.GOOD or record.summary is None:
            continue
        try:
            key = catalog_index.file_key(os.lstat(record.path), os.lstat(manifest_path(record.path)))
        except OSError:
            continue  # gone meanwhile: checked, and found missing or unreadable
        keys[f"{record.job}/{record.folder}/{record.path.name}"] = (key, record.summary.sha256)
    return keys


def _read_again(record: catalog.BackupRecord) -> catalog.BackupRecord:
    """A good record of the indexed listing with its manifest read and judged again, for its check."""
    try:
        size = os.lstat(record.path).st_size
    except FileNotFoundError:
        return record  # checked as it is: found missing
    return catalog.classify(record.path, record.created_at, size)


def verify_storage(storage: Path, job: str | None = None, *, sample: verified.Sample | None = None) -> list[Finding]:
    """Every file under storage (or one job), plus the journal's chain and missing files.

    With `sample` (`verify --incremental`), a good backup is re-read only when it is new or changed
    since its last good check (`.agent/verified`), or among the sample of the least recently
    verified; the others are UNCHANGED. Every run records what it found good.
    """
    findings: list[Finding] = []
    present: set[str] = set()
    # the listing from the catalog index; every backup re-read below has its manifest read again,
    # one at a time, so 20,000 manifests are never all in memory
    records = catalog.scan(storage, job, indexed=True)
    keys = _keys(storage, records)
    record_before = verified.load(storage)
    now = time.time_ns()
    chosen: set[str] | None = None
    if sample is not None:
        changed, sampled = verified.choose(keys, record_before, sample, now)
        chosen = changed | sampled
    passed: dict[str, verified.Verified] = {}
    for record in records:
        where = f"{record.job}/{record.folder}/{record.path.name}"
        present.add(where)
        if chosen is not None and where in keys and where not in chosen:
            findings.append(Finding(record.path, UNCHANGED, "unchanged since its last good check"))
            continue
        checked = _read_again(record) if record.status == catalog.GOOD else record
        finding = _verdict_of(checked)
        findings.append(finding)
        if finding.status == OK and where in keys and checked.manifest is not None:
            passed[where] = verified.Verified(keys[where][0], checked.manifest.sha256, now)
    scope = "" if job is None else f"{job}/"
    dropped = {
        path
        for path in record_before
        if path.startswith(scope) and path not in passed and (chosen is None or path not in keys or path in chosen)
    }
    verified.update(storage, passed, dropped)
    entries, problems = journal.read_entries(storage)
    journal_file = journal.journal_path(storage)
    findings.extend(Finding(journal_file, JOURNAL, f"line {p.line_number}: {p.message}") for p in problems)
    created: dict[str, bool] = {}
    for entry in entries:
        relative = entry.path
        if relative is None:
            continue
        if entry.event == journal.Event.CREATED:
            created[relative] = True
        elif entry.event == journal.Event.DELETED:
            created.pop(relative, None)
        elif entry.event == journal.Event.RETIRED:  # `backup-agent retire`: its files may go by hand
            prefix = relative.rstrip("/") + "/"
            created = {path: True for path in created if not path.startswith(prefix)}
    for relative in created:
        # published by a running backup since the scan: there now, so not missing
        gone = relative not in present and not os.path.lexists(storage / relative)
        if gone and (job is None or relative.split("/", 1)[0] == job):
            findings.append(Finding(storage / relative, MISSING, "the journal records it, but it is gone"))
    return findings
