"""MySQL/MariaDB backups through the CLI against a throwaway MariaDB: round trips, names, failures, secrets."""

from __future__ import annotations

import itertools
import random
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pymysql
import pytest
from agent_helpers import (
    data_files,
    decompressed,
    events_named,
    password_file,
    run_cli,
    stored_files,
    watching_processes,
    write_config,
)
from servers.fixtures_data import SAKILA_RENTALS, load_sakila
from servers.mariadb import MariaDBServer

from agent import catalog
from agent.config import load_config
from agent.engines.mysql.engine import SQL_FORMAT, MysqlEngine
from agent.manifest import manifest_path, read_manifest
from agent.restore import RestoreError, choose_backup, decompressed_chunks, engine_for, restore_database

REAL_TOOL = shutil.which("mariadb-dump") or "mariadb-dump"
ALL_BYTES = bytes(range(256))


def mysql_job(server: MariaDBServer, tmp_path: Path, databases: object, **extra: object) -> dict[str, object]:
    job: dict[str, object] = {
        "engine": "mariadb",
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "password_file": str(password_file(tmp_path, server.password)),
        "databases": databases,
    }
    job.update(extra)
    return job


def execute(server: MariaDBServer, database: str | None, *statements: str, root: bool = False) -> None:
    connection = server.connect_root(database) if root else server.connect(database)
    with connection, connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)


def query(server: MariaDBServer, database: str | None, statement: str, *args: Any) -> list[tuple[Any, ...]]:
    with server.connect(database) as connection, connection.cursor() as cursor:
        cursor.execute(statement, args or None)
        return list(cursor.fetchall())


def drop_database(server: MariaDBServer, name: str) -> None:
    server.start()
    execute(server, None, f"DROP DATABASE IF EXISTS `{name.replace('`', '``')}`")


@pytest.fixture
def restored_name(mariadb_server: MariaDBServer) -> Iterator[str]:
    """A name for the database a test restores into; dropped afterwards."""
    name = f"t_restored_{secrets.token_hex(4)}"
    yield name
    drop_database(mariadb_server, name)


def mariadb_client(
    server: MariaDBServer, tmp_path: Path, database: str | None, sql: bytes, *, root: bool = False
) -> subprocess.CompletedProcess[bytes]:
    """What the docs tell a user to run: `mariadb NEWNAME < dump.sql` (credentials in an option file)."""
    if root:
        argv = ["mariadb", "--no-defaults", "--protocol=SOCKET", f"--socket={server.socket}", "--user=root"]
    else:
        options = tmp_path / "client.cnf"
        options.write_text(f'[client]\nuser="{server.user}"\npassword="{server.password}"\n')
        options.chmod(0o600)
        argv = [
            "mariadb",
            f"--defaults-extra-file={options}",
            "--protocol=TCP",
            f"--host={server.host}",
            f"--port={server.port}",
        ]
    if database is not None:
        argv.append(database)
    return subprocess.run(argv, input=sql, capture_output=True, check=False, timeout=300)


def fingerprints(server: MariaDBServer, database: str) -> dict[str, tuple[int, int]]:
    """Row count and CHECKSUM TABLE of every base table."""
    tables = query(
        server,
        database,
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s "
        "AND TABLE_TYPE = 'BASE TABLE' ORDER BY 1",
        database,
    )
    result: dict[str, tuple[int, int]] = {}
    for (table,) in tables:
        quoted = "`" + str(table).replace("`", "``") + "`"
        count = query(server, database, f"SELECT COUNT(*) FROM {quoted}")[0][0]
        checksum = query(server, database, f"CHECKSUM TABLE {quoted}")[0][1]
        result[str(table)] = (int(count), int(checksum))
    return result


def schema_objects(server: MariaDBServer, database: str) -> dict[str, list[str]]:
    def names(statement: str) -> list[str]:
        return sorted(str(row[0]) for row in query(server, database, statement, database))

    return {
        "views": names("SELECT TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA = %s"),
        "triggers": names("SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s"),
        "routines": names(
            "SELECT CONCAT(ROUTINE_TYPE, ' ', ROUTINE_NAME) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %s"
        ),
        "events": names("SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s"),
        "sequences": names(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_TYPE = 'SEQUENCE'"
        ),
    }


