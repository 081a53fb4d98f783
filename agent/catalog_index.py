"""A memo of what each manifest said, so `status`, `list` and `prune --dry-run` need not read 20,000 of them.

`<storage>/.agent/catalog.index` maps a backup's storage-relative path to what `catalog.classify`
found (good, or invalid and why, and the few manifest fields those views show), keyed by the
lstat of both files: inode, size, mtime and ctime. Any write, rename or replacement of either file
changes its key (ctime cannot be set back), so the entry no longer matches and the manifest is read
again; a deleted file is never listed, whatever the index says. The whole file carries a keyed
BLAKE2b tag (the key in `.agent/catalog.key`, 0600): an edited, truncated or copied-in index fails
it and is ignored as if absent. Both files must be the agent's own (owner, mode), or neither is used.

The index only ever saves reading a manifest for a view, or for a backup `verify` does not re-read
(it reads the manifest of each one it does). Deciding what to delete (prune, retention after a
dump, the just-in-time room), restoring and drilling read every manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import stat
import struct
from datetime import datetime
from pathlib import Path

import msgspec

from agent.naming import TargetKind
from agent.writer import replace_file_atomically

INDEX_NAME = "catalog.index"
KEY_NAME = "catalog.key"
_KEY_BYTES = 32
_TAG_BYTES = 32
_VERSION = 3  # 2: the key is a digest; 3: no engine, kind an enum
_MAX_INDEX_BYTES = 1 << 30

_FILE_KEY = struct.Struct("<4q")  # inode, size, mtime_ns, ctime_ns


class Summary(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """The fields of a good backup's manifest that the views show (a few hundred bytes, not a few KiB)."""

    kind: TargetKind  # decoded as the enum's own members: no string per backup
    database: str
    started_at: str
    stored_bytes: int
    raw_bytes: int
    sha256: str
    duration_seconds: float
    warnings: tuple[str, ...] = ()
    label: str | None = None
    keep_until: datetime | None = None  # a labelled backup: kept like a pin until then


class Entry(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """What classify found for one data file and its manifest, with both files' keys at the time."""

    key: bytes  # file_key of the data file, then of the manifest
    good: bool
    problem: str = ""
    summary: Summary | None = None


class _Document(msgspec.Struct):
    version: int
    root: str  # the storage path the problems name: an index of another path is not used
    entries: dict[str, Entry]


_decoder = msgspec.msgpack.Decoder(_Document)
_encoder = msgspec.msgpack.Encoder()


def file_key(data: os.stat_result, manifest: os.stat_result) -> bytes:
    """Both files' identity and last change (any write, rename or replacement changes it), as a
    16-byte BLAKE2b digest: 20,000 keys take 1 MB less than the 64 packed bytes would."""
    packed = _FILE_KEY.pack(data.st_ino, data.st_size, data.st_mtime_ns, data.st_ctime_ns) + _FILE_KEY.pack(
        manifest.st_ino, manifest.st_size, manifest.st_mtime_ns, manifest.st_ctime_ns
    )
    return hashlib.blake2b(packed, digest_size=16).digest()


def _own_private_file(descriptor: int) -> bool:
    info = os.fstat(descriptor)
    return stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o077


def _read_private(path: Path, limit: int) -> bytes | None:
    """The file's bytes when it is a regular file of ours that no one else may read or write, else None."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not _own_private_file(descriptor):
            return None
        size = os.fstat(descriptor).st_size
        if size > limit:
            return None
        chunks = []
        while size > 0 and (chunk := os.read(descriptor, size)):
            chunks.append(chunk)
            size -= len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(descriptor)


def _key(agent_directory: Path, *, create: bool) -> bytes | None:
    path = agent_directory / KEY_NAME
    key = _read_private(path, _KEY_BYTES)
    if key is not None and len(key) == _KEY_BYTES:
        return key
    if not create or key is not None or os.path.lexists(path):
        return None  # a key of the wrong size or owner is not replaced: whoever put it there may read the new one
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        fresh = os.urandom(_KEY_BYTES)
        os.write(descriptor, fresh)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    return fresh


def _tag(key: bytes, payload: bytes | memoryview) -> bytes:
    return hashlib.blake2b(payload, key=key, digest_size=_TAG_BYTES).digest()


def read_sealed(agent_directory: Path, name: str) -> memoryview | None:
    """The payload of an agent-own file in `.agent` whose keyed tag holds; None otherwise."""
    key = _key(agent_directory, create=False)
    if key is None:
        return None
    data = _read_private(agent_directory / name, _MAX_INDEX_BYTES)
    if data is None or len(data) < _TAG_BYTES:
        return None
    view = memoryview(data)  # no copy of a few MiB
    tag, payload = view[:_TAG_BYTES], view[_TAG_BYTES:]
    return payload if hmac.compare_digest(tag, _tag(key, payload)) else None


def write_sealed(agent_directory: Path, name: str, payload: bytes) -> None:
    """Replace the file with `payload` under its tag, best effort: a read-only storage or another
    user's `.agent` just keeps none."""
    try:
        info = os.lstat(agent_directory)
    except OSError:
        return
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        return
    key = _key(agent_directory, create=True)
    if key is None:
        return
    with contextlib.suppress(OSError):
        replace_file_atomically(agent_directory / name, _tag(key, payload) + payload, 0o600)


def load(agent_directory: Path, root: str) -> dict[str, Entry]:
    """The index's entries; empty when it is absent, not ours, or fails its tag."""
    payload = read_sealed(agent_directory, INDEX_NAME)
    if payload is None:
        return {}
    try:
        document = _decoder.decode(payload)
    except msgspec.DecodeError:
        return {}
    return document.entries if document.version == _VERSION and document.root == root else {}


def save(agent_directory: Path, root: str, entries: dict[str, Entry]) -> None:
    """Replace the index (best effort)."""
    write_sealed(agent_directory, INDEX_NAME, _encoder.encode(_Document(_VERSION, root, entries)))
