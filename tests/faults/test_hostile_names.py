"""Hostile names and hostile output: database names that try to escape, collide or forge, symlinks
planted where the agent writes, and tool stderr that tries to forge log records.
"""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import data_files, events_named, run_cli, write_config
from fault_helpers import FROZEN, fake_pg_dump, frozen_clock, pg_job, run_agent, sqlite_database, sqlite_job
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql
from servers.postgres import PostgresServer

from agent import catalog
from agent.compression import CompressionSettings
from agent.engines.base import DumpTarget
from agent.manifest import Manifest, write_manifest
from agent.naming import backup_filename, decode_name
from agent.runner import folder_for
from agent.writer import DumpWriter

NAME_MAX = 255  # bytes in one file name (ext4, xfs, tmpfs)
LONGEST_SUFFIX = ".json.partial"  # the longest thing the agent appends to a backup's name

# ------------------------------------------------------------------------------------------------
# Names, property-tested


PIECES = st.sampled_from(
    [
        "/",
        "\\",
        ".",
        "..",
        "../",
        "_",
        "%",
        "%2F",
        "~",
        "-",
        " ",
        "\n",
        "\r",
        "\t",
        "\x00",
        "\x7f",
        "\x1b[31m",
        "\x1b]0;title\x07",
        "\u2028",
        "\x85",
        "é",
        "É",
        "ß",
        "💥",
        "a",
        "A",
        "b",
        "db",
        "_globals",
        "globals",
        ".git",
        '{"event": "x"}',
    ]
)
NAMES = st.one_of(
    st.text(min_size=1, max_size=30),
    st.lists(PIECES, min_size=1, max_size=10).map("".join),
    st.integers(200, 320).map(lambda length: "n" * length),
    st.tuples(st.integers(100, 300), PIECES).map(lambda pair: "é" * pair[0] + pair[1]),
)


def _variants(name: str) -> set[str]:
    """The name and the ones a naive sanitiser would merge with it."""
    return {
        name,
        name.swapcase(),
        name.replace("/", "_"),
        name.replace("_", "/"),
        name.replace(".", "_"),
        name.replace("/", "%2F"),
        name + "\n",
        "." + name,
        name.strip("."),
    } - {""}


def _publish(storage: Path, database: str, payload: bytes) -> Path:
    """One backup of `database` the way the runner publishes it: folder, writer, manifest."""
    folder = folder_for(DumpTarget(database), "postgresql")
    moment = datetime(2031, 5, 5, 5, 5, 5, tzinfo=UTC)

    def name_for(sequence: int) -> str:
        return backup_filename("main", folder, moment, "pgdump", sequence)

    writer = DumpWriter(storage / "main" / folder, name_for, CompressionSettings("none"))
    writer.write(payload)
    published = writer.commit()
    write_manifest(
        published.path,
        Manifest(
            job="main",
            engine="postgresql",
            kind="database",
            database=database,
            file=published.path.name,
            host="test",
            server="test",
            server_version="15",
            tool="pg_dump",
            tool_version="15",
            format="postgresql-custom",
            compression="none",
            compression_level=None,
            started_at=moment.isoformat(),
            finished_at=moment.isoformat(),
            duration_seconds=0.0,
            raw_bytes=published.raw_bytes,
            stored_bytes=published.stored_bytes,
            sha256=published.sha256,
            run_id="test",
            agent_version="test",
        ),
    )
    return published.path


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(NAMES, min_size=1, max_size=4))
def test_hostile_database_names_stay_inside_storage_never_collide_and_are_recoverable(seeds: list[str]) -> None:
    names = sorted(set().union(*(_variants(seed) for seed in seeds)))
    with tempfile.TemporaryDirectory() as directory:
        storage = Path(directory) / "storage"
        storage.mkdir()
        paths = {name: _publish(storage, name, name.encode("utf-8", "surrogateescape")) for name in names}

        assert len(set(paths.values())) == len(names), "two names share a path"
        root = storage.resolve()
        for name, path in paths.items():
            assert path.resolve().parent.parent == root / "main", f"{name!r} escaped to {path}"
            assert len(path.parent.name.encode()) <= NAME_MAX
            assert len((path.name + LONGEST_SUFFIX).encode()) <= NAME_MAX
            decoded = decode_name(path.parent.name)
            assert decoded == name or (decoded is None and "~" in path.parent.name)
        records = catalog.scan(storage, "main")
        assert sorted(record.database for record in records) == names, "the manifest gives every name back"
        assert {record.status for record in records} == {catalog.GOOD}