def create_shop(server: MariaDBServer, database: str) -> None:
    """InnoDB and MyISAM, emoji, every byte value, NULLs, a view, a trigger, routines, an event,
    generated columns, a sequence, reserved-word names, and a routine made under another collation."""
    execute(
        server,
        database,
        """CREATE TABLE customer (
            id INT AUTO_INCREMENT PRIMARY KEY,
            name VARCHAR(200) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci NOT NULL,
            photo BLOB NULL, note TEXT NULL, price DECIMAL(10,2) NULL, created DATETIME(6) NULL,
            name_length INT AS (CHAR_LENGTH(name)) VIRTUAL,
            name_upper VARCHAR(200) AS (UPPER(name)) STORED
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
        "CREATE TABLE legacy_log (id INT PRIMARY KEY, message VARCHAR(100)) ENGINE=MyISAM DEFAULT CHARSET=latin1",
        "CREATE TABLE `order` (`select` INT NOT NULL, `from` VARCHAR(20) NULL, `group` LONGBLOB NULL) ENGINE=InnoDB",
        "CREATE TABLE all_bytes (id INT PRIMARY KEY, value LONGBLOB NULL, text_value MEDIUMTEXT NULL) ENGINE=InnoDB",
        "CREATE SEQUENCE invoice_number START WITH 1000 NOCACHE",
        "CREATE VIEW big_customers AS SELECT id, name FROM customer WHERE id > 100",
        "CREATE TRIGGER order_audit AFTER INSERT ON `order` FOR EACH ROW "
        "INSERT INTO legacy_log VALUES (NEW.`select` + 1000, CONCAT('order ', COALESCE(NEW.`from`, '-')))",
        "CREATE PROCEDURE count_customers(OUT total INT) BEGIN SELECT COUNT(*) INTO total FROM customer; END",
        "CREATE FUNCTION greeting(who VARCHAR(50)) RETURNS VARCHAR(100) DETERMINISTIC RETURN CONCAT('hi ', who)",
        "CREATE EVENT nightly_cleanup ON SCHEDULE EVERY 1 DAY STARTS '2035-01-01 00:00:00' "
        "DO DELETE FROM legacy_log WHERE id < 0",
        "ALTER DATABASE CHARACTER SET latin1 COLLATE latin1_swedish_ci",
        "CREATE FUNCTION legacy_label(n INT) RETURNS VARCHAR(20) DETERMINISTIC RETURN CONCAT('#', n)",
        "ALTER DATABASE CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
    )
    with server.connect(database) as connection, connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO customer (name, photo, note, price, created) VALUES (%s, %s, %s, %s, %s)",
            [
                (
                    f"Kunde {n} 🚀 ünïcödé 'q' \\ ),( ;\n--",
                    bytes([n % 256, 0, 255, 39, 92, 10, 13, 26]) if n % 5 else None,
                    None if n % 7 == 0 else f'note {n}\t"x"',
                    Decimal(n) / 4,
                    f"2024-0{n % 9 + 1}-1{n % 9} 12:34:56.123456" if n % 3 else None,
                )
                for n in range(1, 301)
            ],
        )
        cursor.executemany(
            "INSERT INTO `order` (`select`, `from`, `group`) VALUES (%s, %s, %s)",
            [(n, None if n % 2 else f"web {n}", ALL_BYTES if n == 1 else None) for n in range(1, 41)],
        )
        cursor.executemany(
            "INSERT INTO all_bytes VALUES (%s, %s, %s)",
            [
                (1, ALL_BYTES, "emoji 🧪🦀 and NUL \x00 inside"),
                (2, b"", ""),
                (3, None, None),
                (4, ALL_BYTES[::-1] * 1000, "x" * 70000),
            ],
        )
        cursor.execute("SELECT NEXTVAL(invoice_number), NEXTVAL(invoice_number)")


def assert_counts_however_split(raw: bytes, expected: dict[str, int]) -> None:
    """The dump's check counts the same rows however the real dump is cut into chunks."""
    chooser = random.Random(18)
    for _ in range(20):
        check = MysqlEngine.new_check(SQL_FORMAT)
        points = sorted({0, len(raw), *(chooser.randrange(len(raw)) for _ in range(chooser.randrange(1, 400)))})
        for start, end in itertools.pairwise(points):
            check.feed(raw[start:end])
        check.finish()
        assert check.row_counts() == expected  # type: ignore[attr-defined]


def only_dump(tmp_path: Path, folder: str) -> Path:
    dumps = [path for path in data_files(tmp_path / "storage") if path.parent.name == folder]
    assert len(dumps) == 1, dumps
    return dumps[0]


def test_a_database_round_trips_into_a_new_name_with_its_routines_triggers_events_and_views(
    mariadb_server: MariaDBServer, mariadb_database: str, restored_name: str, tmp_path: Path
) -> None:
    create_shop(mariadb_server, mariadb_database)
    before = fingerprints(mariadb_server, mariadb_database)
    source_collation = query(
        mariadb_server,
        None,
        "SELECT DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
        mariadb_database,
    )
    config = write_config(tmp_path, {"main": mysql_job(mariadb_server, tmp_path, [mariadb_database])})

    assert run_cli(config, "backup") == 0
    assert run_cli(config, "verify") == 0

    dump = only_dump(tmp_path, mariadb_database)
    assert dump.name.endswith(".sql.zst")
    assert oct(dump.stat().st_mode & 0o777) == "0o440"
    sql = decompressed(dump)
    assert b"CREATE DATABASE" not in sql and b"\nUSE " not in sql
    assert f"ALTER DATABASE `{mariadb_database}`".encode() not in sql
    manifest = read_manifest(manifest_path(dump))
    assert manifest.engine == "mysql" and manifest.format == "mysql-sql"
    assert manifest.server_version.startswith("10.") and "MariaDB" in manifest.tool_version
    assert manifest.counts == {table: count for table, (count, _) in before.items()}
    assert manifest.counts_consistent is True  # counted from the dump's own INSERT rows
    assert_counts_however_split(sql, manifest.counts)  # quotes, `),(`, NULs and hex blobs in the values
    assert manifest.details["collation"] == "utf8mb4_unicode_ci"
    assert manifest.details["definers"], "the accounts named by DEFINER clauses are listed"
    assert manifest.details["non_transactional_tables"] == {"legacy_log": "MyISAM"}
    assert any("legacy_log" in warning and "lock_for_consistency" in warning for warning in manifest.warnings)

    execute(mariadb_server, None, f"CREATE DATABASE `{restored_name}`")
    restore = mariadb_client(mariadb_server, tmp_path, restored_name, sql)
    assert restore.returncode == 0, restore.stderr.decode()

    assert fingerprints(mariadb_server, restored_name) == before
    assert schema_objects(mariadb_server, restored_name) == schema_objects(mariadb_server, mariadb_database)
    assert schema_objects(mariadb_server, restored_name)["events"] == ["nightly_cleanup"]
    assert query(mariadb_server, restored_name, "SELECT greeting('you'), legacy_label(7)") == [("hi you", "#7")]
    assert query(
        mariadb_server,
        restored_name,
        "SELECT DATABASE_COLLATION FROM information_schema.ROUTINES "
        "WHERE ROUTINE_SCHEMA = %s AND ROUTINE_NAME = 'legacy_label'",
        restored_name,
    ) == [("latin1_swedish_ci",)]
    assert query(mariadb_server, restored_name, "SELECT NEXTVAL(invoice_number)") == [(1002,)]
    assert query(mariadb_server, restored_name, "SELECT value, text_value FROM all_bytes WHERE id = 1") == [
        (ALL_BYTES, "emoji 🧪🦀 and NUL \x00 inside")
    ]
    execute(mariadb_server, restored_name, "INSERT INTO `order` (`select`) VALUES (500)")  # the trigger fires
    assert query(mariadb_server, restored_name, "SELECT message FROM legacy_log WHERE id = 1500") == [("order -",)]
    # the source database was never touched by the restore's collation switches
    assert (
        query(
            mariadb_server,
            None,
            "SELECT DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
            mariadb_database,
        )
        == source_collation
    )


@pytest.mark.slow
def test_the_sakila_sample_round_trips_with_equal_counts_and_checksums(
    mariadb_server: MariaDBServer, mariadb_database: str, restored_name: str, tmp_path: Path
) -> None:
    load_sakila(mariadb_server, mariadb_database)
    before = fingerprints(mariadb_server, mariadb_database)
    assert before["rental"][0] == SAKILA_RENTALS
    config = write_config(tmp_path, {"main": mysql_job(mariadb_server, tmp_path, [mariadb_database])})

    assert run_cli(config, "backup") == 0

    dump = only_dump(tmp_path, mariadb_database)
    expected = {table: count for table, (count, _) in before.items()}
    assert read_manifest(manifest_path(dump)).counts == expected
    assert read_manifest(manifest_path(dump)).counts_consistent is True
    assert_counts_however_split(decompressed(dump), expected)
    execute(mariadb_server, None, f"CREATE DATABASE `{restored_name}`")
    restore = mariadb_client(mariadb_server, tmp_path, restored_name, decompressed(dump))
    assert restore.returncode == 0, restore.stderr.decode()
    assert fingerprints(mariadb_server, restored_name) == before
    assert schema_objects(mariadb_server, restored_name) == schema_objects(mariadb_server, mariadb_database)


def test_awkward_database_names_get_safe_paths_inside_their_job(mariadb_server: MariaDBServer, tmp_path: Path) -> None:
    names = ["my shop ü`x", "../x", "..", "_grants"]
    for name in names:
        quoted = name.replace("`", "``")
        execute(
            mariadb_server,
            None,
            f"CREATE DATABASE `{quoted}`",
            f"CREATE TABLE `{quoted}`.t (a INT)",
            f"INSERT INTO `{quoted}`.t VALUES (1), (2)",
        )
    try:
        job = mysql_job(mariadb_server, tmp_path, names, include_grants=True)
        config = write_config(tmp_path, {"main": job})
        assert run_cli(config, "backup") == 0
        storage = (tmp_path / "storage").resolve()
        dumps = data_files(storage)
        assert len(dumps) == len(names) + 1
        for dump in dumps:
            assert dump.resolve().parent.parent == storage / "main"
        manifests = {dump: read_manifest(manifest_path(dump)) for dump in dumps}
        by_database = {manifest.database: dump for dump, manifest in manifests.items() if manifest.kind == "database"}
        assert set(by_database) == set(names)
        assert by_database["my shop ü`x"].parent.name == "my%20shop%20%C3%BC%60x"
        assert by_database["_grants"].parent.name != "_grants"
        assert [manifest.kind for dump, manifest in manifests.items() if dump.parent.name == "_grants"] == ["grants"]
        assert all(manifest.counts == {"t": 2} for manifest in manifests.values() if manifest.kind == "database")
        assert {record.database for record in catalog.scan(storage, "main") if record.kind == "database"} == set(names)
    finally:
        for name in names:
            drop_database(mariadb_server, name)


# --- failures ---------------------------------------------------------------------------------


def _snapshot(tmp_path: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in stored_files(tmp_path / "storage")}


def _assert_failed_cleanly(tmp_path: Path, before: dict[Path, bytes]) -> dict[str, Any]:
    """No partial, earlier files byte for byte as they were, and a backup.failed event with a reason."""
    files = stored_files(tmp_path / "storage")
    assert not [path for path in files if path.name.endswith(".partial")]
    assert {path: path.read_bytes() for path in files} == before
    failures = events_named(tmp_path, "backup.failed")
    assert failures, "a failure must be logged as backup.failed"
    assert all(event.get("reason") for event in failures)
    return failures[-1]


def fake_tool(tmp_path: Path, body: str, *, version: str | None = None) -> str:
    """A wrapper around the real mariadb-dump; `--version` answers truthfully unless told otherwise."""
    script = tmp_path / "fake-mariadb-dump"
    answer = f"echo '{version}'; exit 0" if version else f'exec "{REAL_TOOL}" --version'
    script.write_text(f'#!/bin/sh\nif [ "$1" = --version ]; then {answer}; fi\n{body}\n')
    script.chmod(0o755)
    return str(script)


def test_a_wrong_password_fails_with_exit_1_and_leaves_earlier_backups_untouched(
    mariadb_server: MariaDBServer, mariadb_database: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path, {"main": mysql_job(mariadb_server, tmp_path, [mariadb_database])})
    assert run_cli(config, "backup") == 0
    before = _snapshot(tmp_path)
    password_file(tmp_path, "not-the-password")
    assert run_cli(config, "backup") == 1
    failure = _assert_failed_cleanly(tmp_path, before)
    assert "Access denied" in failure["error"]
    assert failure["reason"] == "connection_failed"


def test_a_stopped_server_fails_the_run_and_keeps_earlier_backups(
    mariadb_server: MariaDBServer, mariadb_database: str, tmp_path: Path
) -> None:
    job = mysql_job(mariadb_server, tmp_path, [mariadb_database], connect_timeout="2s")
    config = write_config(tmp_path, {"main": job})
    assert run_cli(config, "backup") == 0
    before = _snapshot(tmp_path)
    mariadb_server.stop()
    try:
        assert run_cli(config, "backup") == 1
    finally:
        mariadb_server.start()
    failure = _assert_failed_cleanly(tmp_path, before)
    assert "cannot connect" in failure["error"] and str(mariadb_server.port) in failure["error"]


def test_a_tool_killed_mid_dump_leaves_no_file(
    mariadb_server: MariaDBServer, mariadb_database: str, tmp_path: Path
) -> None:
    create_shop(mariadb_server, mariadb_database)
    tool = fake_tool(tmp_path, f'"{REAL_TOOL}" "$@" | head -c 3000; kill -9 $$')
    config = write_config(tmp_path, {"main": mysql_job(mariadb_server, tmp_path, [mariadb_database], tool=tool)})
    assert run_cli(config, "backup") == 1
    failure = _assert_failed_cleanly(tmp_path, {})
    assert failure["reason"] == "killed" and "SIGKILL" in failure["error"]
    assert failure["database"] == mariadb_database


def test_a_truncated_dump_from_a_tool_that_exits_0_is_caught_by_the_trailer_check(
    mariadb_server: MariaDBServer, mariadb_database: str, tmp_path: Path
) -> None:
    create_shop(mariadb_server, mariadb_database)
    tool = fake_tool(tmp_path, f'"{REAL_TOOL}" "$@" | head -c 20000; exit 0')
    config = write_config(tmp_path, {"main": mysql_job(mariadb_server, tmp_path, [mariadb_database], tool=tool)})
    assert run_cli(config, "backup") == 1
    failure = _assert_failed_cleanly(tmp_path, {})
    assert failure["reason"] == "verification_failed" and "truncated" in failure["error"]


def test_a_tool_that_fails_reports_its_stderr(
    mariadb_server: MariaDBServer, mariadb_database: str, tmp_path: Path
) -> None:
    create_shop(mariadb_server, mariadb_database)
    job = mysql_job(mariadb_server, tmp_path, [mariadb_database], extra_args=["--ignore-table=no_dot_here"])
    config = write_config(tmp_path, {"main": job})
    assert run_cli(config, "backup") == 1
    failure = _assert_failed_cleanly(tmp_path, {})
    assert failure["reason"] == "tool_failed"
    assert "Illegal use of option --ignore-table" in failure["stderr_tail"]


def test_an_unknown_database_fails_only_that_database(
    mariadb_server: MariaDBServer, mariadb_database: str, tmp_path: Path
) -> None:
    job = mysql_job(mariadb_server, tmp_path, ["no_such_db", mariadb_database])
    config = write_config(tmp_path, {"main": job})
    assert run_cli(config, "backup") == 1
    assert [dump.parent.name for dump in data_files(tmp_path / "storage")] == [mariadb_database]
    failure = events_named(tmp_path, "backup.failed")[-1]
    assert failure["database"] == "no_such_db" and failure["reason"] == "unknown_database"
    assert "does not exist" in failure["error"]
    assert not [path for path in stored_files(tmp_path / "storage") if path.name.endswith(".partial")]


def test_a_tool_older_than_the_server_or_from_another_vendor_is_refused(
    mariadb_server: MariaDBServer, mariadb_database: str, tmp_path: Path
) -> None:
    cases = {
        "mariadb-dump  Ver 10.19 Distrib 10.5.9-MariaDB, for debian-linux-gnu (x86_64)": "older than the MariaDB",
        "mysqldump  Ver 8.0.36 for Linux on x86_64 (MySQL Community Server - GPL)": "comes from MySQL 8.0",
    }
    for version, expected in cases.items():
        tool = fake_tool(tmp_path, f'exec "{REAL_TOOL}" "$@"', version=version)
        job = mysql_job(mariadb_server, tmp_path, [mariadb_database], tool=tool)
        config = write_config(tmp_path, {"main": job})
        assert run_cli(config, "backup") == 1
        failure = events_named(tmp_path, "backup.failed")[-1]
        assert expected in failure["error"] and "install" in failure["error"]
    assert data_files(tmp_path / "storage") == []


# --- secrets ----------------------------------------------------------------------------------


def test_the_password_is_in_no_child_argv_environment_or_log(
    mariadb_server: MariaDBServer, mariadb_database: str, tmp_path: Path
) -> None:
    create_shop(mariadb_server, mariadb_database)
    tool = fake_tool(tmp_path, f'sleep 1; exec "{REAL_TOOL}" "$@"')
    config = write_config(
        tmp_path, {"main": mysql_job(mariadb_server, tmp_path, [mariadb_database], tool=tool, include_grants=True)}
    )
    with watching_processes(b"mariadb-dump", mariadb_server.password.encode()) as seen:
        assert run_cli(config, "backup") == 0
    tool_argvs, leaks = seen.tool_argvs, seen.leaks
    assert tool_argvs, "the watcher never saw mariadb-dump running"
    # the wrapper sleeps a second, then execs the real tool with exactly its own argv and environment,
    # so its argv is what the real tool gets (the real tool itself may finish between two polls)
    options = [
        argv[index + 1] for argv in tool_argvs for index, part in enumerate(argv[:-1]) if part.endswith(b"mariadb-dump")
    ]
    dumps = [option for option in options if option != b"--version"]
    assert dumps, "the watcher never saw the tool dumping"
    assert all(option.startswith(b"--defaults-file=/dev/fd/") for option in dumps), dumps
    assert leaks == []
    assert mariadb_server.password not in (tmp_path / "agent.log").read_text()
    for path in stored_files(tmp_path / "storage"):
        if path.name.endswith(".json"):
            assert mariadb_server.password not in path.read_text()


@pytest.fixture
def odd_account(mariadb_server: MariaDBServer) -> Iterator[tuple[str, str]]:
    """An account whose password has `#`, both quotes, backslashes, spaces at both ends and a newline."""
    user = f"odd_{secrets.token_hex(3)}"
    password = ' pa#ss "w\'ord" \\ back\\slash \\n end\n '
    with mariadb_server.connect_root() as connection, connection.cursor() as cursor:
        cursor.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (user, password))
        cursor.execute("GRANT ALL PRIVILEGES ON *.* TO %s@'%%'", (user,))
    yield user, password
    execute(mariadb_server, None, f"DROP USER IF EXISTS '{user}'@'%'", root=True)


