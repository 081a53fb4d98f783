"""What the CLI prints for humans escapes control characters as the log does.

SQLite database names are file paths, so a file named with terminal escape sequences and line breaks
brings hostile names to every verb without a server: none of them may reach the terminal raw.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from agent_helpers import run_cli, write_config

HOSTILE = [
    "clear\x1b[2J\x1b[Hscreen.db",
    "split\nok      main forged -> nowhere.db",
    "bell\x07carriage\rreturn.db",
    "unicode\u2028line\x85break.db",
]
RAW = ("\x1b", "\r", "\x07", "\u2028", "\x85")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    for name in HOSTILE:
        with sqlite3.connect(tmp_path / name) as connection:
            connection.execute("CREATE TABLE item (id INTEGER PRIMARY KEY)")
        connection.close()
    job = {"engine": "sqlite", "databases": [str(tmp_path / name) for name in HOSTILE]}
    return write_config(tmp_path, {"main": job}, storage={"compression": "none"})


def printed(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> tuple[int, list[str]]:
    code = run_cli(config, *args)
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert not [character for character in RAW if character in text], f"raw control characters: {text!r}"
    return code, captured.out.splitlines()


def test_backup_prints_one_escaped_line_per_database(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = printed(capsys, config, "backup")
    assert code == 0
    assert len(lines) == len(HOSTILE), lines
    assert all(line.startswith("ok      main ") for line in lines)
    assert any("clear\\x1b[2J\\x1b[Hscreen.db -> " in line for line in lines)
    assert any("split\\x0aok      main forged" in line for line in lines)
    assert any("unicode\\u2028line\\x85break.db" in line for line in lines)


def test_list_status_verify_prune_and_check_config_escape_the_names_too(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(config, "backup") == 0
    capsys.readouterr()
    code, lines = printed(capsys, config, "list")
    assert (code, len(lines)) == (0, 1 + len(HOSTILE))  # the header, then a line per backup
    code, lines = printed(capsys, config, "status")
    assert code == 0
    assert sum(" main/" in line or "clear\\x1b" in line for line in lines) >= 1
    assert len([line for line in lines if line.startswith("  OK ")]) == len(HOSTILE), lines
    code, lines = printed(capsys, config, "verify")
    assert (code, lines[-1]) == (0, f"VERIFY OK - {len(HOSTILE)} checked, 0 problem(s)")
    code, lines = printed(capsys, config, "prune", "--dry-run")
    assert code == 0
    code, lines = printed(capsys, config, "check-config", "--offline")
    assert code == 0
    assert len([line for line in lines if line.startswith("  - ")]) == len(HOSTILE), lines


def test_json_output_keeps_the_names_exactly(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(config, "backup") == 0
    capsys.readouterr()
    code, _ = printed(capsys, config, "list", "--json")
    assert code == 0
    run_cli(config, "list", "--json")
    rows = json.loads(capsys.readouterr().out)
    assert sorted(Path(row["database"]).name for row in rows) == sorted(HOSTILE)
