"""Re-hash stored files against their manifests and re-run the engine's structural check.

One pass over each file: the bytes are hashed as read, decompressed, and fed to the same check
the dump had to pass. With no paths, every file under storage is checked, and the journal too:
a file it says was created and never deleted, but is gone, is `missing`; an edited entry breaks
the hash chain.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from agent import catalog, journal
from agent.compression import open_decompressed
from agent.engines import engine_class
from agent.errors import AgentError
from agent.manifest import Manifest, ManifestError, manifest_path, read_manifest
from agent.naming import PARTIAL_SUFFIX

OK = "ok"
CORRUPT = "corrupt"  # the bytes do not form a whole dump
TAMPERED = "tampered"  # the bytes differ from what the agent wrote
INCOMPLETE = "incomplete"
MISSING = "missing"
PARTIAL = "partial"
JOURNAL = "journal"

_READ_SIZE = 1 << 20


@dataclass(frozen=True, slots=True)
class Finding:
    path: Path
    status: str
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


def verify_file(path: Path) -> Finding:
    if path.name.endswith(PARTIAL_SUFFIX):
        return Finding(path, PARTIAL, "left by an interrupted run; the next run of its job removes it")
    if not path.exists():
        return Finding(path, MISSING, "file does not exist")
    try:
        manifest = read_manifest(manifest_path(path))
    except ManifestError as error:
        return Finding(path, INCOMPLETE, f"no valid manifest ({error}); it never counted as a backup")
    return _check_against(path, manifest)


def _check_against(path: Path, manifest: Manifest) -> Finding:
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
    if raw_bytes != manifest.raw_bytes:
        return Finding(path, CORRUPT, f"{raw_bytes} bytes decompressed, the manifest says {manifest.raw_bytes}")
    return Finding(path, OK)


def verify_storage(storage: Path, job: str | None = None) -> list[Finding]:
    """Every file under storage (or one job), plus the journal's chain and missing files."""
    findings: list[Finding] = []
    present: set[str] = set()
    for record in catalog.scan(storage, job):
        present.add(str(record.path.relative_to(storage)))
        if record.status == catalog.GOOD and record.manifest is not None:
            findings.append(_check_against(record.path, record.manifest))
        else:
            findings.append(verify_file(record.path))
    entries, problems = journal.read_entries(storage)
    journal_file = journal.journal_path(storage)
    findings.extend(Finding(journal_file, JOURNAL, f"line {p.line_number}: {p.message}") for p in problems)
    created: dict[str, bool] = {}
    for entry in entries:
        relative = entry.get("path")
        if not isinstance(relative, str):
            continue
        if entry.get("event") == "created":
            created[relative] = True
        elif entry.get("event") == "deleted":
            created.pop(relative, None)
    for relative in created:
        if relative not in present and (job is None or relative.split("/", 1)[0] == job):
            findings.append(Finding(storage / relative, MISSING, "the journal records it, but it is gone"))
    return findings