def test_a_password_with_hash_quotes_backslashes_and_spaces_works(
    mariadb_server: MariaDBServer, mariadb_database: str, odd_account: tuple[str, str], tmp_path: Path
) -> None:
    create_shop(mariadb_server, mariadb_database)
    user, password = odd_account
    secret_file = tmp_path / "odd.password"
    secret_file.write_text(password + "\n")
    secret_file.chmod(0o600)
    job = mysql_job(mariadb_server, tmp_path, [mariadb_database], user=user, password_file=str(secret_file))
    config = write_config(tmp_path, {"main": job})
    assert run_cli(config, "backup") == 0, events_named(tmp_path, "backup.failed")
    assert b"-- Dump completed" in decompressed(only_dump(tmp_path, mariadb_database))


# --- grants -----------------------------------------------------------------------------------


@pytest.fixture
def app_account(mariadb_server: MariaDBServer, mariadb_database: str) -> Iterator[tuple[str, str, str]]:
    """An account with a password, a database grant and a default role; all dropped afterwards."""
    user, role, password = f"app_{secrets.token_hex(3)}", f"reader_{secrets.token_hex(3)}", "s3cret #x 'y'"
    with mariadb_server.connect_root() as connection, connection.cursor() as cursor:
        cursor.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (user, password))
        cursor.execute(f"GRANT SELECT, INSERT ON `{mariadb_database}`.* TO %s@'%%'", (user,))
        cursor.execute(f"CREATE ROLE {role}")
        cursor.execute(f"GRANT SELECT ON mysql.* TO {role}")
        cursor.execute(f"GRANT {role} TO %s@'%%'", (user,))
        cursor.execute(f"SET DEFAULT ROLE {role} FOR %s@'%%'", (user,))
    yield user, role, password
    execute(mariadb_server, None, f"DROP USER IF EXISTS '{user}'@'%'", f"DROP ROLE IF EXISTS {role}", root=True)


