"""Log files as shipped: rotation on by default, the logrotate handover, one record per line, no secrets."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import log
from agent.config import parse_config

_TEXT_RECORD = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d+Z \[")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    log.configure(level="warning", console=True)  # leave no handler on a test's temporary file


def test_the_default_config_rotates_the_log_by_size() -> None:
    config = parse_config(
        '[storage]\npath = "/srv/b"\n[log]\nfile = "/var/log/b/agent.log"\n'
        '[jobs.a]\nengine = "sqlite"\ndatabases = ["/a.db"]\n',
        Path("/etc/c.toml"),
    )
    assert config.log.rotate is True
    assert config.log.max_size.resolve(0) == 10 * 2**20
    assert config.log.keep == 5


def test_size_based_rotation_keeps_the_log_within_its_bound(tmp_path: Path) -> None:
    path = tmp_path / "agent.log"
    log.configure(file=path, max_bytes=2048, keep=2, console=False)
    logger = log.get_logger(job="main")

    for number in range(300):
        logger.info("backup.finished", database=f"db{number}", path="/srv/backups/" + "x" * 40)

    files = sorted(item.name for item in tmp_path.iterdir())
    assert files == ["agent.log", "agent.log.1", "agent.log.2"]
    assert all((tmp_path / name).stat().st_size <= 2048 for name in files)
    last = json.loads(path.read_text().splitlines()[-1])
    assert last["database"] == "db299"


def test_with_rotate_false_a_file_moved_by_logrotate_is_reopened(tmp_path: Path) -> None:
    path = tmp_path / "agent.log"
    log.configure(file=path, rotate=False, console=False)
    logger = log.get_logger()
    logger.info("daemon.started", pid=1)

    path.rename(tmp_path / "agent.log.1")  # what logrotate does without copytruncate
    logger.info("daemon.stopping", signal="SIGTERM")

    assert [json.loads(line)["event"] for line in (tmp_path / "agent.log.1").read_text().splitlines()] == [
        "daemon.started"
    ]
    assert [json.loads(line)["event"] for line in path.read_text().splitlines()] == ["daemon.stopping"]


@pytest.mark.parametrize("file_format", ["json", "text"])
def test_every_record_is_one_line_and_never_holds_a_secret(tmp_path: Path, file_format: str) -> None:
    path = tmp_path / "agent.log"
    log.configure(file=path, file_format=file_format, console=False)
    log.register_secret("hunter2-secret-value")
    logger = log.get_logger(job="main")

    logger.warning("backup.warning", database="evil\nname\r\u2028with\x85breaks", message="uses hunter2-secret-value")
    try:
        raise RuntimeError("first line\nsecond line hunter2-secret-value")
    except RuntimeError:
        logger.exception("job.error")
    logger.info("backup.finished", database="plain")

    text = path.read_text(encoding="utf-8")
    assert "hunter2-secret-value" not in text and "***" in text
    lines = text.splitlines()  # splits on \r, \x85 and U+2028 too: none may be raw in a record
    assert len(lines) == 3
    if file_format == "json":
        records = [json.loads(line) for line in lines]
        assert records[0]["database"] == "evil\nname\r\u2028with\x85breaks"
        assert records[1]["event"] == "job.error" and records[1]["exception"]
    else:
        assert all(_TEXT_RECORD.match(line) for line in lines)
        assert "traceback=" in lines[1] and "second line" in lines[1]
