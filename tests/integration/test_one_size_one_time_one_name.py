"""A newcomer reads one figure per backup, one time format and one name for server-wide files.

Sizes: list, prune and status show a backup's data file length the same way; prune's "on disk"
figures say so. Times: UTC with `Z`, everywhere a person reads one. Globals: `_globals` in the
folder, the file name, the log, list, status and backup's own lines.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
from agent_helpers import events_named, password_file, run_cli, write_config
from servers.postgres import PostgresServer

from agent.units import format_size

_TIME_WITH_ZONE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
_ANY_TIME = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d)?(\.\d+)?([+-]\d\d:\d\d|Z)?")


def _sqlite_backups(tmp_path: Path) -> Path:
    database = tmp_path / "shop.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT)")
        connection.executemany("INSERT INTO item (name) VALUES (?)", [(f"item {n}",) for n in range(300)])
    config = write_config(tmp_path, {"shop": {"engine": "sqlite", "databases": [str(database)], "every": "1h"}})
    assert run_cli(config, "backup") == 0
    return config


def _output(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> list[str]:
    capsys.readouterr()
    assert run_cli(config, *args) == 0
    return capsys.readouterr().out.splitlines()


def test_list_prune_and_status_show_the_same_size_for_the_same_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _sqlite_backups(tmp_path)
    (dump,) = (tmp_path / "storage").rglob("*.sqlite.zst")
    size = format_size(dump.stat().st_size)
    listed = [line for line in _output(capsys, config, "list") if str(dump) in line]
    pruned = [line for line in _output(capsys, config, "prune", "--dry-run") if dump.name in line]
    status = [line for line in _output(capsys, config, "status") if str(dump) in line]
    for verb, lines in (("list", listed), ("prune --dry-run", pruned), ("status", status)):
        assert len(lines) == 1 and f" {size} " in lines[0].replace("(", " ").replace(")", " "), (verb, lines, size)


def test_prune_says_which_of_its_figures_are_space_on_disk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _sqlite_backups(tmp_path)
    summary = _output(capsys, config, "prune", "--dry-run")[-1]
    assert "on disk" in summary and "usage on disk" in summary, summary


def test_list_has_a_header_naming_its_columns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _sqlite_backups(tmp_path)
    header = _output(capsys, config, "list")[0].split()
    assert header[:4] == ["STATUS", "CREATED", "(UTC)", "SIZE"], header


@pytest.mark.parametrize("args", [("list",), ("prune", "--dry-run"), ("status",)], ids=" ".join)
def test_every_time_a_person_reads_is_utc_with_z(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...]
) -> None:
    config = _sqlite_backups(tmp_path)
    times = [match.group(0) for line in _output(capsys, config, *args) for match in _ANY_TIME.finditer(line)]
    assert times or args[0] == "status"
    assert all(_TIME_WITH_ZONE.fullmatch(moment) for moment in times), times


def test_format_time_reads_every_form_the_agent_wrote_and_writes_utc_with_z() -> None:
    from agent.units import format_time

    assert format_time("2026-11-26T07:00:00+01:00") == "2026-11-26T06:00:00Z"
    assert format_time("2026-11-26T06:00:00.123456+00:00") == "2026-11-26T06:00:00Z"
    assert format_time("2026-11-26T06:00:00") == "2026-11-26T06:00:00Z"
    assert format_time(None) == "?"


def test_postgres_globals_have_one_name_in_files_logs_backup_list_and_status(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = {
        "engine": "postgresql",
        "host": pg_server.host,
        "port": pg_server.port,
        "user": pg_server.user,
        "password_file": str(password_file(tmp_path, pg_server.password)),
        "databases": [pg_database],
        "every": "1h",
    }
    config = write_config(tmp_path, {"main": job})
    capsys.readouterr()
    assert run_cli(config, "backup") == 0
    backup_lines = capsys.readouterr().out.splitlines()
    (dump,) = (tmp_path / "storage" / "main").rglob("*.sql.zst")
    assert dump.parent.name == "_globals" and dump.name.startswith("main._globals.")
    assert any(" main _globals -> " in line for line in backup_lines), backup_lines
    finished = [event for event in events_named(tmp_path, "backup.started") if event.get("kind") == "globals"]
    assert finished and {event["database"] for event in finished} == {"_globals"}, finished
    listed = [line for line in _output(capsys, config, "list") if str(dump) in line]
    assert len(listed) == 1 and "main: _globals " in listed[0], listed
    status = _output(capsys, config, "status")
    assert any(line.split()[1:2] == ["_globals:"] for line in status), status
    assert not any("(globals)" in line for line in [*backup_lines, *listed, *status])