# ------------------------------------------------------------------------------------------------
# Symlinks planted where the agent writes


def _plant(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


def _victims(directory: Path) -> dict[Path, bytes]:
    """Files and folders a planted symlink points at; none may ever change."""
    directory.mkdir()
    files = {directory / name: f"victim {name}\n".encode() for name in ("data", "manifest", "partial", "old.partial")}
    for path, content in files.items():
        path.write_bytes(content)
    (directory / "folder").mkdir()
    return files


def _unchanged(victims: dict[Path, bytes], directory: Path) -> None:
    assert {path: path.read_bytes() for path in victims} == victims
    assert sorted(path.name for path in directory.iterdir()) == ["data", "folder", "manifest", "old.partial", "partial"]
    assert list((directory / "folder").iterdir()) == []


def test_symlinks_at_the_backup_partial_and_manifest_names_are_never_followed(tmp_path: Path) -> None:
    database = sqlite_database(tmp_path / "app.db")
    config = write_config(tmp_path, {"app": sqlite_job(database)})
    victims = _victims(tmp_path / "victims")
    folder = tmp_path / "storage" / "app" / "app.db"
    moment = datetime.fromisoformat(FROZEN + "+00:00")
    first = folder / backup_filename("app", "app.db", moment, "sqlite.zst", 0)
    _plant(first, tmp_path / "victims" / "data")
    _plant(first.with_name(first.name + ".partial"), tmp_path / "victims" / "partial")
    second = folder / backup_filename("app", "app.db", moment, "sqlite.zst", 1)
    _plant(second.with_name(second.name + ".json"), tmp_path / "victims" / "manifest")

    runs = [run_agent(config, "backup", env=frozen_clock()) for _ in range(2)]

    _unchanged(victims, tmp_path / "victims")
    assert [run.returncode for run in runs] == [0, 0], [run.stdout + run.stderr for run in runs]
    made = [path for path in data_files(tmp_path / "storage") if not path.is_symlink()]
    names = [backup_filename("app", "app.db", moment, "sqlite.zst", sequence) for sequence in (2, 3)]
    assert sorted(path.name for path in made) == names, "names whose data or manifest name is taken are skipped"
    assert not any(path.is_symlink() for path in made)
    assert sorted(record.path for record in catalog.scan(tmp_path / "storage")) == sorted(made), "links are ignored"
    assert run_agent(config, "verify").returncode == 0
    assert run_agent(config, "prune").returncode == 0
    assert first.is_symlink() and second.with_name(second.name + ".json").is_symlink(), "left alone, not deleted"
    _unchanged(victims, tmp_path / "victims")


@pytest.mark.parametrize("planted", ["database folder", "job folder"])
def test_a_symlink_at_the_database_or_job_folder_is_refused_and_never_written_through(
    planted: str, tmp_path: Path
) -> None:
    database = sqlite_database(tmp_path / "app.db")
    config = write_config(tmp_path, {"app": sqlite_job(database)})
    victims = _victims(tmp_path / "victims")
    (tmp_path / "victims" / "folder" / "app.db").mkdir()
    (tmp_path / "victims" / "folder" / "app.db" / "left.partial").write_bytes(b"not the agent's")
    storage = tmp_path / "storage"
    storage.mkdir(mode=0o750)
    if planted == "job folder":
        _plant(storage / "app", tmp_path / "victims" / "folder")
    else:
        _plant(storage / "app" / "app.db", tmp_path / "victims" / "folder" / "app.db")

    result = run_agent(config, "backup")

    assert result.returncode == 1
    assert [event["reason"] for event in events_named(tmp_path, "backup.failed")] == ["unsafe_path"]
    assert (tmp_path / "victims" / "folder" / "app.db" / "left.partial").read_bytes() == b"not the agent's"
    assert sorted(path.name for path in (tmp_path / "victims" / "folder" / "app.db").iterdir()) == ["left.partial"]
    assert {path: path.read_bytes() for path in victims} == victims
    assert catalog.scan(storage) == []


# ------------------------------------------------------------------------------------------------
# Log injection


FORGING_NAMES = [
    'x\n{"event": "backup.finished", "level": "info", "job": "main"}',
    "carriage\rreturn",
    "ansi \x1b[31mred\x1b[0m \x1b]0;title\x07",
    "tab\tdel\x7f",
    "unicode\u2028line\u2029para\x85next",
]
FORGING_STDERR = (
    r'printf "pg_dump: error: \033[2J\r\n{\"event\": \"backup.finished\", \"level\": \"info\"}\n'
    r'\342\200\250{\"event\": \"forged\"}\r" >&2; exit 1'
)


def _toml_safe(config: Path) -> Path:
    """DEL may not appear raw in a TOML string (agent_helpers.toml_value writes it raw)."""
    config.write_text(config.read_text(encoding="utf-8").replace("\x7f", "\\u007f"), encoding="utf-8")
    return config


def _assert_one_json_object_per_line(text: str) -> list[dict[str, Any]]:
    records = []
    for line in text.split("\n"):
        if not line:
            continue
        record = json.loads(line)
        assert isinstance(record, dict) and "event" in record, line
        records.append(record)
    for breaker in ("\r", "\u2028", "\u2029", "\x85", "\x1b"):
        assert breaker not in text, f"a raw {breaker!r} in the log"
    return records


def test_database_names_and_tool_stderr_never_forge_or_split_a_log_record(
    pg_server: PostgresServer, tmp_path: Path
) -> None:
    with pg_server.connect() as connection:
        for name in FORGING_NAMES:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    log = tmp_path / "agent.log"
    try:
        config = _toml_safe(write_config(tmp_path, {"main": pg_job(tmp_path, pg_server, FORGING_NAMES)}))
        run_cli(config, "backup")
        first_run = log.read_text(encoding="utf-8")
        tool = fake_pg_dump(tmp_path, pg_server, FORGING_STDERR)
        failing = write_config(tmp_path, {"main": pg_job(tmp_path, pg_server, FORGING_NAMES[:1], tool=str(tool))})
        assert run_cli(failing, "backup") == 1
        no_log_file = tmp_path / "stderr.toml"
        no_log_file.write_text(failing.read_text().replace(f'file = "{log}"\n', ""))
        no_log_file.chmod(0o600)
        to_stderr = run_agent(no_log_file, "backup")
    finally:
        with pg_server.connect() as connection:
            for name in FORGING_NAMES:
                connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    outcomes = [
        record
        for record in _assert_one_json_object_per_line(first_run)
        if record["event"] in ("backup.finished", "backup.failed")
    ]
    assert sorted(record["database"] for record in outcomes) == sorted(FORGING_NAMES), "one record per database"
    assert all(record["job"] == "main" and "run_id" in record for record in outcomes), "no forged record"
    records = _assert_one_json_object_per_line(log.read_text(encoding="utf-8"))
    assert "forged" not in {record["event"] for record in records}
    failed = [record for record in records if record["event"] == "backup.failed"]
    assert failed[-1]["reason"] == "tool_failed"
    assert '{"event": "forged"}' in failed[-1]["stderr_tail"], "the tail is kept, as data"
    stderr_records = _assert_one_json_object_per_line(to_stderr.stderr)
    assert [record["reason"] for record in stderr_records if record["event"] == "backup.failed"] == ["tool_failed"]
    listing = run_agent(config, "list")
    rows = json.loads(run_agent(config, "list", "--json").stdout)
    assert {row["database"] for row in rows} <= set(FORGING_NAMES)
    assert len(listing.stdout.splitlines()) == 1 + len(rows), "a header, then one line per backup in `list`"
    assert not any(character in listing.stdout for character in "\r\x1b\x7f\u2028\u2029\x85")
