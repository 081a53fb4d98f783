"""What `verify` last found good, so `verify --incremental` re-reads what changed plus a rotating sample.

`<storage>/.agent/verified` holds, per backup (its storage-relative path), both files' key as the
catalog index keys them (inode, size, mtime, ctime), the manifest's sha256, and when its check
passed. It is untrusted like everything in storage: it carries the index's keyed tag (an edited,
cut or foreign record fails it, and the run re-reads everything); an entry counts only while both
keys and the sha256 are unchanged; a time in the future counts as never verified. The sample takes
the least recently verified first, so a share of 1/N re-reads every unchanged backup within N runs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import msgspec

from agent import catalog_index
from agent.errors import DumpError
from agent.storage import StorageLayout, private_folder, waiting_lock

RECORD_NAME = "verified"
DEFAULT_SAMPLE = "15%"  # of the unchanged backups per run: a daily cron re-reads each within 7 days
_VERSION = 1
_SAMPLE = re.compile(r"^(?:(?P<count>\d+)|(?P<percent>\d+(?:\.\d+)?)%)$")


class Verified(msgspec.Struct, frozen=True, array_like=True, gc=False):
    key: bytes  # catalog_index.file_key of the data file and its manifest when the check began
    sha256: str
    at: int  # when the check passed, ns since the epoch (fine enough that each run sorts after the last)


class _Document(msgspec.Struct):
    version: int
    root: str
    entries: dict[str, Verified]


_decoder = msgspec.msgpack.Decoder(_Document)
_encoder = msgspec.msgpack.Encoder()


@dataclass(frozen=True, slots=True)
class Sample:
    """How many unchanged backups an incremental run re-reads: a count, or a share of them."""

    count: int | None = None
    share: float | None = None

    def size(self, unchanged: int) -> int:
        if self.count is not None:
            return min(self.count, unchanged)
        return min(unchanged, math.ceil((self.share or 0.0) * unchanged))


def parse_sample(text: str) -> Sample:
    """`200` (backups) or `15%` (of the unchanged ones); ValueError naming the form otherwise."""
    match = _SAMPLE.match(text.strip())
    if match is None:
        raise ValueError(f"--sample: expected a count like 200 or a share like 15%, got {text!r}")
    if match["count"] is not None:
        return Sample(count=int(match["count"]))
    percent = float(match["percent"])
    if percent > 100:
        raise ValueError(f"--sample: a share is at most 100%, got {text!r}")
    return Sample(share=percent / 100)


def choose(
    candidates: Mapping[str, tuple[bytes, str]], record: Mapping[str, Verified], sample: Sample, now: int
) -> tuple[set[str], set[str]]:
    """(changed, sampled): backups new or changed since their last good check, and the sample's
    share of the others, least recently verified first. `candidates`: each good backup's (key, sha256)."""
    changed: set[str] = set()
    unchanged: list[tuple[int, str]] = []
    for path, (key, sha256) in candidates.items():
        seen = record.get(path)
        if seen is None or seen.key != key or seen.sha256 != sha256 or seen.at > now:
            changed.add(path)
        else:
            unchanged.append((seen.at, path))
    unchanged.sort()
    return changed, {path for _, path in unchanged[: sample.size(len(unchanged))]}


def _agent_directory(storage: Path) -> Path:
    return StorageLayout(storage).agent_directory


def load(storage: Path) -> dict[str, Verified]:
    """The record's entries; empty when absent, not the agent's own, for another path, or failing its tag."""
    payload = catalog_index.read_sealed(_agent_directory(storage), RECORD_NAME)
    if payload is None:
        return {}
    try:
        document = _decoder.decode(payload)
    except msgspec.DecodeError:
        return {}
    if document.version != _VERSION or document.root != str(storage.absolute()):
        return {}
    return document.entries


def update(storage: Path, passed: Mapping[str, Verified], dropped: set[str]) -> None:
    """Fold one run into the record, under a lock, keeping what other runs saved meanwhile:
    `passed` replaces entries, `dropped` (failed, changed or gone) are removed."""
    layout = StorageLayout(storage)
    if not layout.agent_directory.is_dir():
        return
    try:
        private_folder(layout.lock_file("verified").parent)
        with waiting_lock(layout.lock_file("verified")):
            entries = load(storage)
            entries = {path: entry for path, entry in entries.items() if path not in dropped}
            entries.update(passed)
            payload = _encoder.encode(_Document(_VERSION, str(storage.absolute()), entries))
            catalog_index.write_sealed(layout.agent_directory, RECORD_NAME, payload)
    except (OSError, DumpError):
        return  # best effort: the next run checks more, never less
