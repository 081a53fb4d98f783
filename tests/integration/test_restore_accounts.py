"""Restores and drills with the accounts a user really has: a backup role that may only read, and a
restore account of its own ([jobs.NAME.restore]) with exactly the privileges the README lists."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import events_named, run_cli, watching_processes, write_config
from psycopg import sql
from servers.fixtures_data import load_sakila
from servers.mariadb import MariaDBServer
from servers.mongo import MongoServer
from servers.postgres import PostgresServer
from test_mongo import collection_shapes, fill_rich_database, mongo_job
from test_postgres import SCHEMA, drop_database, table_fingerprints

from agent.engines.mysql.grants import RESTORE_PRIVILEGES


def _secret(directory: Path, name: str, password: str) -> str:
    path = directory / f"{name}.password"
    path.write_text(password + "\n")
    path.chmod(0o600)
    return str(path)


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text and "psycopg" not in text and "pymysql" not in text


# --------------------------------------------------------------------------------------------------
# PostgreSQL


@pytest.fixture
def pg_roles(pg_server: PostgresServer, pg_database: str) -> Iterator[dict[str, tuple[str, str]]]:
    """The README's backup role (pg_read_all_data), a restore role without CREATEDB, a drill role with it."""
    suffix = uuid.uuid4().hex[:8]
    roles = {kind: (f"{kind}_{suffix}", uuid.uuid4().hex) for kind in ("reader", "restorer", "driller")}
    with pg_server.connect() as connection:
        for kind, (name, password) in roles.items():
            extra = " CREATEDB" if kind == "driller" else ""
            connection.execute(f"CREATE ROLE {name} LOGIN{extra} PASSWORD '{password}'")
        connection.execute(f"GRANT pg_read_all_data TO {roles['reader'][0]}")
    try:
        yield roles
    finally:
        with pg_server.connect() as connection:
            for name, _ in roles.values():
                for (database,) in connection.execute(
                    "SELECT datname FROM pg_database WHERE datdba = (SELECT oid FROM pg_roles WHERE rolname = %s)",
                    (name,),
                ).fetchall():
                    connection.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(database)))
                connection.execute(f"DROP ROLE IF EXISTS {name}")


def _pg_config(
    tmp_path: Path,
    server: PostgresServer,
    database: str,
    roles: dict[str, tuple[str, str]],
    restorer: str,
    **extra: Any,
) -> Path:
    reader, reader_password = roles["reader"]
    name, password = roles[restorer]
    job = {
        "engine": "postgresql",
        "host": server.host,
        "port": server.port,
        "user": reader,
        "password_file": _secret(tmp_path, reader, reader_password),
        "databases": [database],
        "include_globals": False,
        "restore": {"user": name, "password_file": _secret(tmp_path, name, password)},
        **extra,
    }
    return write_config(tmp_path, {"main": job})


@pytest.fixture
def pg_source(pg_server: PostgresServer, pg_database: str) -> str:
    pg_server.psql(pg_database, SCHEMA)
    return pg_database


