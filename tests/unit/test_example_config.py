"""The shipped example config is valid as written."""

from __future__ import annotations

from pathlib import Path

from agent.config import parse_config

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"


def test_the_example_config_parses_into_the_documented_job() -> None:
    config = parse_config(EXAMPLE.read_text(encoding="utf-8"), EXAMPLE, file_mode=0o100600)
    job = config.jobs["main"]
    assert job.engine == "postgresql"
    assert job.databases is None and job.exclude == ()  # "*": exclude is a commented suggestion
    assert job.schedule.kind == "cron"
    assert config.storage.compression == "zstd" and config.storage.level == 3
    assert config.retention.keep_min == 2


def test_every_commented_example_job_is_valid_once_uncommented() -> None:
    """Uncommenting the example MySQL, MongoDB, SQLite and Redis jobs gives a valid config too."""
    lines: list[str] = []
    in_example_job = False
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line.startswith("# [jobs.") and not line.startswith("# [jobs.main"):
            in_example_job = True
        elif not line.startswith("# "):
            in_example_job = False
        lines.append(line[2:] if in_example_job else line)
    config = parse_config("\n".join(lines), EXAMPLE, file_mode=0o100600)
    assert {"main", "shop", "docs", "app", "cache"} <= set(config.jobs)
    assert config.jobs["cache"].engine == "redis"
    assert config.jobs["shop"].engine == "mysql" and config.jobs["docs"].engine == "mongodb"
    assert config.jobs["app"].engine == "sqlite"
