"""Table scope: how patterns place each table, and how the config says what is wrong with them."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import Config, parse_config
from agent.engines.postgres.engine import PostgresEngine, table_pattern
from agent.errors import ConfigError
from agent.manifest import Manifest
from agent.restore import tables_left_out
from agent.scope import EVERYTHING, TableScope, resolve

SOURCE = Path("/etc/backup-agent/config.toml")
STORAGE = '[storage]\npath = "/var/backups/db"\n'
PAGILA = ["public.payment", "public.payment_p2007_01", "public.payment_p2007_02", "public.rental", "public.film"]
PARTITIONS = {"public.payment_p2007_01": "public.payment", "public.payment_p2007_02": "public.payment"}


def parse(text: str) -> Config:
    return parse_config(text, SOURCE)


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    return caught.value.problems


def test_exclusion_wins_over_schema_only_which_wins_over_inclusion() -> None:
    scope = TableScope(tables=("public.*",), exclude_tables=("*.rental",), schema_only_tables=("*.rental", "*.film"))
    resolved = resolve(scope, PAGILA)
    assert resolved.excluded == ("public.rental",)
    assert resolved.schema_only == ("public.film",)
    assert resolved.dumped == ("public.payment", "public.payment_p2007_01", "public.payment_p2007_02")


def test_a_table_not_named_by_tables_is_excluded() -> None:
    resolved = resolve(TableScope(tables=("public.film",)), PAGILA)
    assert resolved.dumped == ("public.film",)
    assert len(resolved.excluded) == 4


def test_a_partition_follows_its_parent() -> None:
    resolved = resolve(TableScope(schema_only_tables=("public.payment",)), PAGILA, parents=PARTITIONS)
    assert resolved.schema_only == ("public.payment", "public.payment_p2007_01", "public.payment_p2007_02")
    resolved = resolve(TableScope(exclude_tables=("public.payment",)), PAGILA, parents=PARTITIONS)
    assert resolved.dumped == ("public.film", "public.rental")


def test_a_pattern_that_matches_no_table_is_named_with_its_key() -> None:
    resolved = resolve(TableScope(exclude_tables=("public.film", "public.flim*")), PAGILA)
    assert resolved.unmatched == ('exclude_tables: "public.flim*"',)
    assert resolved.warnings("shop") == ["database 'shop': exclude_tables: \"public.flim*\" matches no table"]


def test_a_glob_bracket_names_a_literal_star_only() -> None:
    resolved = resolve(
        TableScope(exclude_tables=("public.tricky[*]name",)), ["public.tricky*name", "public.trickyXname"]
    )
    assert resolved.excluded == ("public.tricky*name",)


def test_postgres_patterns_without_a_schema_match_the_table_in_any_schema() -> None:
    assert PostgresEngine.scope_matches("payment*", "public.payment_p2007_01")
    assert PostgresEngine.scope_matches("public.pay*", "public.payment")
    assert not PostgresEngine.scope_matches("legacy.*", "public.payment")


def test_pg_dump_gets_each_name_quoted_so_no_character_is_a_pattern() -> None:
    assert table_pattern(("public", 'we"ird*.name')) == '"public"."we""ird*.name"'


def test_a_job_and_a_database_scope_are_read_and_the_database_keys_replace_the_jobs() -> None:
    config = parse(
        STORAGE + '[jobs.main]\nengine = "postgresql"\ndatabases = ["shop", "crm"]\n'
        'exclude_tables = ["public.audit*"]\nschema_only_tables = ["public.sessions"]\n'
        '[jobs.main.scope.crm]\ntables = ["public.customer*"]\nschema_only_tables = []\n'
    )
    scope = config.jobs["main"].scope
    assert scope.for_database("shop") == TableScope(None, ("public.audit*",), ("public.sessions",))
    assert scope.for_database("crm") == TableScope(("public.customer*",), ("public.audit*",), ())
    assert config.describe()["jobs"]["main"]["scope"]["databases"]["crm"]["tables"] == ["public.customer*"]


def test_a_job_without_scope_keys_dumps_every_table() -> None:
    config = parse(STORAGE + '[jobs.main]\nengine = "postgresql"\ndatabases = "*"\n')
    assert config.jobs["main"].scope.is_everything
    assert config.jobs["main"].scope.for_database("x") == EVERYTHING


def test_scope_problems_name_the_key_path_and_line() -> None:
    problems = problems_of(
        STORAGE + '[jobs.main]\nengine = "postgresql"\ndatabases = ["shop"]\ntables = []\nexclude_tables = "a*"\n'
        '[jobs.main.scope.crm]\ntables = ["x"]\nschema_only = ["y"]\n'
    )
    assert "jobs.main.tables (line 6): must not be an empty list (leave it out to dump every table)" in problems
    assert 'jobs.main.exclude_tables (line 7): expected a list of strings, got "a*"' in problems
    assert "jobs.main.scope.crm (line 8): not one of the job's databases" in problems
    assert any(problem.startswith("jobs.main.scope.crm.schema_only (line 10): unknown key") for problem in problems)


def test_an_engine_without_tables_refuses_table_scope() -> None:
    problems = problems_of(STORAGE + '[jobs.cache]\nengine = "redis"\ndatabases = "*"\nexclude_tables = ["x"]\n')
    assert problems == [
        "jobs.cache.exclude_tables (line 6): engine redis has no tables to choose from; table scope is not supported"
    ]


def test_a_restore_of_a_table_the_scope_left_out_is_named() -> None:
    from agent.manifest import ManifestScope

    scope = ManifestScope(dumped=["public.film"], schema_only=["public.rental"], excluded=["public.payment"])
    manifest = _manifest(scope)
    assert tables_left_out(manifest, ("payment", "film", "rental")) == ["payment"]
    assert tables_left_out(_manifest(None), ("payment",)) == []


def _manifest(scope: object) -> Manifest:
    fields = dict.fromkeys(("job", "engine", "database", "file", "host", "server", "server_version", "tool"), "x")
    return Manifest(
        **fields,
        kind="database",
        tool_version="x",
        format="postgresql-custom",
        compression="zstd",
        compression_level=3,
        started_at="2026-01-01T00:00:00+00:00",
        finished_at="2026-01-01T00:00:00+00:00",
        duration_seconds=1.0,
        raw_bytes=1,
        stored_bytes=1,
        sha256="0" * 64,
        run_id="r",
        agent_version="1",
        scope=scope,  # type: ignore[arg-type]
    )


def test_the_example_config_shows_every_scope_key_and_they_parse_once_uncommented() -> None:
    example = Path(__file__).resolve().parents[2] / "config.example.toml"
    text = example.read_text(encoding="utf-8")
    for line in (
        '# tables = ["public.*"]',
        '# exclude_tables = ["public.audit_log_*"]',
        '# schema_only_tables = ["public.sessions"]',
        "# [jobs.main.scope.crm]",
        '# tables = ["public.customer*"]',
    ):
        assert line in text
        text = text.replace(line, line[2:], 1)
    scope = parse_config(text, example, file_mode=0o100600).jobs["main"].scope
    assert scope.default == TableScope(("public.*",), ("public.audit_log_*",), ("public.sessions",))
    assert scope.for_database("crm").tables == ("public.customer*",)


def test_a_table_option_in_extra_args_beside_a_scope_is_refused() -> None:
    problems = problems_of(
        STORAGE + '[jobs.main]\nengine = "postgresql"\ndatabases = "*"\nexclude_tables = ["a"]\n'
        'extra_args = ["-Tpublic.x", "--exclude-table-data=public.y", "--no-sync"]\n'
    )
    assert problems == [
        f'jobs.main.extra_args (line 7): "{option}" chooses tables beside the table scope; say it with tables, '
        "exclude_tables or schema_only_tables instead"
        for option in ("-T", "--exclude-table-data")
    ]
    assert parse(STORAGE + '[jobs.main]\nengine = "postgresql"\ndatabases = "*"\nextra_args = ["-Tpublic.x"]\n')


def test_a_bad_scope_exits_78_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent import cli

    config = tmp_path / "config.toml"
    config.write_text(
        f'[storage]\npath = "{tmp_path}/storage"\n[jobs.main]\nengine = "postgresql"\ndatabases = "*"\n'
        "schema_only_tables = [1]\n",
        encoding="utf-8",
    )
    config.chmod(0o600)
    assert cli.main(["-c", str(config), "check-config", "--offline"]) == 78
    assert "jobs.main.schema_only_tables (line 6): expected a list of strings" in capsys.readouterr().err
