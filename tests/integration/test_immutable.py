"""`storage.immutable = true`: published files get the immutable attribute; retention can still delete."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_helpers import data_files, run_cli, stored_files, write_config
from servers.common import skip_or_fail

from agent.immutable import clear_immutable, is_immutable, set_immutable


@pytest.fixture
def storage_with_attributes(tmp_path: Path) -> Iterator[Path]:
    probe = tmp_path / "probe"
    probe.write_text("x")
    try:
        set_immutable(probe)
    except OSError as error:
        skip_or_fail(f"cannot set the immutable attribute here (needs root on ext4/xfs/btrfs): {error}")
    clear_immutable(probe)
    yield tmp_path
    for path in stored_files(tmp_path / "storage"):
        clear_immutable(path)


def test_published_files_and_manifests_are_immutable_and_prune_still_deletes_them(
    storage_with_attributes: Path,
) -> None:
    tmp_path = storage_with_attributes
    database = tmp_path / "app.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE t (x)")
    config = write_config(
        tmp_path,
        {
            "app": {
                "engine": "sqlite",
                "databases": [str(database)],
                "retention": {"keep_last": 1, "keep_min": 1, "keep_daily": 0},
            }
        },
        storage={"immutable": True},
    )
    assert run_cli(config, "backup") == 0
    (first,) = data_files(tmp_path / "storage")
    assert is_immutable(first) and is_immutable(first.with_name(first.name + ".json"))
    with pytest.raises(PermissionError):
        first.unlink()
    assert run_cli(config, "backup") == 0
    remaining = data_files(tmp_path / "storage")
    assert first not in remaining and len(remaining) == 1
