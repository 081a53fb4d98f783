"""`verify --incremental` for a daily cron: backups new or changed since their last good check are
always re-read, the rotating sample reaches every other one in turn, and the record of what was
verified (`.agent/verified`) is untrusted: an edited one only makes the run re-read everything.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import pytest
from agent_helpers import data_files, run_cli, write_config
from fault_helpers import sqlite_database, sqlite_job

from agent import catalog_index, verified
from agent.manifest import manifest_path


def _backups(tmp_path: Path, runs: int) -> Path:
    database = sqlite_database(tmp_path / "app.db")
    config = write_config(
        tmp_path,
        {"app": sqlite_job(database)},
        storage={"compression": "none"},
        sections={"retention": {"keep_last": 50, "keep_min": 1}},
    )
    for _ in range(runs):
        _backup_a_change(config, database)
    return config


def _backup_a_change(config: Path, database: Path) -> None:
    with sqlite3.connect(database) as connection:
        connection.execute("INSERT INTO item (body) VALUES (?)", (os.urandom(16),))
    connection.close()
    assert run_cli(config, "backup") == 0


def _verify(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, str], str]:
    capsys.readouterr()
    code = run_cli(config, "verify", "--json", *args)
    output = json.loads(capsys.readouterr().out)
    return code, {Path(item["path"]).name: item["status"] for item in output["findings"]}, output["summary"]


def _flip_a_byte(path: Path, *, keep_times: bool = False) -> None:
    before = path.stat()
    path.chmod(0o640)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    path.chmod(0o440)
    if keep_times:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def _relative(path: Path) -> str:
    return "/".join(path.parts[-3:])


def test_a_backup_new_since_the_last_verify_is_read_and_a_change_to_it_found(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _backups(tmp_path, runs=2)
    code, found, _ = _verify(config, capsys)
    assert code == 0 and set(found.values()) == {"ok"}
    before = set(data_files(tmp_path / "storage"))
    _backup_a_change(config, tmp_path / "app.db")
    (newest,) = set(data_files(tmp_path / "storage")) - before
    _flip_a_byte(newest)
    code, found, summary = _verify(config, capsys, "--incremental", "--sample", "0")
    assert code == 1
    assert found[newest.name] == "tampered"
    assert sorted(found.values()) == ["tampered", "unchanged", "unchanged"]
    assert "2 unchanged since their last good check" in summary


def test_a_verified_backup_changed_with_its_size_and_mtime_kept_is_read_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _backups(tmp_path, runs=3)
    assert _verify(config, capsys, "--incremental")[0] == 0  # no record yet: everything is read
    victim = sorted(data_files(tmp_path / "storage"))[0]
    _flip_a_byte(victim, keep_times=True)
    code, found, _ = _verify(config, capsys, "--incremental", "--sample", "0")
    assert code == 1 and found[victim.name] == "tampered"
    code, found, _ = _verify(config, capsys, "--incremental", "--sample", "0")
    assert found[victim.name] == "tampered"  # a failed check is never recorded as good


def test_the_rotating_sample_reaches_a_backup_that_rotted_without_any_change_to_its_metadata(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _backups(tmp_path, runs=4)
    storage = tmp_path / "storage"
    assert _verify(config, capsys)[0] == 0
    victim = sorted(data_files(storage))[1]
    _flip_a_byte(victim)
    # bit rot under the filesystem: the bytes change, the metadata the record keys on does not
    record = verified.load(storage)
    seen = record[_relative(victim)]
    key = catalog_index.file_key(victim.lstat(), manifest_path(victim).lstat())
    verified.update(storage, {_relative(victim): verified.Verified(key, seen.sha256, time.time_ns())}, set())
    results = []
    for _ in range(4):  # one backup re-read per run: the four in four runs, the rotted one among them
        code, found, _ = _verify(config, capsys, "--incremental", "--sample", "1")
        assert sorted(found.values()).count("unchanged") == 3
        results.append((code, found[victim.name]))
    assert (1, "tampered") in results


def test_an_edited_record_or_a_time_in_the_future_makes_the_run_read_those_backups(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _backups(tmp_path, runs=2)
    storage = tmp_path / "storage"
    assert _verify(config, capsys)[0] == 0
    record_file = storage / ".agent" / verified.RECORD_NAME
    raw = bytearray(record_file.read_bytes())
    raw[-1] ^= 0x01
    record_file.write_bytes(bytes(raw))
    _, found, _ = _verify(config, capsys, "--incremental", "--sample", "0")
    assert set(found.values()) == {"ok"}  # the record failed its tag: everything was read
    victim = sorted(data_files(storage))[0]
    seen = verified.load(storage)[_relative(victim)]
    future = verified.Verified(seen.key, seen.sha256, time.time_ns() + 10**16)
    verified.update(storage, {_relative(victim): future}, set())
    _, found, _ = _verify(config, capsys, "--incremental", "--sample", "0")
    assert found[victim.name] == "ok"


def test_sample_forms_and_misuse_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert verified.parse_sample("200") == verified.Sample(count=200)
    assert verified.parse_sample("15%") == verified.Sample(share=0.15)
    assert verified.Sample(share=0.15).size(20) == 3
    assert verified.Sample(count=200).size(20) == 20
    for bad in ("x", "150%", "-1"):
        with pytest.raises(ValueError, match="--sample"):
            verified.parse_sample(bad)
    config = _backups(tmp_path, runs=1)
    assert run_cli(config, "verify", "--sample", "5") == 2
    assert run_cli(config, "verify", "--incremental", "--sample", "lots") == 2
    assert run_cli(config, "verify", "--incremental", str(data_files(tmp_path / "storage")[0])) == 2
    assert "--sample" in capsys.readouterr().err
