"""The catalog index (`.agent/catalog.index`) only ever saves reading a manifest: the views list
exactly what reading every manifest lists, and no edit of a backup, its manifest or the index itself
makes a changed or deleted backup look good.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from agent_helpers import data_files, run_cli, write_config
from fault_helpers import sqlite_database, sqlite_job

from agent import catalog, catalog_index
from agent.config import load_config
from agent.manifest import manifest_path
from agent.naming import backup_filename, parse_backup_filename
from agent.prune import take_inventory


def _storage_with_backups(tmp_path: Path, runs: int = 3) -> tuple[Path, Path]:
    """Real backups of two SQLite databases (the real writer and manifests); the config and the storage."""
    first = sqlite_database(tmp_path / "app.db")
    second = sqlite_database(tmp_path / "other.db", rows=50)
    config = write_config(tmp_path, {"app": sqlite_job(first, second)}, storage={"compression": "none"})
    for _ in range(runs):
        assert run_cli(config, "backup") == 0
    return config, tmp_path / "storage"


def _seen(records: list[catalog.BackupRecord]) -> list[tuple[Any, ...]]:
    """Everything a view shows of a record (the indexed scan leaves the full manifest unset)."""
    return [
        (r.job, r.folder, r.path, r.created_at, r.status, r.problem, r.summary, r.allocated, r.database, r.kind)
        for r in records
    ]


def _index_file(storage: Path) -> Path:
    return storage / ".agent" / catalog_index.INDEX_NAME


def _replace_manifest(data_file: Path, **changes: Any) -> None:
    """Write an edited manifest in place of the old one, as someone with write access to storage could."""
    path = manifest_path(data_file)
    document = json.loads(path.read_text())
    document.update(changes)
    path.chmod(0o640)
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def test_an_indexed_scan_lists_the_same_as_reading_every_manifest_cold_and_warm(tmp_path: Path) -> None:
    _config, storage = _storage_with_backups(tmp_path)
    first = data_files(storage)[0]
    _replace_manifest(first, stored_bytes=1)  # one invalid backup among the good ones
    parsed = parse_backup_filename(first.name)
    assert parsed is not None
    stray = backup_filename(parsed.job, parsed.component, parsed.created_at, parsed.extension, 9)
    (first.parent / stray).write_bytes(b"no manifest")  # one incomplete
    full = _seen(catalog.scan(storage))
    assert not _index_file(storage).exists()
    cold = _seen(catalog.scan(storage, indexed=True))
    assert _index_file(storage).exists()
    warm = _seen(catalog.scan(storage, indexed=True))
    assert cold == full and warm == full
    assert {record[4] for record in full} == {catalog.GOOD, catalog.INVALID, catalog.INCOMPLETE}
    assert catalog.scan(storage, "app", indexed=True) and _seen(catalog.scan(storage, indexed=True)) == full


def test_prune_dry_run_plans_the_same_with_and_without_the_index(tmp_path: Path) -> None:
    config_path, storage = _storage_with_backups(tmp_path, runs=4)
    config = load_config(config_path)
    catalog.scan(storage, indexed=True)  # the index exists and is warm
    assert take_inventory(config).series == take_inventory(config, indexed=True).series
    assert run_cli(config_path, "prune", "--dry-run", "--json") == 0


def test_a_manifest_edited_after_indexing_is_invalid_in_the_indexed_scan(tmp_path: Path) -> None:
    _config, storage = _storage_with_backups(tmp_path)
    catalog.scan(storage, indexed=True)
    victim = data_files(storage)[0]
    _replace_manifest(victim, raw_bytes=0)
    found = {record.path: record for record in catalog.scan(storage, indexed=True)}
    assert found[victim].status == catalog.INVALID
    assert "raw_bytes" in found[victim].problem
    assert _seen(catalog.scan(storage, indexed=True)) == _seen(catalog.scan(storage))


def test_a_data_file_changed_in_place_with_its_size_and_times_kept_is_not_taken_from_the_index(tmp_path: Path) -> None:
    _config, storage = _storage_with_backups(tmp_path)
    catalog.scan(storage, indexed=True)
    victim = manifest_path(data_files(storage)[0])
    before = victim.stat()
    document = json.loads(victim.read_text())
    text = victim.read_text().replace(document["sha256"], "0" * 64)  # same length: same size
    victim.chmod(0o640)
    victim.write_text(text)
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))  # mtime put back; ctime cannot be
    assert victim.stat().st_size == before.st_size and victim.stat().st_mtime_ns == before.st_mtime_ns
    found = {record.path: record for record in catalog.scan(storage, indexed=True)}
    summary = found[data_files(storage)[0]].summary
    assert summary is not None and summary.sha256 == "0" * 64  # read again, not the indexed sha256


def test_a_deleted_backup_never_appears_whatever_the_index_says(tmp_path: Path) -> None:
    _config, storage = _storage_with_backups(tmp_path)
    catalog.scan(storage, indexed=True)
    victim = data_files(storage)[0]
    victim.unlink()
    manifest_path(victim).unlink()
    assert victim not in {record.path for record in catalog.scan(storage, indexed=True)}
    other = data_files(storage)[1]
    other.unlink()  # the manifest stays: never good
    found = {record.path: record for record in catalog.scan(storage, indexed=True)}
    assert other not in found


def test_an_edited_index_is_ignored_and_never_makes_an_invalid_backup_good(tmp_path: Path) -> None:
    _config, storage = _storage_with_backups(tmp_path)
    victim = data_files(storage)[0]
    _replace_manifest(victim, job="someone-else")
    catalog.scan(storage, indexed=True)
    index = _index_file(storage)
    raw = index.read_bytes()
    tag, payload = raw[:32], raw[32:]
    document = catalog_index._decoder.decode(payload)
    key = f"app/{victim.parent.name}/{victim.name}"
    assert not document.entries[key].good
    good_one = next(entry for entry in document.entries.values() if entry.good)
    forged = {**document.entries, key: catalog_index.Entry(document.entries[key].key, True, "", good_one.summary)}
    index.write_bytes(tag + catalog_index._encoder.encode(catalog_index._Document(1, document.root, forged)))
    found = {record.path: record for record in catalog.scan(storage, indexed=True)}
    assert found[victim].status == catalog.INVALID
    index.write_bytes(raw[:-7])  # cut short
    assert _seen(catalog.scan(storage, indexed=True)) == _seen(catalog.scan(storage))


def test_an_index_made_for_another_storage_path_is_not_used(tmp_path: Path) -> None:
    _config, storage = _storage_with_backups(tmp_path, runs=1)
    catalog.scan(storage, indexed=True)
    moved = tmp_path / "moved"
    storage.rename(moved)
    victim = data_files(moved)[0]
    assert catalog_index.load(moved / ".agent", str(moved)) == {}
    records = {record.path: record for record in catalog.scan(moved, indexed=True)}
    assert str(moved) in records[victim].path.as_posix()
    assert catalog_index.load(moved / ".agent", str(moved))  # rebuilt for its new path


def test_an_index_or_key_that_others_may_read_is_not_used(tmp_path: Path) -> None:
    _config, storage = _storage_with_backups(tmp_path, runs=1)
    catalog.scan(storage, indexed=True)
    key = storage / ".agent" / catalog_index.KEY_NAME
    assert catalog_index.load(storage / ".agent", str(storage))
    key.chmod(0o644)
    assert catalog_index.load(storage / ".agent", str(storage)) == {}
    catalog.scan(storage, indexed=True)  # never replaces a key it does not trust
    assert key.stat().st_mode & 0o777 == 0o644


def test_a_record_made_from_a_manifest_in_hand_counts_its_size_in_the_run_s_inventory(tmp_path: Path) -> None:
    config_path, storage = _storage_with_backups(tmp_path, runs=2)
    config = load_config(config_path)
    scanned = next(record for record in catalog.scan(storage) if record.status == catalog.GOOD)
    assert scanned.manifest is not None
    # as the runner adds the backup it just published, without a new scan
    added = catalog.BackupRecord(
        scanned.job, scanned.folder, scanned.path, scanned.created_at, catalog.GOOD, scanned.manifest
    )
    assert added.summary == scanned.summary and added.database == scanned.manifest.database
    key = f"{scanned.job}/{scanned.folder}/{scanned.path.name}"
    inventory = take_inventory(config).changed(config, removed=[key]).changed(config, added=[added])
    assert scanned.manifest.stored_bytes in inventory.history(scanned.job, scanned.folder)


def test_status_says_the_same_from_the_index_as_from_every_manifest(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from agent import status

    config_path, storage = _storage_with_backups(tmp_path, runs=3)
    config = load_config(config_path)
    now = datetime.now(UTC)
    assert not _index_file(storage).exists()
    from_manifests = status.collect(config, now=now)
    assert _index_file(storage).exists()
    from_index = status.collect(config, now=now)
    # the disk's figures move on their own (the index itself is a file in storage; other writers)
    assert {key: value for key, value in from_index.items() if key != "storage"} == {
        key: value for key, value in from_manifests.items() if key != "storage"
    }
    assert all(database["backups"] >= 1 for database in from_index["jobs"][0]["databases"])
    assert len(from_index["jobs"][0]["databases"]) == 2
