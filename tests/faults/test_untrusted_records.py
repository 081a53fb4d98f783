"""Everything the agent reads back from storage is untrusted: edited manifests, state, history and
journal lines are invalid records with the field named, never a traceback, a wrong prediction, or a
series whose later backups all fail. And a bug in any verb exits 70 with its traceback in the log.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import data_files, events_named, log_events, run_cli, write_config
from fault_helpers import sqlite_database, sqlite_job

from agent import cli, journal
from agent.config import load_config
from agent.manifest import manifest_path
from agent.prune import take_inventory


def _backed_up(tmp_path: Path, runs: int = 1, **job: Any) -> tuple[Path, Path]:
    """A config with one SQLite job, after `runs` good backups; the config and the database."""
    database = sqlite_database(tmp_path / "app.db")
    config = write_config(tmp_path, {"app": sqlite_job(database, **job)}, storage={"compression": "none"})
    for _ in range(runs):
        assert run_cli(config, "backup") == 0
    return config, database


def _edit_manifest(data_file: Path, **changes: Any) -> Path:
    path = manifest_path(data_file)
    document = json.loads(path.read_text())
    document.update(changes)
    path.chmod(0o640)
    path.write_text(json.dumps(document))
    return path


def _verify(config: Path, capsys: pytest.CaptureFixture[str], *paths: str) -> tuple[int, dict[str, dict[str, str]]]:
    capsys.readouterr()
    code = run_cli(config, "verify", "--json", *paths)
    findings = json.loads(capsys.readouterr().out)["findings"]
    return code, {Path(finding["path"]).name: finding for finding in findings}


# ------------------------------------------------------------------------------------------------
# Manifests (issue 14, item 6)


def test_a_manifest_with_a_wrong_type_is_invalid_in_verify_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, _database = _backed_up(tmp_path)
    (dump,) = data_files(tmp_path / "storage")
    _edit_manifest(dump, stored_bytes="x")

    code, findings = _verify(config, capsys)

    assert code == 1
    assert findings[dump.name]["status"] == "invalid"
    assert "stored_bytes" in findings[dump.name]["message"]


def test_a_manifest_with_a_wrong_type_never_stops_the_series_later_backups_nor_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, _database = _backed_up(tmp_path)
    (dump,) = data_files(tmp_path / "storage")
    _edit_manifest(dump, stored_bytes="x")

    assert run_cli(config, "backup") == 0
    assert run_cli(config, "backup") == 0
    capsys.readouterr()
    assert run_cli(config, "status", "--json") == 0
    status = json.loads(capsys.readouterr().out)

    assert not events_named(tmp_path, "backup.failed")
    (entry,) = status["jobs"][0]["databases"]
    assert entry["backups"] == 2, "the edited backup is not counted as a good one"
    assert entry["state"] == "ok"


def test_a_manifest_naming_another_job_and_a_climbing_database_is_invalid_and_not_listed_as_good(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, _database = _backed_up(tmp_path)
    (dump,) = data_files(tmp_path / "storage")
    _edit_manifest(dump, job="other", database="../../../etc/passwd")

    code, findings = _verify(config, capsys)
    assert run_cli(config, "list", "--json") == 0
    rows = json.loads(capsys.readouterr().out)

    assert code == 1
    assert findings[dump.name]["status"] == "invalid"
    assert "job" in findings[dump.name]["message"]
    assert [row["status"] for row in rows] == ["invalid"]
    assert all(row["database"] != "../../../etc/passwd" for row in rows)


def test_a_manifest_whose_database_does_not_map_to_its_folder_is_invalid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, _database = _backed_up(tmp_path)
    (dump,) = data_files(tmp_path / "storage")
    _edit_manifest(dump, database="../../../etc/passwd")

    code, findings = _verify(config, capsys, str(dump))

    assert code == 1
    assert findings[dump.name]["status"] == "invalid"
    assert "database" in findings[dump.name]["message"]


def test_a_stored_size_far_from_the_file_is_invalid_and_feeds_no_prediction(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, _database = _backed_up(tmp_path)
    (dump,) = data_files(tmp_path / "storage")
    _edit_manifest(dump, stored_bytes=50 << 30)

    code, findings = _verify(config, capsys)
    inventory = take_inventory(load_config(config))

    assert code == 1
    assert findings[dump.name]["status"] == "invalid"
    assert "stored_bytes" in findings[dump.name]["message"]
    assert inventory.history("app", dump.parent.name) == [], "no good backup, so nothing to predict from"
    assert run_cli(config, "backup") == 0
    (preflight,) = events_named(tmp_path, "retention.preflight")[-1:]
    assert preflight["predicted_bytes"] < 1 << 30


def test_an_invalid_manifest_never_holds_a_keep_last_slot_and_goes_like_an_incomplete_file(tmp_path: Path) -> None:
    config, _database = _backed_up(tmp_path, runs=1, retention={"keep_last": 2})
    (first,) = data_files(tmp_path / "storage")
    _edit_manifest(first, stored_bytes=1)

    assert run_cli(config, "backup") == 0

    assert [event["rule"] for event in events_named(tmp_path, "retention.deleted")] == ["incomplete"]
    assert first not in data_files(tmp_path / "storage")


# ------------------------------------------------------------------------------------------------
# State, history and journal lines (issue 13, item 3)


def test_edited_state_and_history_entries_are_logged_by_field_and_status_still_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, _database = _backed_up(tmp_path)
    agent_directory = tmp_path / "storage" / ".agent"
    state = json.loads((agent_directory / "state.json").read_text())
    state["jobs"]["app"]["recent_durations"] = ["slow"]
    (agent_directory / "state.json").write_text(json.dumps(state))
    history = json.loads((agent_directory / "databases.json").read_text())
    history["jobs"]["app"]["databases"][0]["failures_total"] = "many"
    (agent_directory / "databases.json").write_text(json.dumps(history))

    capsys.readouterr()
    assert run_cli(config, "status", "--json") == 0
    json.loads(capsys.readouterr().out)
    assert run_cli(config, "backup") == 0

    problems = {event["event"]: event["error"] for event in log_events(tmp_path) if "invalid_entry" in event["event"]}
    assert "recent_durations" in problems["state.invalid_entry"]
    assert "failures_total" in problems["history.invalid_entry"]


def test_a_journal_line_with_a_wrong_type_is_a_problem_naming_the_field(tmp_path: Path) -> None:
    (tmp_path / ".agent").mkdir()
    journal.append(tmp_path, journal.Event.CREATED, path="job/db/file1", bytes=10)
    path = journal.journal_path(tmp_path)
    entry = json.loads(path.read_text())
    entry["path"] = ["not", "a", "path"]
    path.write_text(json.dumps(entry, sort_keys=True) + "\n")

    entries, problems = journal.read_entries(tmp_path)

    assert entries == []
    assert [problem.line_number for problem in problems] == [1]
    assert "path" in problems[0].message


# ------------------------------------------------------------------------------------------------
# Exit status 70 (issue 13, item 4)


@pytest.mark.parametrize(
    ("verb", "buggy"),
    [("status", "agent.status.collect"), ("list", "agent.catalog.scan"), ("prune", "agent.prune.prune")],
)
def test_a_bug_in_a_verb_exits_70_with_one_line_on_the_terminal_and_the_traceback_in_the_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, verb: str, buggy: str
) -> None:
    config, _database = _backed_up(tmp_path)

    def planted_bug(*_args: object, **_kwargs: object) -> object:
        raise RuntimeError("a planted bug")

    monkeypatch.setattr(buggy, planted_bug)
    capsys.readouterr()

    code = cli.main(["-c", str(config), verb])

    stderr = capsys.readouterr().err
    assert code == 70
    assert "a planted bug" in stderr and "Traceback" not in stderr
    (crash,) = events_named(tmp_path, "cli.internal_error")
    assert "a planted bug" in json.dumps(crash["exception"])
