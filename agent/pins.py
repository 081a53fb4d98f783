"""Pinned backups: files retention never deletes, listed in `<storage>/.agent/pins.json`.

The list holds paths relative to the storage root, is replaced atomically, and is changed only
under the deletion lock, so a pin and a deletion of the same file can never cross.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from agent.errors import UsageError
from agent.manifest import manifest_path
from agent.naming import MANIFEST_SUFFIX, PARTIAL_SUFFIX, parse_backup_filename
from agent.storage import waiting_lock
from agent.writer import PRIVATE_DIRECTORY_MODE, ensure_directory, replace_file_atomically

PINS_FORMAT_VERSION = 1


def pins_path(storage: Path) -> Path:
    return storage / ".agent" / "pins.json"


@contextlib.contextmanager
def deletion_lock(storage: Path) -> Iterator[None]:
    """A blocking, storage-wide lock held while backups are deleted or pins change."""
    directory = ensure_directory(storage / ".agent" / "locks", PRIVATE_DIRECTORY_MODE)
    with waiting_lock(directory / "retention.lock"):
        yield


def load(storage: Path) -> dict[str, str]:
    """Pinned paths (relative to the storage root) and when each was pinned; {} when none."""
    try:
        raw = json.loads(pins_path(storage).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        # An unreadable pin list must not let retention delete what a user pinned.
        raise UsageError(f"{pins_path(storage)} cannot be read ({error}); fix or remove it") from None
    pins = raw.get("pins") if isinstance(raw, dict) else None
    if not isinstance(pins, dict):
        raise UsageError(f"{pins_path(storage)} is not a pin list; fix or remove it")
    return {str(path): str(moment) for path, moment in pins.items()}


def _save(storage: Path, pins: dict[str, str]) -> None:
    ensure_directory(storage / ".agent", PRIVATE_DIRECTORY_MODE)
    data = {"format_version": PINS_FORMAT_VERSION, "pins": dict(sorted(pins.items()))}
    replace_file_atomically(pins_path(storage), (json.dumps(data, indent=2) + "\n").encode())


def relative_backup_path(storage: Path, path: Path) -> str:
    """The storage-relative path of the backup `path` names (its data file or its manifest).

    A relative `path` that does not exist from the working directory is read relative to storage.
    """
    candidate = path if path.is_absolute() or path.exists() else storage / path
    if candidate.name.endswith(PARTIAL_SUFFIX):
        raise UsageError(f"{path} is an unfinished dump, not a backup")
    if candidate.name.endswith(MANIFEST_SUFFIX):
        candidate = candidate.with_name(candidate.name.removesuffix(MANIFEST_SUFFIX))
    root = Path(os.path.realpath(storage))
    resolved = Path(os.path.realpath(candidate))
    if not resolved.is_relative_to(root):
        raise UsageError(f"{path} is not under the storage path {storage}")
    relative = resolved.relative_to(root)
    if len(relative.parts) != 3 or parse_backup_filename(relative.name) is None:
        raise UsageError(f"{path} is not a backup file (expected <storage>/<job>/<database>/<backup file>)")
    return relative.as_posix()


def pin(storage: Path, path: Path) -> str:
    """Protect a backup from every deletion; returns its storage-relative path."""
    relative = relative_backup_path(storage, path)
    if not (storage / relative).is_file():
        raise UsageError(f"{path}: no such backup")
    if not manifest_path(storage / relative).is_file():
        raise UsageError(f"{path} has no manifest (an incomplete file); only backups can be pinned")
    with deletion_lock(storage):
        pins = load(storage)
        pins.setdefault(relative, datetime.now(UTC).isoformat(timespec="seconds"))
        _save(storage, pins)
    return relative


def unpin(storage: Path, path: Path) -> bool:
    """Let retention treat a backup like any other again; False when it was not pinned."""
    relative = relative_backup_path(storage, path)
    with deletion_lock(storage):
        pins = load(storage)
        if pins.pop(relative, None) is None:
            return False
        _save(storage, pins)
    return True
