"""Labelled backups (`backup --label NAME --keep D`): in the manifest, kept like a pin until the keep
runs out (then retention treats it like any other), shown by `list`, found by `restore --label`.

The agent runs under a frozen wall clock (libfaketime), one moment per command, so "two days later"
is a real run two days later for retention.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from agent_helpers import data_files, write_config
from fault_helpers import frozen_clock, run_agent, sqlite_database, sqlite_job

from agent.manifest import manifest_path, read_manifest

KEEP_ONE = {"keep_last": 1, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0, "keep_min": 1}


def _at(config: Path, moment: str, *args: str) -> Any:
    return run_agent(config, *args, env=frozen_clock(moment))


def _rows(database: Path) -> int:
    with sqlite3.connect(database) as connection:
        count: int = connection.execute("SELECT count(*) FROM item").fetchone()[0]
    connection.close()
    return count


def _labelled(storage: Path) -> list[Path]:
    return [path for path in data_files(storage) if read_manifest(manifest_path(path)).label is not None]


def test_a_labelled_backup_is_kept_until_its_keep_runs_out_and_restore_finds_it(tmp_path: Path) -> None:
    database = sqlite_database(tmp_path / "app.db")
    job = sqlite_job(database, retention=KEEP_ONE)
    config = write_config(tmp_path, {"app": job}, storage={"compression": "none"})
    storage = tmp_path / "storage"

    made = _at(config, "2031-05-01 10:00:00", "backup", "--label", "before-upgrade", "--keep", "2d")
    assert made.returncode == 0, made.stderr
    (labelled,) = data_files(storage)
    manifest = read_manifest(manifest_path(labelled))
    assert manifest.label == "before-upgrade"
    assert manifest.keep_until is not None and manifest.keep_until.isoformat().startswith("2031-05-03T10:00:0")

    with sqlite3.connect(database) as connection:  # the upgrade
        connection.execute("INSERT INTO item (body) VALUES (x'00')")
    connection.close()
    for moment in ("2031-05-01 11:00:00", "2031-05-02 12:00:00"):
        assert _at(config, moment, "backup").returncode == 0
    # keep_last = 1 let the plain 11:00 backup go; the label holds the before-upgrade one
    assert len(data_files(storage)) == 2
    assert _labelled(storage) == [labelled]

    listing = json.loads(_at(config, "2031-05-02 12:00:01", "list", "--json").stdout)
    rows = {row["path"]: row for row in listing}
    assert rows[str(labelled)]["label"] == "before-upgrade"
    assert rows[str(labelled)]["keep_until"].startswith("2031-05-03T10:00:0")
    only = json.loads(_at(config, "2031-05-02 12:00:01", "list", "--label", "before-upgrade", "--json").stdout)
    assert [row["path"] for row in only] == [str(labelled)]
    text = _at(config, "2031-05-02 12:00:01", "list").stdout
    assert "[label before-upgrade until 2031-05-03]" in text

    plan = json.loads(_at(config, "2031-05-02 12:00:02", "prune", "--dry-run", "--json").stdout)
    (decision,) = [item for item in plan["decisions"] if item["path"].endswith(labelled.name)]
    assert decision["action"] == "keep" and "labelled" in decision["rule"].split(",")

    out = tmp_path / "before.db"
    restored = _at(config, "2031-05-02 12:00:03", "restore", "--job", "app", "--database", str(database),
                   "--label", "before-upgrade", "--to-file", str(out))  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert _rows(out) == 200 and _rows(database) == 201  # the state before the change

    missing = _at(config, "2031-05-02 12:00:04", "restore", "--job", "app", "--database", str(database),
                  "--label", "before-downgrade", "--to-file", str(tmp_path / "none.db"))  # fmt: skip
    assert missing.returncode == 2 and "no good backup labelled 'before-downgrade'" in missing.stderr

    # a day after the keep ran out, the label no longer protects it: keep_last = 1 lets it go
    pruned = _at(config, "2031-05-04 10:00:00", "prune")
    assert pruned.returncode == 0, pruned.stderr
    assert _labelled(storage) == []
    assert len(data_files(storage)) == 1


def test_a_bad_label_or_keep_is_refused_before_anything_runs(tmp_path: Path) -> None:
    database = sqlite_database(tmp_path / "app.db")
    config = write_config(tmp_path, {"app": sqlite_job(database)}, storage={"compression": "none"})
    for arguments, expected in (
        (("--label", "../../etc"), "is not a label"),
        (("--label", "before upgrade"), "is not a label"),
        (("--label", "x" * 65), "is not a label"),
        (("--keep", "30d"), "--keep needs --label"),
        (("--label", "ok", "--keep", "soon"), "--keep: expected a duration"),
    ):
        result = run_agent(config, "backup", *arguments)
        assert result.returncode == 2, (arguments, result.stderr)
        assert expected in result.stderr
    assert data_files(tmp_path / "storage") == []


def test_an_edited_label_in_a_manifest_makes_the_backup_invalid_not_a_crash(tmp_path: Path) -> None:
    database = sqlite_database(tmp_path / "app.db")
    config = write_config(tmp_path, {"app": sqlite_job(database)}, storage={"compression": "none"})
    assert run_agent(config, "backup", "--label", "ok").returncode == 0
    (path,) = data_files(tmp_path / "storage")
    manifest = manifest_path(path)
    document = json.loads(manifest.read_text())
    manifest.chmod(0o600)
    manifest.write_text(json.dumps({**document, "label": "../../x", "keep_until": "tomorrow"}))
    listing = json.loads(run_agent(config, "list", "--json").stdout)
    assert [row["status"] for row in listing] == ["invalid"]
    restored = run_agent(config, "restore", "--job", "app", "--database", str(database), "--label", "ok",
                         "--to-file", str(tmp_path / "out.db"))  # fmt: skip
    assert restored.returncode == 2