def _drop_account(server: MariaDBServer, user: str, role: str) -> None:
    execute(server, None, f"DROP USER '{user}'@'%'", f"DROP ROLE {role}", root=True)
    with pytest.raises(pymysql.err.OperationalError):
        pymysql.connect(host=server.host, port=server.port, user=user, password="s3cret #x 'y'")


def _assert_account_is_back(server: MariaDBServer, database: str, user: str, role: str, password: str) -> None:
    with (
        pymysql.connect(
            host=server.host, port=server.port, user=user, password=password, database=database
        ) as connection,
        connection.cursor() as cursor,
    ):
        cursor.execute("SELECT CURRENT_USER(), CURRENT_ROLE()")
        assert cursor.fetchone() == (f"{user}@%", role)
        cursor.execute("SHOW GRANTS")
        grants = "\n".join(str(row[0]) for row in cursor.fetchall())
    assert f"GRANT SELECT, INSERT ON `{database}`.*" in grants


def test_include_grants_writes_a_grants_file_that_recreates_a_dropped_user(
    mariadb_server: MariaDBServer, mariadb_database: str, app_account: tuple[str, str, str], tmp_path: Path
) -> None:
    user, role, password = app_account
    job = mysql_job(mariadb_server, tmp_path, [mariadb_database], include_grants=True)
    config = write_config(tmp_path, {"main": job})
    assert run_cli(config, "backup") == 0
    grants = only_dump(tmp_path, "_grants")
    manifest = read_manifest(manifest_path(grants))
    assert (manifest.kind, manifest.database, manifest.format) == ("grants", "", "mysql-grants-sql")
    assert f"{user}@%" in manifest.details["accounts"] and role in manifest.details["accounts"]
    assert oct(grants.stat().st_mode & 0o777) == "0o440"

    _drop_account(mariadb_server, user, role)
    applied = mariadb_client(mariadb_server, tmp_path, None, decompressed(grants), root=True)
    assert applied.returncode == 0, applied.stderr.decode()
    _assert_account_is_back(mariadb_server, mariadb_database, user, role, password)


