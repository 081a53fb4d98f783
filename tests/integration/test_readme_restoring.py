"""README "Restoring", followed word for word: its accounts, its config and its commands restore a
PostgreSQL and a MariaDB database. Everything is read from README.md, so the test follows the text;
only the server's port or socket and the password files' paths are the throwaway server's own."""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import run_cli
from servers.fixtures_data import load_pagila, load_sakila
from servers.mariadb import MariaDBServer
from servers.postgres import PostgresServer
from test_postgres import table_fingerprints
from test_restore_accounts import _mariadb_tables

README = Path(__file__).resolve().parents[2] / "README.md"
SOURCE = "shop"  # the database the README's commands name


def readme_part(heading: str) -> list[tuple[str, str]]:
    """The fenced blocks (language, text), in order, under `#### heading` of the Restoring section."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("\n## Restoring\n") :]
    section = section[: section.index("\n## ", 1)]
    part = section[section.index(f"\n#### {heading}\n") + 1 :]
    part = part[: part.index("\n#### ")] if "\n#### " in part else part
    blocks = re.findall(r"^```(\w+)\n(.*?)^```$", part, flags=re.MULTILINE | re.DOTALL)
    assert {language for language, _ in blocks} >= {"sql", "toml", "sh"}, f"README {heading}: blocks missing"
    return blocks


def statements(sql: str) -> list[str]:
    return [statement.strip() + ";" for statement in sql.split(";\n") if statement.strip().rstrip(";")]


def passwords_of(sql: str) -> dict[str, str]:
    """Each account the README creates, and its password as written there."""
    found = dict(re.findall(r"CREATE ROLE (\w+) LOGIN[^;]*PASSWORD '([^']*)'", sql))
    found.update(re.findall(r"CREATE USER '(\w+)'@'[^']*' IDENTIFIED BY '([^']*)'", sql))
    return found


def config_from(toml: str, tmp_path: Path, passwords: dict[str, str], server: dict[str, Any]) -> Path:
    """The README's job with the throwaway server's port/socket and password files under tmp_path."""
    document = tomllib.loads(toml)
    for job in document["jobs"].values():
        for table in (job, job.get("restore", {})):
            if "password_file" in table:
                secret = tmp_path / Path(table["password_file"]).name
                secret.write_text(passwords[table["user"]] + "\n")
                secret.chmod(0o600)
                toml = toml.replace(f'"{table["password_file"]}"', f'"{secret}"')
        for key, value in server.items():
            assert key in job, f"the README's job has no {key}"
            toml = re.sub(rf"^{key} = .*$", f"{key} = {value}", toml, flags=re.MULTILINE)
    head = f'[storage]\npath = "{tmp_path / "storage"}"\n\n[log]\nfile = "{tmp_path / "agent.log"}"\n\n'
    config = tmp_path / "config.toml"
    config.write_text(head + toml)
    config.chmod(0o600)
    return config


def run_commands(config: Path, sh: str, capsys: pytest.CaptureFixture[str]) -> None:
    for line in sh.splitlines():
        argv = shlex.split(line, comments=True)
        if not argv:
            continue
        assert argv[0] == "backup-agent"
        code = run_cli(config, *argv[1:])
        captured = capsys.readouterr()
        if argv[1] == "doctor":  # the accounts as documented pass every check of the job (the disk is not ours)
            assert not [row for row in captured.out.splitlines() if row.startswith("PROBLEM  jobs.")], captured.out
            assert "drills: restore account agent_restore may create, load and drop" in captured.out, captured.out
            continue
        assert code == 0, f"{line}: exit {code}\n{captured.out}\n{captured.err}"


@pytest.fixture
def pg_shop(pg_server: PostgresServer) -> Iterator[str]:
    pg_server.psql("postgres", f"CREATE DATABASE {SOURCE}")
    load_pagila(pg_server, SOURCE)
    try:
        yield SOURCE
    finally:
        for name in (SOURCE, "shop_copy", "shop_new"):
            pg_server.psql("postgres", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        pg_server.psql("postgres", "DROP ROLE IF EXISTS agent_backup; DROP ROLE IF EXISTS agent_restore;")


def test_the_readme_restores_a_postgresql_database_with_its_documented_accounts(
    pg_server: PostgresServer, pg_shop: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = readme_part("PostgreSQL")
    sql = "\n".join(text for language, text in blocks if language == "sql")
    for statement in statements(sql):
        pg_server.psql("postgres", statement)
    [toml] = [text for language, text in blocks if language == "toml"]
    config = config_from(toml, tmp_path, passwords_of(sql), {"host": f'"{pg_server.host}"', "port": pg_server.port})
    [sh] = [text for language, text in blocks if language == "sh"]

    run_commands(config, sh, capsys)

    source = table_fingerprints(pg_server, pg_shop)
    targets = re.findall(r"--into (\w+)\s*$", sh, flags=re.MULTILINE)
    assert targets == ["shop_copy", "shop_new"]  # into the database created for the account, and a new one
    for target in targets:
        assert table_fingerprints(pg_server, target) == source, target


@pytest.fixture
def mariadb_shop(mariadb_server: MariaDBServer) -> Iterator[str]:
    mariadb_server.mysql(None, f"CREATE DATABASE {SOURCE}")
    load_sakila(mariadb_server, SOURCE)
    try:
        yield SOURCE
    finally:
        mariadb_server.mysql(
            None,
            f"DROP DATABASE IF EXISTS {SOURCE}; DROP DATABASE IF EXISTS shop_copy; "
            "DROP USER IF EXISTS 'agent_backup'@'localhost'; DROP USER IF EXISTS 'agent_restore'@'localhost';",
        )


def test_the_readme_restores_a_mariadb_database_with_its_documented_accounts(
    mariadb_server: MariaDBServer, mariadb_shop: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = readme_part("MySQL and MariaDB")
    sql = "\n".join(text for language, text in blocks if language == "sql")
    for statement in statements(sql):
        mariadb_server.mysql(None, statement)
    [toml] = [text for language, text in blocks if language == "toml"]
    config = config_from(toml, tmp_path, passwords_of(sql), {"socket": f'"{mariadb_server.socket}"'})
    [sh] = [text for language, text in blocks if language == "sh"]

    run_commands(config, sh, capsys)

    source = _mariadb_tables(mariadb_server, mariadb_shop)
    targets = re.findall(r"--into (\w+)\s*$", sh, flags=re.MULTILINE)
    assert targets == ["shop_copy"]
    for target in targets:
        assert _mariadb_tables(mariadb_server, target) == source, target
