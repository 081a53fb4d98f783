"""Table scope on MongoDB (SecantusDB standing in for mongod): the built-in dumper leaves out excluded
collections, keeps a schema-only collection's options and indexes without its documents, and the
restore, the drill and check-config go by it; mongodump gets exact --excludeCollection names."""

from __future__ import annotations

from pathlib import Path

import pytest
from agent_helpers import data_files, run_cli, write_config
from servers.mongo import MongoServer
from test_mongo import collection_shapes, fill_rich_database, mongo_job

from agent.config import parse_config
from agent.engines.base import DumpTarget, EngineContext
from agent.engines.mongo.engine import MongoEngine
from agent.errors import DumpError
from agent.manifest import manifest_path, read_manifest
from agent.process import StreamLimits


def test_a_builtin_dump_keeps_exactly_its_collections_through_restore_and_drill(
    mongo_server: MongoServer, mongo_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = f"{mongo_database}_into"
    with mongo_server.client() as client:
        fill_rich_database(client, mongo_database)
        before = collection_shapes(client, mongo_database)
    job = mongo_job(
        mongo_server,
        tmp_path,
        [mongo_database],
        tool="builtin",
        exclude_tables=["typ*", "nothing*"],
        schema_only_tables=["people"],
    )
    config = write_config(tmp_path, {"docs": job})

    assert run_cli(config, "backup") == 0
    (dump,) = data_files(tmp_path / "storage")
    manifest = read_manifest(manifest_path(dump))
    assert manifest.scope is not None
    assert (manifest.scope.excluded, manifest.scope.schema_only) == (["types"], ["people"])
    assert manifest.counts["people"] == 0 and "types" not in manifest.counts and manifest.counts["capped"] == 50
    assert any('exclude_tables: "nothing*" matches no table' in warning for warning in manifest.warnings)
    assert not any("view adults" in warning for warning in manifest.warnings)  # people is kept (schema only)
    try:
        assert run_cli(config, "restore", "--job", "docs", "--database", mongo_database, "--into", target) == 0
        with mongo_server.client() as client:
            after = collection_shapes(client, target)
        assert set(after) == set(before) - {"types"}
        assert after["people"] == {**before["people"], "documents": []}
        assert {name: after[name] for name in after if name != "people"} == {
            name: before[name] for name in after if name != "people"
        }
    finally:
        with mongo_server.client() as client:
            client.drop_database(target)
    assert run_cli(config, "drill", "--job", "docs") == 0
    capsys.readouterr()
    assert run_cli(config, "check-config") == 0
    assert 'exclude_tables: "nothing*" matches no table' in capsys.readouterr().out


def _engine(tmp_path: Path, scope: str) -> MongoEngine:
    text = (
        f'[storage]\npath = "{tmp_path}"\n[jobs.docs]\nengine = "mongodb"\nuri = "mongodb://127.0.0.1:1"\n'
        f'databases = ["shop"]\n{scope}\n'
    )
    job = parse_config(text, tmp_path / "config.toml").jobs["docs"]
    return MongoEngine(job, EngineContext(tmp_path, tmp_path, StreamLimits()))


def test_mongodump_gets_exact_exclude_collection_names_and_refuses_schema_only(tmp_path: Path) -> None:
    engine = _engine(tmp_path, 'exclude_tables = ["a*"]')
    argv = engine.mongodump_argv("mongodump", DumpTarget("shop"), None, ["audit.2024", "a$b"])
    assert argv[-2:] == ["--excludeCollection=audit.2024", "--excludeCollection=a$b"]
    with pytest.raises(DumpError, match="schema_only_tables needs the built-in dumper"):
        _engine(tmp_path, 'schema_only_tables = ["a*"]')._mongodump_scope(DumpTarget("shop"))


def test_excluding_the_collection_a_view_reads_is_warned_about(
    mongo_server: MongoServer, mongo_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with mongo_server.client() as client:
        fill_rich_database(client, mongo_database)
    job = mongo_job(mongo_server, tmp_path, [mongo_database], tool="builtin", exclude_tables=["people"])
    config = write_config(tmp_path, {"docs": job})
    assert run_cli(config, "check-config") == 0
    expected = f"database '{mongo_database}': view adults reads people, which the scope excludes: it restores empty"
    assert expected in capsys.readouterr().out