def test_generated_grants_recreate_a_dropped_user_where_the_tool_cannot(
    mariadb_server: MariaDBServer, mariadb_database: str, app_account: tuple[str, str, str], tmp_path: Path
) -> None:
    user, role, password = app_account
    config = write_config(tmp_path, {"main": mysql_job(mariadb_server, tmp_path, [mariadb_database])})
    engine = engine_for(load_config(config), "main")
    assert isinstance(engine, MysqlEngine)
    engine.probe()
    script = b"".join(engine.generated_grants())
    assert script.rstrip().splitlines()[-1].startswith(b"-- Dump completed")
    _drop_account(mariadb_server, user, role)
    applied = mariadb_client(mariadb_server, tmp_path, None, script, root=True)
    assert applied.returncode == 0, applied.stderr.decode()
    _assert_account_is_back(mariadb_server, mariadb_database, user, role, password)


# --- consistency, discovery, connections --------------------------------------------------------


def test_lock_for_consistency_locks_a_database_with_myisam_tables_instead_of_warning(
    mariadb_server: MariaDBServer, mariadb_database: str, tmp_path: Path
) -> None:
    create_shop(mariadb_server, mariadb_database)
    job = mysql_job(mariadb_server, tmp_path, [mariadb_database], lock_for_consistency=True)
    config = write_config(tmp_path, {"main": job})
    assert run_cli(config, "backup") == 0
    manifest = read_manifest(manifest_path(only_dump(tmp_path, mariadb_database)))
    assert manifest.details["consistency"] == "lock-tables"
    assert manifest.details["non_transactional_tables"] == {"legacy_log": "MyISAM"}
    assert manifest.warnings == []
    assert events_named(tmp_path, "backup.consistency_warning") == []


def test_a_myisam_table_is_warned_about_in_the_log_before_the_dump(
    mariadb_server: MariaDBServer, mariadb_database: str, tmp_path: Path
) -> None:
    execute(
        mariadb_server,
        mariadb_database,
        "CREATE TABLE cache (k INT) ENGINE=MEMORY",
        "CREATE TABLE kv (k INT) ENGINE=Aria",
        "CREATE TABLE ok (k INT) ENGINE=InnoDB",
    )
    config = write_config(tmp_path, {"main": mysql_job(mariadb_server, tmp_path, [mariadb_database])})
    assert run_cli(config, "backup") == 0
    warned = events_named(tmp_path, "backup.consistency_warning")
    assert [event["tables"] for event in warned] == [{"cache": "MEMORY", "kv": "Aria"}]
    started = events_named(tmp_path, "backup.started")[-1]["timestamp"]
    assert warned[0]["timestamp"] >= started
    manifest = read_manifest(manifest_path(only_dump(tmp_path, mariadb_database)))
    assert manifest.details["consistency"] == "single-transaction"
    assert "MEMORY: cache" in manifest.warnings[0] and "Aria: kv" in manifest.warnings[0]


