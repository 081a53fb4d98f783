"""The Prometheus textfile: valid exposition format (checked by a small parser here) with the right values."""

from __future__ import annotations

import math
import re
import sqlite3
import stat
from datetime import datetime
from pathlib import Path

from agent_helpers import data_files, run_cli, write_config

from agent import metrics
from agent.manifest import manifest_path, read_manifest

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^(?P<name>{_NAME})(?:\{{(?P<labels>.*)\}})? (?P<value>\S+)(?: (?P<timestamp>-?\d+))?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\["\\n])*)"(,|$)')
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda match: {"n": "\n"}.get(match.group(1), match.group(1)), value)


def parse_exposition(text: str) -> Samples:
    """Parse the text exposition format strictly: every line valid, TYPE before samples, metrics contiguous."""
    assert text.endswith("\n"), "the file must end with a newline"
    samples: Samples = {}
    typed: dict[str, str] = {}
    finished: set[str] = set()
    current: str | None = None
    for number, line in enumerate(text.split("\n")[:-1], start=1):
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                assert re.fullmatch(_NAME, parts[2]), f"line {number}: bad metric name"
                if parts[1] == "TYPE":
                    assert parts[2] not in typed, f"line {number}: second TYPE for {parts[2]}"
                    assert len(parts) == 4 and parts[3] in _TYPES, f"line {number}: bad type"
                    typed[parts[2]] = parts[3]
            continue
        match = _SAMPLE.match(line)
        assert match, f"line {number} is not a sample: {line!r}"
        name = match["name"]
        assert name in typed, f"line {number}: {name} has no TYPE before it"
        if name != current:
            assert name not in finished, f"line {number}: samples of {name} are not together"
            if current is not None:
                finished.add(current)
            current = name
        labels: list[tuple[str, str]] = []
        rest = match["labels"] or ""
        while rest:
            label = _LABEL.match(rest)
            assert label, f"line {number}: bad labels {rest!r}"
            labels.append((label[1], _unescape(label[2])))
            rest = rest[label.end() :]
        value = float(match["value"])  # also accepts NaN, +Inf, -Inf
        key = (name, tuple(labels))
        assert key not in samples, f"line {number}: duplicate series"
        samples[key] = value
    return samples


def value_of(samples: Samples, name: str, **labels: str) -> float | None:
    for (sample_name, sample_labels), value in samples.items():
        if sample_name == f"backup_agent_{name}" and all(item in sample_labels for item in labels.items()):
            return value
    return None


def sqlite_database(path: Path) -> Path:
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE t (x)")
        connection.executemany("INSERT INTO t VALUES (?)", [(n,) for n in range(100)])
    connection.close()
    return path


def test_after_a_success_the_file_holds_the_backups_figures(tmp_path: Path) -> None:
    database = sqlite_database(tmp_path / "app.db")
    textfile = tmp_path / "textfile" / "backup_agent.prom"
    textfile.parent.mkdir()
    config = write_config(
        tmp_path,
        {"app": {"engine": "sqlite", "databases": [str(database)], "every": "1h"}},
        storage={"max_usage": "1GiB"},
        sections={"metrics": {"textfile": textfile}},
    )

    assert run_cli(config, "backup") == 0

    assert stat.S_IMODE(textfile.stat().st_mode) == 0o644
    assert [path.name for path in textfile.parent.iterdir()] == ["backup_agent.prom"]  # no temp file left
    samples = parse_exposition(textfile.read_text())
    [dump] = data_files(tmp_path / "storage")
    manifest = read_manifest(manifest_path(dump))
    key = {"job": "app", "database": str(database)}
    started = datetime.fromisoformat(manifest.started_at).timestamp()
    assert math.isclose(value_of(samples, "last_success_timestamp_seconds", **key) or 0, started, abs_tol=1e-3)
    assert value_of(samples, "last_size_bytes", **key) == dump.stat().st_size
    assert value_of(samples, "last_duration_seconds", **key) == manifest.duration_seconds
    assert value_of(samples, "failures_total", **key) == 0
    assert value_of(samples, "last_run_success", **key) == 1
    assert value_of(samples, "fresh", **key) == 1
    assert (value_of(samples, "predicted_next_size_bytes", **key) or 0) >= dump.stat().st_size
    assert value_of(samples, "storage_budget_bytes") == 2**30
    assert (value_of(samples, "storage_used_bytes") or 0) > 0
    assert (value_of(samples, "storage_free_bytes") or 0) > 0
    assert value_of(samples, "storage_reserve_bytes") is not None
    assert value_of(samples, "status_ok") == 1


def test_after_a_failure_the_counter_rises_and_the_last_success_stays(tmp_path: Path) -> None:
    database = sqlite_database(tmp_path / "app.db")
    never = tmp_path / "never.db"
    textfile = tmp_path / "backup_agent.prom"
    config = write_config(
        tmp_path,
        {"app": {"engine": "sqlite", "databases": [str(database), str(never)]}},
        sections={"metrics": {"textfile": textfile}},
    )
    assert run_cli(config, "backup") == 1  # never.db fails from the start
    first = parse_exposition(textfile.read_text())
    database.rename(tmp_path / "moved.db")

    assert run_cli(config, "backup") == 1

    samples = parse_exposition(textfile.read_text())
    key = {"job": "app", "database": str(database)}
    assert value_of(samples, "failures_total", **key) == 1
    assert value_of(samples, "last_run_success", **key) == 0
    assert value_of(samples, "last_success_timestamp_seconds", **key) == value_of(
        first, "last_success_timestamp_seconds", **key
    )
    assert value_of(samples, "failures_total", job="app", database=str(never)) == 2
    assert value_of(samples, "last_success_timestamp_seconds", job="app", database=str(never)) is None
    assert value_of(samples, "fresh", **key) is None  # a manual job is not checked


def test_label_values_with_quotes_backslashes_and_newlines_survive(tmp_path: Path) -> None:
    odd = tmp_path / 'we"ird\\name\nhere.db'
    sqlite_database(odd)
    textfile = tmp_path / "backup_agent.prom"
    config = write_config(
        tmp_path, {"app": {"engine": "sqlite", "databases": [str(odd)]}}, sections={"metrics": {"textfile": textfile}}
    )

    assert run_cli(config, "backup") == 0

    samples = parse_exposition(textfile.read_text())
    assert value_of(samples, "backups", job="app", database=str(odd)) == 1


def test_a_passed_drill_gives_its_time() -> None:
    database = {
        "database": "shop",
        "kind": "database",
        "last_good": None,
        "last_status": "ok",
        "backups": 0,
        "used_bytes": 0,
        "predicted_next_bytes": None,
        "failures_total": 0,
        "last_duration_seconds": None,
        "checked": False,
        "problem": None,
        "newest_drilled_backup": None,
        "last_drill": {"at": "2026-11-26T05:00:00+00:00", "result": "passed", "path": "x", "differences": []},
    }
    status = {
        "ok": True,
        "version": "0",
        "host": "h",
        "jobs": [{"job": "main", "databases": [database]}],
        "storage": {
            "path": "/s",
            "used_bytes": 1,
            "max_usage_bytes": None,
            "free_bytes": 2,
            "reserve_bytes": 3,
            "total_bytes": 4,
        },
    }

    samples = parse_exposition(metrics.render(status))

    expected = datetime.fromisoformat("2026-11-26T05:00:00+00:00").timestamp()
    assert value_of(samples, "last_drill_success_timestamp_seconds", job="main") == expected
    assert value_of(samples, "storage_budget_bytes") is None  # no max_usage: no budget series