def test_postgres_restore_into_an_empty_database_the_user_created_for_the_restore_role(
    pg_server: PostgresServer,
    pg_source: str,
    pg_roles: dict[str, tuple[str, str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = _pg_config(tmp_path, pg_server, pg_source, pg_roles, "restorer")
    assert run_cli(config, "backup") == 0
    target, restorer = f"{pg_source}_copy", pg_roles["restorer"][0]
    pg_server.psql("postgres", f'CREATE DATABASE "{target}" OWNER {restorer}')
    capsys.readouterr()

    assert run_cli(config, "restore", "--job", "main", "--database", pg_source, "--into", target, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "create database" not in out and f"account:  {restorer} has the privileges" in out
    restore_password = pg_roles["restorer"][1].encode()
    with watching_processes(b"pg_restore", restore_password) as watch:
        assert run_cli(config, "restore", "--job", "main", "--database", pg_source, "--into", target) == 0

    assert watch.tool_argvs and not watch.leaks  # pg_restore ran; the password was in no argv or environment
    assert restore_password.decode() not in (tmp_path / "agent.log").read_text()
    assert table_fingerprints(pg_server, target) == table_fingerprints(pg_server, pg_source)
    # the second time the database holds data: refused without --force
    assert run_cli(config, "restore", "--job", "main", "--database", pg_source, "--into", target) == 1
    assert "already holds data" in capsys.readouterr().err


def test_postgres_restore_without_createdb_is_refused_naming_it_dry_run_included(
    pg_server: PostgresServer,
    pg_source: str,
    pg_roles: dict[str, tuple[str, str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = _pg_config(tmp_path, pg_server, pg_source, pg_roles, "restorer")
    assert run_cli(config, "backup") == 0
    target = f"{pg_source}_new"
    capsys.readouterr()

    assert run_cli(config, "restore", "--job", "main", "--database", pg_source, "--into", target, "--dry-run") == 1
    out = capsys.readouterr().out
    assert f"create database {target!r}" in out and "missing:" in out and "CREATEDB" in out
    assert run_cli(config, "restore", "--job", "main", "--database", pg_source, "--into", target) == 1
    captured = capsys.readouterr()
    assert "CREATEDB" in captured.err
    _no_traceback(captured.err + captured.out)


def test_postgres_restore_into_a_database_it_may_not_create_in_names_the_grant(
    pg_server: PostgresServer,
    pg_source: str,
    pg_roles: dict[str, tuple[str, str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = _pg_config(tmp_path, pg_server, pg_source, pg_roles, "restorer")
    assert run_cli(config, "backup") == 0
    target = f"{pg_source}_notmine"
    pg_server.psql("postgres", f'CREATE DATABASE "{target}"')  # owned by the superuser, not the restorer
    try:
        capsys.readouterr()
        assert run_cli(config, "restore", "--job", "main", "--database", pg_source, "--into", target) == 1
        err = capsys.readouterr().err
        assert "CREATE on database" in err and "OWNER TO" in err
        _no_traceback(err)
    finally:
        drop_database(pg_server, target)


def test_postgres_drill_with_a_createdb_restore_role_passes_and_without_it_fails_with_the_reason(
    pg_server: PostgresServer,
    pg_source: str,
    pg_roles: dict[str, tuple[str, str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    passing = _pg_config(tmp_path, pg_server, pg_source, pg_roles, "driller", drill={"every": "1w"})
    assert run_cli(passing, "backup") == 0
    assert run_cli(passing, "doctor") in (0, 1)
    doctor = capsys.readouterr().out
    assert "drills:" in doctor and "may create, load and drop" in doctor
    assert run_cli(passing, "drill") == 0
    assert f"PASSED   main/{pg_source}" in capsys.readouterr().out

    failing = _pg_config(tmp_path, pg_server, pg_source, pg_roles, "restorer", drill={"every": "1w"})
    run_cli(failing, "doctor")
    doctor = capsys.readouterr().out
    assert f"drills: restore account {pg_roles['restorer'][0]} lacks CREATEDB" in doctor
    assert run_cli(failing, "drill") == 1
    out = capsys.readouterr().out
    assert "no_privilege" in out and "CREATEDB" in out
    failed = events_named(tmp_path, "drill.failed")[-1]
    assert failed["reason"] == "no_privilege" and "CREATEDB" in failed["error"]


def test_postgres_target_url_uses_the_restore_accounts_password(
    pg_server: PostgresServer, pg_source: str, pg_roles: dict[str, tuple[str, str]], tmp_path: Path
) -> None:
    config = _pg_config(tmp_path, pg_server, pg_source, pg_roles, "driller")
    assert run_cli(config, "backup") == 0
    target = f"{pg_source}_url"
    url = f"postgresql://{pg_roles['driller'][0]}@{pg_server.host}:{pg_server.port}"
    assert (
        run_cli(config, "restore", "--job", "main", "--database", pg_source, "--into", target, "--target-url", url) == 0
    )
    assert table_fingerprints(pg_server, target) == table_fingerprints(pg_server, pg_source)


# --------------------------------------------------------------------------------------------------
# MariaDB


@pytest.fixture(scope="module")
def sakila_source(mariadb_server: MariaDBServer) -> Iterator[str]:
    """Sakila (views, triggers, routines) plus an event, so every restore privilege is needed."""
    name = f"sakila_{uuid.uuid4().hex[:6]}"
    mariadb_server.mysql(None, f"CREATE DATABASE {name}")
    load_sakila(mariadb_server, name)
    mariadb_server.mysql(name, "CREATE EVENT nightly ON SCHEDULE EVERY 1 DAY DISABLE DO DELETE FROM payment WHERE 0")
    try:
        yield name
    finally:
        mariadb_server.mysql(None, f"DROP DATABASE IF EXISTS {name}")


def _mariadb_account(server: MariaDBServer, privileges: str, pattern: str) -> tuple[str, str]:
    name, password = f"r{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    server.mysql(
        None,
        f"CREATE USER '{name}'@'%' IDENTIFIED BY '{password}'; GRANT {privileges} ON `{pattern}`.* TO '{name}'@'%';",
    )
    return name, password


def _mariadb_config(
    tmp_path: Path, server: MariaDBServer, database: str, restorer: tuple[str, str], **extra: Any
) -> Path:
    reader, reader_password = f"b{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    server.mysql(
        None,
        f"CREATE USER '{reader}'@'%' IDENTIFIED BY '{reader_password}'; "
        f"GRANT SELECT, SHOW VIEW, TRIGGER, LOCK TABLES, EVENT ON *.* TO '{reader}'@'%';",
    )
    job = {
        "engine": "mariadb",
        "host": server.host,
        "port": server.port,
        "user": reader,
        "password_file": _secret(tmp_path, reader, reader_password),
        "databases": [database],
        "include_grants": False,
        "restore": {"user": restorer[0], "password_file": _secret(tmp_path, restorer[0], restorer[1])},
        **extra,
    }
    return write_config(tmp_path, {"shop": job})


def _mariadb_tables(server: MariaDBServer, database: str) -> dict[str, str]:
    with server.connect(database) as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_TYPE = 'BASE TABLE'",
            (database,),
        )
        names = sorted(str(row[0]) for row in cursor.fetchall())
        result = {}
        for name in names:
            cursor.execute(f"CHECKSUM TABLE `{name}`")
            result[name] = str(cursor.fetchone()[1])
        for kind in ("TRIGGERS", "ROUTINES", "EVENTS", "VIEWS"):
            column = {"TRIGGERS": "TRIGGER", "ROUTINES": "ROUTINE", "EVENTS": "EVENT", "VIEWS": "TABLE"}[kind]
            schema = {"TRIGGERS": "TRIGGER_SCHEMA", "ROUTINES": "ROUTINE_SCHEMA", "EVENTS": "EVENT_SCHEMA"}
            cursor.execute(
                f"SELECT {column}_NAME FROM information_schema.{kind} WHERE {schema.get(kind, 'TABLE_SCHEMA')} = %s",
                (database,),
            )
            result[kind] = ",".join(sorted(str(row[0]) for row in cursor.fetchall()))
    return result


def test_mariadb_restore_and_drill_with_exactly_the_documented_privileges(
    mariadb_server: MariaDBServer, sakila_source: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = f"{sakila_source}_copy"
    restorer = _mariadb_account(mariadb_server, ", ".join(RESTORE_PRIVILEGES), f"{sakila_source}%")
    config = _mariadb_config(tmp_path, mariadb_server, sakila_source, restorer, drill={"every": "1w"})
    assert run_cli(config, "backup") == 0
    try:
        assert run_cli(config, "restore", "--job", "shop", "--database", sakila_source, "--into", target) == 0
        assert _mariadb_tables(mariadb_server, target) == _mariadb_tables(mariadb_server, sakila_source)
        capsys.readouterr()
        run_cli(config, "doctor")
        assert f"drills: restore account {restorer[0]} may create" in capsys.readouterr().out
        assert run_cli(config, "drill") == 0
        assert restorer[1] not in (tmp_path / "agent.log").read_text()
    finally:
        mariadb_server.mysql(None, f"DROP DATABASE IF EXISTS {target}; DROP USER '{restorer[0]}'@'%';")


@pytest.mark.parametrize("dropped", RESTORE_PRIVILEGES)
def test_mariadb_a_restore_account_missing_one_privilege_is_refused_naming_it(
    mariadb_server: MariaDBServer,
    sakila_source: str,
    dropped: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target = f"{sakila_source}_less"
    privileges = ", ".join(name for name in RESTORE_PRIVILEGES if name != dropped)
    restorer = _mariadb_account(mariadb_server, privileges, f"{sakila_source}%")
    config = _mariadb_config(tmp_path, mariadb_server, sakila_source, restorer, drill={"every": "1w"})
    assert run_cli(config, "backup") == 0
    capsys.readouterr()
    try:
        assert (
            run_cli(config, "restore", "--job", "shop", "--database", sakila_source, "--into", target, "--dry-run") == 1
        )
        assert f"lacks {dropped} on {target!r}" in capsys.readouterr().out
        assert run_cli(config, "restore", "--job", "shop", "--database", sakila_source, "--into", target) == 1
        captured = capsys.readouterr()
        assert f"lacks {dropped}" in captured.err
        _no_traceback(captured.err)
        assert run_cli(config, "drill") == 1
        assert "no_privilege" in capsys.readouterr().out
    finally:
        mariadb_server.mysql(None, f"DROP DATABASE IF EXISTS {target}; DROP USER '{restorer[0]}'@'%';")


def test_postgres_restore_with_only_the_readme_backup_role_names_what_it_lacks_not_a_traceback(
    pg_server: PostgresServer,
    pg_source: str,
    pg_roles: dict[str, tuple[str, str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reader, password = pg_roles["reader"]
    job = {
        "engine": "postgresql",
        "host": pg_server.host,
        "port": pg_server.port,
        "user": reader,
        "password_file": _secret(tmp_path, reader, password),
        "databases": [pg_source],
        "include_globals": False,
    }
    config = write_config(tmp_path, {"main": job})
    assert run_cli(config, "backup") == 0
    target = f"{pg_source}_reader"
    capsys.readouterr()
    assert run_cli(config, "restore", "--job", "main", "--database", pg_source, "--into", target, "--dry-run") == 1
    assert f"missing:  account {reader} lacks CREATEDB" in capsys.readouterr().out
    assert run_cli(config, "restore", "--job", "main", "--database", pg_source, "--into", target) == 1
    captured = capsys.readouterr()
    assert f"account {reader} cannot restore into {target!r}: it lacks CREATEDB" in captured.err
    _no_traceback(captured.err + captured.out)


def test_mariadb_restore_with_only_the_readme_backup_account_names_what_it_lacks(
    mariadb_server: MariaDBServer, mariadb_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mariadb_server.mysql(mariadb_database, "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2);")
    config = _mariadb_config(tmp_path, mariadb_server, mariadb_database, ("unused", "unused"))
    text = config.read_text()
    config.write_text(text[: text.index("restore = ")])  # no restore account: the backup account restores
    assert run_cli(config, "backup") == 0
    capsys.readouterr()
    target = f"{mariadb_database}_copy"
    assert run_cli(config, "restore", "--job", "shop", "--database", mariadb_database, "--into", target) == 1
    captured = capsys.readouterr()
    assert "lacks INSERT, CREATE, DROP, ALTER" in captured.err and "GRANT SELECT, INSERT" in captured.err
    _no_traceback(captured.err)


# --------------------------------------------------------------------------------------------------
# MongoDB (SecantusDB enforces the built-in roles)


def _mongo_config(
    tmp_path: Path, server: MongoServer, database: str, roles: list[Any], **extra: Any
) -> tuple[Path, str]:
    name, password = f"r{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with server.client() as client:
        client.admin.command("createUser", name, pwd=password, roles=roles)
    job = mongo_job(server, tmp_path, [database])
    job["restore"] = {"user": name, "password_file": _secret(tmp_path, name, password)}
    job.update(extra)
    return write_config(tmp_path, {"docs": job}), name


def test_mongodb_restore_and_drill_with_the_documented_roles(
    mongo_server: MongoServer, mongo_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with mongo_server.client() as client:
        fill_rich_database(client, mongo_database)
    target = f"{mongo_database}_copy"
    roles = [{"role": "readWriteAnyDatabase", "db": "admin"}, {"role": "dbAdminAnyDatabase", "db": "admin"}]
    config, name = _mongo_config(tmp_path, mongo_server, mongo_database, roles, drill={"every": "1w"})
    try:
        assert run_cli(config, "backup") == 0
        assert run_cli(config, "restore", "--job", "docs", "--database", mongo_database, "--into", target) == 0
        with mongo_server.client() as client:
            assert collection_shapes(client, target) == collection_shapes(client, mongo_database)
        capsys.readouterr()
        assert run_cli(config, "drill") == 0
        run_cli(config, "doctor")
        assert f"drills: restore account {name} may create" in capsys.readouterr().out
    finally:
        with mongo_server.client() as client:
            client.drop_database(target)
            client.admin.command("dropUser", name)


def test_mongodb_read_write_alone_is_refused_naming_db_admin(
    mongo_server: MongoServer, mongo_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with mongo_server.client() as client:
        fill_rich_database(client, mongo_database)
    target = f"{mongo_database}_rw"
    config, name = _mongo_config(tmp_path, mongo_server, mongo_database, [{"role": "readWrite", "db": target}])
    try:
        assert run_cli(config, "backup") == 0
        capsys.readouterr()
        assert (
            run_cli(config, "restore", "--job", "docs", "--database", mongo_database, "--into", target, "--dry-run")
            == 1
        )
        assert f"lacks role dbAdmin on {target!r}" in capsys.readouterr().out
        assert run_cli(config, "restore", "--job", "docs", "--database", mongo_database, "--into", target) == 1
        captured = capsys.readouterr()
        assert "dbAdmin" in captured.err
        _no_traceback(captured.err)
    finally:
        with mongo_server.client() as client:
            client.drop_database(target)
            client.admin.command("dropUser", name)


def test_mariadb_restore_into_an_existing_empty_database_and_never_into_one_holding_data(
    mariadb_server: MariaDBServer, mariadb_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mariadb_server.mysql(mariadb_database, "CREATE TABLE t (x int PRIMARY KEY); INSERT INTO t VALUES (1), (2), (3);")
    target = f"{mariadb_database}_made"
    mariadb_server.mysql(None, f"CREATE DATABASE `{target}`")  # created by the user, empty
    restorer = _mariadb_account(mariadb_server, ", ".join(RESTORE_PRIVILEGES), target)
    config = _mariadb_config(tmp_path, mariadb_server, mariadb_database, restorer)
    try:
        assert run_cli(config, "backup") == 0
        capsys.readouterr()
        arguments = ("restore", "--job", "shop", "--database", mariadb_database, "--into", target)
        assert run_cli(config, *arguments, "--dry-run") == 0
        out = capsys.readouterr().out
        assert "(empty)" in out and "create database" not in out
        assert run_cli(config, *arguments) == 0
        assert mariadb_server.mysql(target, "SELECT SUM(x) FROM t").strip() == "6"
        capsys.readouterr()
        assert run_cli(config, *arguments) == 1
        assert "already holds data" in capsys.readouterr().err
    finally:
        mariadb_server.mysql(None, f"DROP DATABASE IF EXISTS `{target}`; DROP USER '{restorer[0]}'@'%';")
