"""`make demo`: only what the agent itself needs is installed, and everything it prints is for people."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]


def test_make_demo_installs_no_test_extras_and_no_database_servers(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.fail("make is needed: `make demo` is the quick start")
    planned = subprocess.run(
        ["make", "-n", "demo", f"VENV={tmp_path / 'venv'}"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "pip install" in planned and "scripts/demo.py" in planned, planned
    assert "[test]" not in planned, planned
    assert "install-system-deps" not in planned, planned


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def test_the_demo_prints_human_lines_never_raw_json(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, str(PROJECT / "scripts" / "demo.py")],
        env={**os.environ, "BACKUP_AGENT_DEMO_DIR": str(demo)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line.strip() for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert [line for line in lines if _is_json_object(line) or line.startswith("{")] == []
    assert "VERIFY OK - 1 checked, 0 problem(s)" in lines
    assert any(line.startswith("STATUS OK") for line in lines), lines
    assert any(line.startswith("STATUS     CREATED (UTC)") for line in lines), lines
    assert list((demo / "backups").rglob("*.sqlite.zst")), "the demo made no backup"
