"""Table scope on PostgreSQL: a real Pagila dump leaves out and empties exactly the tables its patterns
name, restores to exactly the tables in scope, passes its drill, and check-config warns of what cannot work."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from agent_helpers import data_files, run_cli, write_config
from psycopg import sql
from servers.fixtures_data import load_pagila
from servers.postgres import PostgresServer
from test_postgres import SCHEMA, drop_database, pg_job, table_fingerprints

from agent.config import load_config
from agent.manifest import manifest_path, read_manifest
from agent.plan import _scope_warnings as scope_warnings
from agent.restore import engine_for
from agent.verify import _check_against as verify_file_against

# a literal `*` in a name: the glob `[*]` names only it; an unquoted pg_dump pattern would take both
TRICKY = 'CREATE TABLE public."tricky*name" (id int); CREATE TABLE public."trickyXname" (id int);'
TRICKY += 'INSERT INTO public."tricky*name" VALUES (1), (2); INSERT INTO public."trickyXname" VALUES (3);'
EXCLUDED = ["public.payment_p2007_01", "public.payment_p2007_02", "public.payment_p2007_03", "public.tricky*name"]
SCHEMA_ONLY = ["public.payment_p2007_04", "public.payment_p2007_05", "public.payment_p2007_06"]


def _scoped_job(server: PostgresServer, tmp_path: Path, database: str, **scope: object) -> dict[str, object]:
    return pg_job(server, tmp_path, [database], include_globals=False, **scope)


@pytest.mark.slow
def test_a_pagila_dump_keeps_exactly_its_scope_through_restore_and_drill(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    load_pagila(pg_server, pg_database)
    pg_server.psql(pg_database, TRICKY)
    before = table_fingerprints(pg_server, pg_database)
    job = _scoped_job(
        pg_server,
        tmp_path,
        pg_database,
        exclude_tables=["public.payment_p2007_0[1-3]", "public.tricky[*]name", "public.no_such_table*"],
        schema_only_tables=["public.payment_p2007_0[4-6]"],
    )
    config = write_config(tmp_path, {"main": job})

    assert run_cli(config, "backup") == 0
    (dump,) = data_files(tmp_path / "storage")
    manifest = read_manifest(manifest_path(dump))
    assert manifest.scope is not None
    assert manifest.scope.excluded == EXCLUDED
    assert manifest.scope.schema_only == SCHEMA_ONLY
    assert "public.trickyXname" in manifest.scope.dumped and "public.rental" in manifest.scope.dumped
    assert manifest.scope.exclude_tables[-1] == "public.no_such_table*"
    assert not set(EXCLUDED) & set(manifest.counts)
    assert {name: manifest.counts[name] for name in SCHEMA_ONLY} == dict.fromkeys(SCHEMA_ONLY, 0)
    assert manifest.counts["public.rental"] == 16044 and manifest.counts["public.trickyXname"] == 1
    assert any('"public.no_such_table*" matches no table' in warning for warning in manifest.warnings)
    assert run_cli(config, "verify") == 0
    forged = msgspec.structs.replace(manifest.scope, excluded=["public.rental"], schema_only=["public.film"])
    finding = verify_file_against(dump, msgspec.structs.replace(manifest, scope=forged))
    assert finding.status == "corrupt"
    assert finding.message == "holds rows of tables its recorded scope leaves out: public.film, public.rental"

    restored = f"{pg_database}_r"
    try:
        assert run_cli(config, "restore", "--job", "main", "--database", pg_database, "--into", restored) == 0
        after = table_fingerprints(pg_server, restored)
        left_out = {*EXCLUDED, *SCHEMA_ONLY, "public.payment"}  # the partitioned parent reads its partitions
        in_scope = {name: value for name, value in before.items() if name not in left_out}
        assert {name: after[name] for name in in_scope} == in_scope
        partitions = [name for name in in_scope if name.startswith("public.payment_p")]
        assert len(partitions) == 2 and after["public.payment"][0] == sum(before[name][0] for name in partitions)
        assert {name: after[name][0] for name in SCHEMA_ONLY} == dict.fromkeys(SCHEMA_ONLY, 0)
        assert set(after) == set(before) - set(EXCLUDED)
    finally:
        drop_database(pg_server, restored)

    capsys.readouterr()
    assert run_cli(config, "drill", "--job", "main") == 0
    assert run_cli(config, "check-config") == 0
    output = capsys.readouterr().out
    assert f"warning: database '{pg_database}': exclude_tables: \"public.no_such_table*\" matches no table" in output


def test_a_per_database_scope_replaces_the_jobs_and_check_config_names_what_a_restore_trips_on(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = f"{pg_database}_b"
    pg_server.psql(pg_database, SCHEMA)
    with pg_server.connect() as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(other)))
    try:
        pg_server.psql(other, SCHEMA)
        job = pg_job(pg_server, tmp_path, [pg_database, other], include_globals=False, exclude_tables=["shop.customer"])
        config = write_config(tmp_path, {"main": job})
        with config.open("a", encoding="utf-8") as handle:
            handle.write(
                f'\n[jobs.main.scope."{other}"]\ntables = ["shop.*"]\n'
                'exclude_tables = []\nschema_only_tables = ["Nothing*"]\n'
            )

        assert run_cli(config, "check-config", "--json") == 0
        warnings = json.loads(capsys.readouterr().out)["jobs"]["main"]["warnings"]
        assert any("foreign key audit.event needs shop.customer" in warning for warning in warnings)
        assert any("view shop.big_customers needs shop.customer" in warning for warning in warnings)
        assert any(f"'{other}': schema_only_tables: \"Nothing*\" matches no table" in warning for warning in warnings)

        assert run_cli(config, "backup", "--database", other) == 0
        (dump,) = data_files(tmp_path / "storage")
        manifest = read_manifest(manifest_path(dump))
        assert manifest.scope is not None and manifest.scope.tables == ["shop.*"]
        assert manifest.scope.dumped == ["shop.customer"]
        assert manifest.scope.excluded == ["audit.event", "public.Odd Name"]
        assert set(manifest.counts) == {"shop.customer"}
        refused = run_cli(config, "restore", "--job", "main", "--database", other, "--into", "x_r", "--table", "event")
        assert refused == 2
        assert "not in this backup; its table scope excluded it" in capsys.readouterr().err
    finally:
        drop_database(pg_server, other)


def test_check_config_names_a_database_scope_for_a_database_that_is_not_dumped(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path
) -> None:
    pg_server.psql(pg_database, SCHEMA)
    config_path = write_config(tmp_path, {"main": pg_job(pg_server, tmp_path, "*", include_globals=False)})
    with config_path.open("a", encoding="utf-8") as handle:
        handle.write('\n[jobs.main.scope.gone]\ntables = ["x"]\n')
    engine = engine_for(load_config(config_path), "main")
    assert scope_warnings(engine, [pg_database]) == [
        "scope.'gone': no database of that name is dumped (the server has none, or exclude leaves it out)"
    ]


def test_hostile_table_names_reach_pg_dump_exactly(pg_server: PostgresServer, pg_database: str, tmp_path: Path) -> None:
    """A quote, a backslash, a newline, a dot and regex characters in names: each one is left out or
    emptied exactly, and its look-alikes are kept."""
    names = ['we"ird', "back\\slash.dot", "new\nline", "a+b(c)|d$"]
    statements = [
        sql.SQL("CREATE TABLE public.{} (id int); INSERT INTO public.{} VALUES (1), (2)").format(
            sql.Identifier(name), sql.Identifier(name)
        )
        for name in [*names, "weXird", "back\\slashXdot", "aab(c)|d$"]
    ]
    with pg_server.connect(pg_database) as connection:
        for statement in statements:
            connection.execute(statement)
    job = _scoped_job(
        pg_server,
        tmp_path,
        pg_database,
        exclude_tables=['public.we"ird', "public.back\\slash.dot"],
        schema_only_tables=["public.new\nline", "public.a+b(c)|d$"],
    )
    config = write_config(tmp_path, {"main": job})
    assert run_cli(config, "backup") == 0
    (dump,) = data_files(tmp_path / "storage")
    manifest = read_manifest(manifest_path(dump))
    assert manifest.scope is not None
    assert manifest.scope.excluded == ["public.back\\slash.dot", 'public.we"ird']
    assert manifest.scope.schema_only == ["public.a+b(c)|d$", "public.new\nline"]
    assert manifest.counts == {
        "public.weXird": 2,
        "public.back\\slashXdot": 2,
        "public.aab(c)|d$": 2,
        "public.new\nline": 0,
        "public.a+b(c)|d$": 0,
    }
    restored = f"{pg_database}_r"
    try:
        assert run_cli(config, "restore", "--job", "main", "--database", pg_database, "--into", restored) == 0
        assert {name: rows for name, (rows, _) in table_fingerprints(pg_server, restored).items()} == manifest.counts
    finally:
        drop_database(pg_server, restored)
