"""Table scope on MariaDB: a real Sakila dump leaves out and empties exactly the tables its patterns name,
in one --single-transaction snapshot, restores to exactly those tables, passes its drill, and check-config
warns of what a restore would trip on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from agent_helpers import data_files, decompressed, run_cli, write_config
from servers.fixtures_data import load_sakila
from servers.mariadb import MariaDBServer
from test_mysql import execute, fingerprints, mysql_job, restored_name  # noqa: F401 - restored_name: a fixture

from agent.manifest import manifest_path, read_manifest

EXCLUDED = ["language", "odd.name`x"]
SCHEMA_ONLY = ["film_text", "payment"]


@pytest.mark.slow
def test_a_sakila_dump_keeps_exactly_its_scope_through_restore_and_drill(
    mariadb_server: MariaDBServer,
    mariadb_database: str,
    restored_name: str,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    load_sakila(mariadb_server, mariadb_database)
    # a dot and a backquote in a name: passed whole, never split or read as a pattern
    execute(
        mariadb_server, mariadb_database, "CREATE TABLE `odd.name``x` (id int)", "INSERT INTO `odd.name``x` VALUES (1)"
    )
    before = fingerprints(mariadb_server, mariadb_database)
    job = mysql_job(
        mariadb_server,
        tmp_path,
        [mariadb_database],
        include_grants=False,
        exclude_tables=["language", "odd.name`*", "no_such_table*"],
        schema_only_tables=["film_text", "pay*"],
    )
    config = write_config(tmp_path, {"main": job})

    assert run_cli(config, "backup") == 0
    (dump,) = data_files(tmp_path / "storage")
    manifest = read_manifest(manifest_path(dump))
    assert manifest.scope is not None
    assert (manifest.scope.excluded, manifest.scope.schema_only) == (EXCLUDED, SCHEMA_ONLY)
    assert manifest.details["consistency"] == "single-transaction"
    in_scope = {name: value for name, value in before.items() if name not in EXCLUDED and name not in SCHEMA_ONLY}
    assert manifest.counts == {**{name: count for name, (count, _) in in_scope.items()}, "film_text": 0, "payment": 0}
    assert manifest.counts_consistent is True
    text = decompressed(dump)
    assert b"CREATE TABLE `payment`" in text and b"INSERT INTO `payment`" not in text
    assert b"CREATE TABLE `language`" not in text
    assert any('exclude_tables: "no_such_table*" matches no table' in warning for warning in manifest.warnings)
    assert any("foreign key of film references language" in warning for warning in manifest.warnings)

    assert run_cli(config, "restore", "--job", "main", "--database", mariadb_database, "--into", restored_name) == 0
    after = fingerprints(mariadb_server, restored_name)
    assert {name: after[name] for name in in_scope} == in_scope
    assert {name: after[name][0] for name in SCHEMA_ONLY} == dict.fromkeys(SCHEMA_ONLY, 0)
    assert set(after) == set(before) - set(EXCLUDED)

    assert run_cli(config, "drill", "--job", "main") == 0
    capsys.readouterr()
    assert run_cli(config, "check-config", "--json") == 0
    warnings = json.loads(capsys.readouterr().out)["jobs"]["main"]["warnings"]
    assert f"database '{mariadb_database}': exclude_tables: \"no_such_table*\" matches no table" in warnings


def test_excluding_a_table_a_view_reads_is_warned_before_the_restore_fails(
    mariadb_server: MariaDBServer, mariadb_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    execute(
        mariadb_server,
        mariadb_database,
        "CREATE TABLE orders (id int PRIMARY KEY)",
        "CREATE VIEW recent AS SELECT id FROM orders",
    )
    job = mysql_job(mariadb_server, tmp_path, [mariadb_database], include_grants=False, exclude_tables=["orders"])
    config = write_config(tmp_path, {"main": job})
    assert run_cli(config, "check-config") == 0
    output = capsys.readouterr().out
    assert f"warning: database '{mariadb_database}': view recent needs orders, which the scope excludes" in output
