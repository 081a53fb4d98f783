"""One contract over every registered engine, against its real throwaway server.

Each engine (and the toy engine of tests/toy_engine, registered at runtime the way a new engine is
registered) must: dump a database through the agent, pass its own structural check and fail it when
cut short, restore what it dumped with the same rows, pass doctor's privilege check with an account
that can dump, and refuse a password in extra_args (plus its own refused options) with the key path.
A new engine without a harness here fails `test_every_registered_engine_has_a_contract_harness`.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from agent_helpers import data_files, decompressed, password_file, run_cli, write_config
from servers.common import require_binaries
from servers.mariadb import MariaDBServer
from servers.mongo import MongoServer
from servers.postgres import PostgresServer
from servers.redis import RedisServer

from agent import engines
from agent.config import load_config
from agent.engines import Registration
from agent.errors import ConfigError, VerificationError
from agent.manifest import manifest_path, read_manifest
from agent.restore import choose_backup, engine_for, restore_database, restore_to_file
from agent.verify import OK, verify_storage

TOY = "toyfile"
ROWS = [(1, "one"), (2, "two"), (3, "three")]


@dataclass
class Setup:
    """A job dumping one seeded database, and how to read rows back where the engine restores."""

    job: dict[str, Any]
    database: str
    table_key: str  # the table as the manifest's counts name it
    restores_into_server: bool = True
    count_file: Callable[[Path], int] | None = None  # rows in a restored file (engines without a server)


def _postgres(request: pytest.FixtureRequest, tmp_path: Path) -> Setup:
    server: PostgresServer = request.getfixturevalue("pg_server")
    database: str = request.getfixturevalue("pg_database")
    with server.connect(database) as connection:
        connection.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
        for row in ROWS:
            connection.execute("INSERT INTO items VALUES (%s, %s)", row)
    job = {
        "engine": "postgresql",
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "password_file": str(password_file(tmp_path, server.password)),
        "databases": [database],
    }
    return Setup(job, database, "public.items")


def _mysql(request: pytest.FixtureRequest, tmp_path: Path) -> Setup:
    server: MariaDBServer = request.getfixturevalue("mariadb_server")
    database: str = request.getfixturevalue("mariadb_database")
    with server.connect(database) as connection, connection.cursor() as cursor:
        cursor.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
        cursor.executemany("INSERT INTO items VALUES (%s, %s)", ROWS)
    job = {
        "engine": "mysql",
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "password_file": str(password_file(tmp_path, server.password)),
        "databases": [database],
    }
    return Setup(job, database, "items")


def _mongo(request: pytest.FixtureRequest, tmp_path: Path) -> Setup:
    server: MongoServer = request.getfixturevalue("mongo_server")
    database: str = request.getfixturevalue("mongo_database")
    with server.client() as client:
        client[database]["items"].insert_many([{"_id": key, "name": name} for key, name in ROWS])
    uri = server.uri()
    scheme, _, rest = uri.partition("://")
    job: dict[str, Any] = {"engine": "mongodb", "uri": f"{scheme}://{rest.rpartition('@')[2]}", "databases": [database]}
    if server.auth:
        job["user"] = server.user
        job["password_file"] = str(password_file(tmp_path, server.password or ""))
        job["auth_source"] = dict(parse_qsl(urlsplit(uri).query)).get("authSource", "admin")
    return Setup(job, database, "items")


def _sqlite_rows(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        (count,) = connection.execute("SELECT count(*) FROM items").fetchone()
    connection.close()
    return int(count)


def _sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> Setup:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
        connection.executemany("INSERT INTO items VALUES (?, ?)", ROWS)
    connection.close()
    return Setup({"engine": "sqlite", "databases": [str(path)]}, str(path), "items", False, _sqlite_rows)


def _redis_keys(path: Path) -> int:
    """Keys in a restored RDB, as redis-check-rdb (the server's own checker) reads them."""
    checker = require_binaries(["redis-check-rdb"], hint="install redis-tools")["redis-check-rdb"]
    report = subprocess.run([checker, str(path)], capture_output=True, text=True, check=True, timeout=60).stdout
    return int(re.search(r"(\d+) keys read", report)[1])  # type: ignore[index]  # absent: the test fails


def _redis(request: pytest.FixtureRequest, tmp_path: Path) -> Setup:
    server: RedisServer = request.getfixturevalue("redis_empty")
    server.client().mset({f"items:{key}": name for key, name in ROWS})
    job = {
        "engine": "redis",
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "password_file": str(password_file(tmp_path, server.password)),
        "databases": "*",
    }
    # restore --into stops the server it restores into: the round trip goes through restore --to-file
    return Setup(job, "all", "db0", False, _redis_keys)


def _toy(request: pytest.FixtureRequest, tmp_path: Path) -> Setup:
    return _toy_setup(tmp_path)


def _toy_setup(tmp_path: Path) -> Setup:
    root = tmp_path / "toy-server"
    (root / "shop").mkdir(parents=True)
    (root / "shop" / "items.json").write_text(json.dumps([list(row) for row in ROWS]))
    return Setup({"engine": "toy", "root": str(root), "databases": ["shop"]}, "shop", "items")


HARNESSES: dict[str, Callable[[pytest.FixtureRequest, Path], Setup]] = {
    "postgresql": _postgres,
    "mysql": _mysql,
    "mongodb": _mongo,
    "sqlite": _sqlite,
    "redis": _redis,
    TOY: _toy,
}
MARKS = {
    "postgresql": pytest.mark.postgres,
    "mysql": pytest.mark.mariadb,
    "mongodb": pytest.mark.mongo,
    "redis": pytest.mark.redis,
}
ENGINES = [pytest.param(name, marks=MARKS.get(name, ())) for name in (*engines.engine_names(), TOY)]


@pytest.fixture(autouse=True)
def toy_registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The toy engine's one registry line, added the way an engine's own line would be."""
    monkeypatch.setitem(engines.REGISTRY, TOY, Registration("toy_engine", aliases=("toy",)))
    yield


@pytest.fixture
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Setup:
    engine: str = request.param
    return HARNESSES[engine](request, tmp_path)


def test_every_registered_engine_has_a_contract_harness() -> None:
    assert set(engines.engine_names()) <= set(HARNESSES)


@pytest.mark.parametrize("setup", ENGINES, indirect=True)
def test_a_dump_passes_its_check_restores_to_the_same_rows_and_fails_the_check_when_cut(
    setup: Setup, tmp_path: Path
) -> None:
    config = write_config(tmp_path, {"main": setup.job})
    assert run_cli(config, "backup") == 0
    loaded = load_config(config)
    [dump] = [path for path in data_files(tmp_path / "storage") if not path.parent.name.startswith("_")]
    manifest = read_manifest(manifest_path(dump))
    assert manifest.counts[setup.table_key] == len(ROWS)
    assert [finding.status for finding in verify_storage(loaded.storage.path)] == [OK] * len(
        data_files(tmp_path / "storage")
    )

    raw = decompressed(dump)
    engine_type = engines.engine_class(manifest.engine)
    whole = engine_type.new_check(manifest.format, manifest.tool)
    whole.feed(raw)
    whole.finish()
    cut = engine_type.new_check(manifest.format, manifest.tool)
    cut.feed(raw[: len(raw) // 2])
    with pytest.raises(VerificationError):
        cut.finish()

    chosen = choose_backup(loaded, "main", setup.database)
    if setup.restores_into_server:
        into = f"{setup.database}_restored"
        restore_database(loaded, "main", chosen, into)
        engine = engine_for(loaded, "main")
        try:
            assert engine.count_rows(into) == manifest.counts
        finally:
            engine.drop_database(into)
    else:
        assert setup.count_file is not None
        restored = restore_to_file(chosen, tmp_path / "restored")
        assert setup.count_file(restored) == len(ROWS)


@pytest.mark.parametrize("setup", ENGINES, indirect=True)
def test_an_account_that_can_dump_passes_the_privilege_check_doctor_shows(setup: Setup, tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, {"main": setup.job}))
    findings = engine_for(config, "main").check_privileges()
    assert findings and all(finding.ok for finding in findings), findings


@pytest.mark.parametrize("setup", ENGINES, indirect=True)
def test_a_password_and_the_engines_own_refused_options_in_extra_args_are_named_with_their_key(
    setup: Setup, tmp_path: Path
) -> None:
    family = engines.family(engines.canonical_name(setup.job["engine"]) or "")
    refused = ["--password=hunter2", *family.refused_arguments]
    job = {**setup.job, "extra_args": refused}
    with pytest.raises(ConfigError) as raised:
        load_config(write_config(tmp_path, {"main": job}))
    problems = [problem for problem in raised.value.problems if problem.startswith("jobs.main.extra_args")]
    assert len(problems) == len(refused)
    assert not any("hunter2" in problem for problem in raised.value.problems)


def test_the_toy_engine_is_configured_backed_up_drilled_and_diagnosed_like_any_other(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Everything below runs agent code that was not changed for the toy engine."""
    setup = _toy_setup(tmp_path)
    config = write_config(tmp_path, {"main": setup.job})
    assert engines.family(TOY).option_keys == ("root",)
    (tmp_path / "other").mkdir()
    (tmp_path / "bad").mkdir()
    with pytest.raises(ConfigError) as raised:
        load_config(
            write_config(tmp_path / "other", {"main": {"engine": "sqlite", "databases": ["/a.db"], "root": "/x"}})
        )
    assert any("not a setting of engine sqlite (it is for toyfile)" in problem for problem in raised.value.problems)
    with pytest.raises(ConfigError) as raised:
        load_config(write_config(tmp_path / "bad", {"main": {"engine": "toy", "databases": ["shop"], "root": "x"}}))
    assert any(problem.startswith("jobs.main.root") and "absolute" in problem for problem in raised.value.problems)

    assert run_cli(config, "backup") == 0
    assert run_cli(config, "drill", "--job", "main") == 0
    capsys.readouterr()
    assert run_cli(config, "doctor") == 0
    assert "toy-server is readable" in capsys.readouterr().out
    assert run_cli(config, "restore", "--job", "main", "--database", "shop", "--into", "copy") == 0
    assert json.loads((tmp_path / "toy-server" / "copy" / "items.json").read_text()) == [list(row) for row in ROWS]