def test_every_database_but_the_system_ones_is_discovered_and_exclude_applies(
    mariadb_server: MariaDBServer, mariadb_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = f"{mariadb_database}_skip"
    execute(mariadb_server, None, f"CREATE DATABASE `{other}`")
    try:
        path = write_config(
            tmp_path,
            {
                "plain": mysql_job(mariadb_server, tmp_path, "*", exclude=["*_skip"]),
                "system": mysql_job(mariadb_server, tmp_path, "*", include_system=True, include_grants=True),
            },
        )
        assert run_cli(path, "check-config") == 0
        plan = capsys.readouterr().out
        assert mariadb_database in plan and mariadb_server.password not in plan
        config = load_config(path)
        plain = [target.database for target in engine_for(config, "plain").targets()]
        assert mariadb_database in plain and other not in plain
        assert not {"information_schema", "performance_schema", "sys", "mysql"} & set(plain)
        system = engine_for(config, "system").targets()
        assert system[0].kind == "grants"
        names = {target.database for target in system}
        assert {"mysql", mariadb_database, other} <= names
        assert not {"information_schema", "performance_schema", "sys"} & names
    finally:
        drop_database(mariadb_server, other)


def test_the_size_estimate_comes_from_the_catalog(
    mariadb_server: MariaDBServer, mariadb_database: str, tmp_path: Path
) -> None:
    create_shop(mariadb_server, mariadb_database)
    execute(mariadb_server, mariadb_database, "ANALYZE TABLE all_bytes")  # InnoDB updates its figures lazily
    config = load_config(write_config(tmp_path, {"main": mysql_job(mariadb_server, tmp_path, [mariadb_database])}))
    engine = engine_for(config, "main")
    estimate = engine.size_estimate(mariadb_database)
    assert estimate is not None and estimate > 256 * 1000  # all_bytes alone holds 256 KB of blob
    assert engine.size_estimate("no_such_database") is None


def test_a_backup_over_the_unix_socket_works(
    mariadb_server: MariaDBServer, mariadb_database: str, tmp_path: Path
) -> None:
    create_shop(mariadb_server, mariadb_database)
    job = mysql_job(mariadb_server, tmp_path, [mariadb_database])
    del job["host"], job["port"]
    job["socket"] = mariadb_server.socket
    config = write_config(tmp_path, {"main": job})
    assert run_cli(config, "backup") == 0
    manifest = read_manifest(manifest_path(only_dump(tmp_path, mariadb_database)))
    assert manifest.server == f"{mariadb_server.socket} (socket)"
    assert manifest.counts["customer"] == 300


def test_ssl_mode_required_refuses_a_server_without_tls_and_a_missing_ca_is_named(
    mariadb_server: MariaDBServer, mariadb_database: str, tmp_path: Path
) -> None:
    job = mysql_job(mariadb_server, tmp_path, [mariadb_database], ssl_mode="REQUIRED")
    config = write_config(tmp_path, {"main": job})
    assert run_cli(config, "backup") == 1
    failure = events_named(tmp_path, "backup.failed")[-1]
    assert "SSL is required" in failure["error"]
    job = mysql_job(mariadb_server, tmp_path, [mariadb_database], ssl_ca=str(tmp_path / "missing-ca.pem"))
    config = write_config(tmp_path, {"main": job})
    assert run_cli(config, "backup") == 1
    failure = events_named(tmp_path, "backup.failed")[-1]
    assert "jobs.main.ssl_ca: cannot load" in failure["error"]
    assert data_files(tmp_path / "storage") == []


# --- restore ----------------------------------------------------------------------------------


def test_a_restore_creates_the_database_and_refuses_one_that_holds_data(
    mariadb_server: MariaDBServer, mariadb_database: str, restored_name: str, tmp_path: Path
) -> None:
    create_shop(mariadb_server, mariadb_database)
    before = fingerprints(mariadb_server, mariadb_database)
    config = write_config(tmp_path, {"main": mysql_job(mariadb_server, tmp_path, [mariadb_database])})
    assert run_cli(config, "backup") == 0
    loaded = load_config(config)
    chosen = choose_backup(loaded, "main", mariadb_database)

    restore_database(loaded, "main", chosen, restored_name)

    assert fingerprints(mariadb_server, restored_name) == before
    assert query(
        mariadb_server,
        None,
        "SELECT DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
        restored_name,
    ) == [("utf8mb4_unicode_ci",)]
    with pytest.raises(RestoreError, match="already holds data"):
        restore_database(loaded, "main", chosen, restored_name)
    execute(mariadb_server, restored_name, "DELETE FROM customer")
    restore_database(loaded, "main", chosen, restored_name, force=True)  # the dump drops and recreates each table
    assert fingerprints(mariadb_server, restored_name) == before


def test_a_drill_restore_drops_definers_so_objects_whose_definer_does_not_exist_here_work(
    mariadb_server: MariaDBServer, mariadb_database: str, restored_name: str, tmp_path: Path
) -> None:
    ghost = f"ghost_{secrets.token_hex(3)}"
    execute(mariadb_server, None, f"CREATE USER `{ghost}`@`%`", f"GRANT ALL ON *.* TO `{ghost}`@`%`", root=True)
    try:
        execute(
            mariadb_server,
            mariadb_database,
            "CREATE TABLE t (a INT)",
            "INSERT INTO t VALUES (1), (2)",
            f"CREATE DEFINER=`{ghost}`@`%` SQL SECURITY DEFINER VIEW v AS SELECT a FROM t",
            f"CREATE DEFINER=`{ghost}`@`%` FUNCTION twice(x INT) RETURNS INT DETERMINISTIC RETURN x * 2",
        )
        config = write_config(tmp_path, {"main": mysql_job(mariadb_server, tmp_path, [mariadb_database])})
        assert run_cli(config, "backup") == 0
    finally:  # the account exists where the dump was made, not where it is restored
        execute(mariadb_server, None, f"DROP USER `{ghost}`@`%`", root=True)
    dump = only_dump(tmp_path, mariadb_database)
    assert read_manifest(manifest_path(dump)).details["definers"] == [f"{ghost}@%"]
    plain = mariadb_client(mariadb_server, tmp_path, None, f"CREATE DATABASE `{restored_name}`".encode())
    assert plain.returncode == 0
    plain = mariadb_client(mariadb_server, tmp_path, restored_name, decompressed(dump))
    assert plain.returncode == 0  # the objects are created, but they cannot be used
    with pytest.raises(pymysql.err.OperationalError, match="definer"):
        query(mariadb_server, restored_name, "SELECT SUM(a) FROM v")
    drop_database(mariadb_server, restored_name)
    engine = engine_for(load_config(config), "main")
    assert isinstance(engine, MysqlEngine)

    manifest = read_manifest(manifest_path(dump))
    engine.create_database(restored_name)
    engine.restore(decompressed_chunks(dump, manifest.compression), manifest, restored_name, drill=True)

    assert query(mariadb_server, restored_name, "SELECT SUM(a), twice(21) FROM v") == [(Decimal(3), 42)]
    definers = query(
        mariadb_server, None, "SELECT DEFINER FROM information_schema.VIEWS WHERE TABLE_SCHEMA = %s", restored_name
    )
    assert definers[0][0].startswith(f"{mariadb_server.user}@")


def test_the_restore_and_drill_commands_restore_a_mysql_backup(
    mariadb_server: MariaDBServer,
    mariadb_database: str,
    restored_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    create_shop(mariadb_server, mariadb_database)
    before = fingerprints(mariadb_server, mariadb_database)
    config = write_config(tmp_path, {"main": mysql_job(mariadb_server, tmp_path, [mariadb_database])})
    assert run_cli(config, "backup") == 0

    assert run_cli(config, "restore", "--job", "main", "--database", mariadb_database, "--into", restored_name) == 0
    assert fingerprints(mariadb_server, restored_name) == before
    assert run_cli(config, "restore", "--job", "main", "--database", mariadb_database, "--into", restored_name) != 0

    assert run_cli(config, "drill", "--job", "main") == 0
    assert "PASSED" in capsys.readouterr().out
    leftovers = query(
        mariadb_server,
        None,
        "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE '%%\\_\\_drill\\_%%'",
    )
    assert leftovers == []


def test_a_definer_that_no_longer_exists_is_warned_about(
    mariadb_server: MariaDBServer, mariadb_database: str, tmp_path: Path
) -> None:
    execute(
        mariadb_server,
        mariadb_database,
        "CREATE TABLE t (a INT)",
        "CREATE DEFINER=`gone_for_good`@`%` VIEW v AS SELECT a FROM t",
    )
    config = write_config(tmp_path, {"main": mysql_job(mariadb_server, tmp_path, [mariadb_database])})
    assert run_cli(config, "backup") == 0
    manifest = read_manifest(manifest_path(only_dump(tmp_path, mariadb_database)))
    assert manifest.details["definers"] == ["gone_for_good@%"]
    assert any("gone_for_good@%" in warning and "do not exist" in warning for warning in manifest.warnings)
    assert any("gone_for_good" in event["message"] for event in events_named(tmp_path, "backup.warning"))


def test_an_account_with_only_the_documented_privileges_can_back_up_everything(
    mariadb_server: MariaDBServer, mariadb_database: str, tmp_path: Path
) -> None:
    create_shop(mariadb_server, mariadb_database)
    user, password = f"least_{secrets.token_hex(3)}", "least-privilege"
    execute(
        mariadb_server,
        None,
        f"CREATE USER `{user}`@`%` IDENTIFIED BY '{password}'",
        f"GRANT SELECT, SHOW VIEW, TRIGGER, EVENT, LOCK TABLES ON *.* TO `{user}`@`%`",
        root=True,
    )
    try:
        secret = tmp_path / "least.password"
        secret.write_text(password)
        secret.chmod(0o600)
        jobs = {
            name: mysql_job(
                mariadb_server,
                tmp_path,
                [mariadb_database],
                user=user,
                password_file=str(secret),
                include_grants=True,
                lock_for_consistency=name == "locked",
            )
            for name in ("plain", "locked")
        }
        config = write_config(tmp_path, jobs)
        assert run_cli(config, "backup") == 0, events_named(tmp_path, "backup.failed")
    finally:
        execute(mariadb_server, None, f"DROP USER `{user}`@`%`", root=True)
    for job in ("plain", "locked"):
        dumps = {path.parent.name: path for path in data_files(tmp_path / "storage" / job)}
        assert set(dumps) == {"_grants", mariadb_database}
        sql = decompressed(dumps[mariadb_database])
        for needle in (
            b"TRIGGER order_audit",
            b"PROCEDURE `count_customers`",
            b"EVENT `nightly_cleanup`",
            b"VIEW `big_customers`",
            b"INSERT INTO `customer`",
        ):
            assert needle in sql, needle
        assert f"`{user}`@`%`".encode() in decompressed(dumps["_grants"])
        warnings = read_manifest(manifest_path(dumps[mariadb_database])).warnings
        assert not [warning for warning in warnings if "lacks" in warning]


def test_an_account_that_cannot_see_triggers_and_routines_gets_a_warning_not_a_silent_gap(
    mariadb_server: MariaDBServer, mariadb_database: str, tmp_path: Path
) -> None:
    create_shop(mariadb_server, mariadb_database)
    user, password = f"narrow_{secrets.token_hex(3)}", "narrow-privileges"
    execute(
        mariadb_server,
        None,
        f"CREATE USER `{user}`@`%` IDENTIFIED BY '{password}'",
        f"GRANT SELECT, SHOW VIEW, EVENT ON `{mariadb_database}`.* TO `{user}`@`%`",
        root=True,
    )
    try:
        secret = tmp_path / "narrow.password"
        secret.write_text(password)
        secret.chmod(0o600)
        job = mysql_job(mariadb_server, tmp_path, [mariadb_database], user=user, password_file=str(secret))
        config = write_config(tmp_path, {"main": job})
        assert run_cli(config, "backup") == 0
    finally:
        execute(mariadb_server, None, f"DROP USER `{user}`@`%`", root=True)
    dump = only_dump(tmp_path, mariadb_database)
    sql = decompressed(dump)
    assert b"TRIGGER order_audit" not in sql and b"count_customers" not in sql  # what the tool silently skips
    warning = next(warning for warning in read_manifest(manifest_path(dump)).warnings if "lacks" in warning)
    assert "TRIGGER" in warning and "routines" in warning
    assert any("lacks" in event["message"] for event in events_named(tmp_path, "backup.warning"))


def test_the_documented_sed_filter_drops_definers_for_a_manual_restore(
    mariadb_server: MariaDBServer, mariadb_database: str, restored_name: str, tmp_path: Path
) -> None:
    create_shop(mariadb_server, mariadb_database)
    config = write_config(tmp_path, {"main": mysql_job(mariadb_server, tmp_path, [mariadb_database])})
    assert run_cli(config, "backup") == 0
    docs = (Path(__file__).parents[2] / "docs" / "mysql.md").read_text()
    sed_command = next(
        line.split("| ", 1)[1].split(" |", 1)[0]
        for line in docs.splitlines()
        if line.startswith("zstd -dc") and "sed -E" in line
    )
    filtered = subprocess.run(
        ["sh", "-c", sed_command],
        input=decompressed(only_dump(tmp_path, mariadb_database)),
        capture_output=True,
        check=True,
    ).stdout
    assert b"DEFINER=`" not in filtered
    assert b"SQL SECURITY DEFINER" in filtered  # the view keeps its security mode
    execute(mariadb_server, None, f"CREATE DATABASE `{restored_name}`")
    restore = mariadb_client(mariadb_server, tmp_path, restored_name, filtered)
    assert restore.returncode == 0, restore.stderr.decode()
    assert schema_objects(mariadb_server, restored_name) == schema_objects(mariadb_server, mariadb_database)


def test_restore_with_globals_applies_the_grants_file_before_the_database(
    mariadb_server: MariaDBServer, mariadb_database: str, tmp_path: Path
) -> None:
    """`--with-globals` on a MySQL job applies its `_grants` file (accounts come back), then the data."""
    mariadb_server.mysql(mariadb_database, "CREATE TABLE t (x INT); INSERT INTO t VALUES (1), (2);")
    mariadb_server.mysql(
        None,
        "CREATE USER 'reader_wg'@'%' IDENTIFIED BY 'pw-reader'; "
        f"GRANT SELECT ON `{mariadb_database}`.* TO 'reader_wg'@'%';",
    )
    target = f"{mariadb_database}_wg"
    try:
        job = mysql_job(mariadb_server, tmp_path, [mariadb_database], include_grants=True)
        config = write_config(tmp_path, {"main": job})
        assert run_cli(config, "backup") == 0
        mariadb_server.mysql(None, "DROP USER 'reader_wg'@'%'")
        assert (
            run_cli(
                config, "restore", "--job", "main", "--database", mariadb_database, "--into", target, "--with-globals"
            )
            == 0
        )
        users = mariadb_server.mysql(None, "SELECT user FROM mysql.user WHERE user = 'reader_wg'")
        assert "reader_wg" in users
        assert mariadb_server.mysql(target, "SELECT count(*) FROM t").strip() == "2"
    finally:
        mariadb_server.mysql(None, f"DROP USER IF EXISTS 'reader_wg'@'%'; DROP DATABASE IF EXISTS `{target}`;")


def test_doctor_and_the_dump_agree_that_a_grant_on_an_escaped_pattern_covers_the_database(
    mariadb_server: MariaDBServer, mariadb_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    create_shop(mariadb_server, mariadb_database)
    pattern = mariadb_database[:-4].replace("_", "\\_") + "%"  # `t\_test\_..%`: `\_` literal, `%` a wildcard
    user, password = f"pattern_{secrets.token_hex(3)}", "pattern-grant"
    execute(
        mariadb_server,
        None,
        f"CREATE USER `{user}`@`%` IDENTIFIED BY '{password}'",
        f"GRANT SELECT, SHOW VIEW, TRIGGER, EVENT, LOCK TABLES ON `{pattern}`.* TO `{user}`@`%`",
        f"GRANT SELECT ON `mysql`.`proc` TO `{user}`@`%`",
        root=True,
    )
    try:
        secret = tmp_path / "pattern.password"
        secret.write_text(password)
        secret.chmod(0o600)
        job = mysql_job(mariadb_server, tmp_path, [mariadb_database], user=user, password_file=str(secret))
        config = write_config(tmp_path, {"main": job})
        capsys.readouterr()
        run_cli(config, "doctor")  # its exit status also judges storage; the job's own lines are what count here
        doctor_lines = capsys.readouterr().out.splitlines()
        assert run_cli(config, "backup") == 0
    finally:
        execute(mariadb_server, None, f"DROP USER `{user}`@`%`", root=True)
    job_lines = [line for line in doctor_lines if "jobs.main" in line]
    assert any("has the privileges to dump all 1 database(s)" in line for line in job_lines), job_lines
    assert not any("lacks" in line for line in job_lines)
    sql = decompressed(only_dump(tmp_path, mariadb_database))
    assert b"TRIGGER order_audit" in sql and b"count_customers" in sql
    warnings = read_manifest(manifest_path(only_dump(tmp_path, mariadb_database))).warnings
    assert not [warning for warning in warnings if "lacks" in warning]
