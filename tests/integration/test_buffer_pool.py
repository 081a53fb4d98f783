"""InnoDB's buffer pool and a dump (item 6 of issue 16), against a throwaway MariaDB.

doctor warns at innodb_old_blocks_time = 0 and names the privilege protect_buffer_pool needs
(SUPER on MariaDB 10.11: every finer administrative privilege together still may not SET GLOBAL
innodb_buffer_pool_dump_now, tested below); with it, a backup saves the pool's page list before
the dump and starts its reload after, logging both.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest
from agent_helpers import data_files, events_named, log_events, password_file, run_cli, write_config
from servers.mariadb import MariaDBServer
from test_mysql import execute, mysql_job, query

ACCESS_DENIED_NEED_PRIVILEGE = 1227  # ER_SPECIFIC_ACCESS_DENIED_ERROR
# MariaDB 10.11's privileges that split SUPER up, and the old administrative ones
FINER_PRIVILEGES = (
    "BINLOG ADMIN, BINLOG MONITOR, BINLOG REPLAY, REPLICATION MASTER ADMIN, REPLICATION SLAVE ADMIN, "
    "SLAVE MONITOR, SET USER, FEDERATED ADMIN, CONNECTION ADMIN, READ_ONLY ADMIN, RELOAD, PROCESS, FILE"
)


def doctor_lines(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = run_cli(config, "doctor")
    return code, capsys.readouterr().out.splitlines()


@pytest.fixture
def old_blocks_time_zero(mariadb_server: MariaDBServer) -> Iterator[None]:
    """The server with innodb_old_blocks_time = 0 for the test, the value before restored after."""
    ((_name, before),) = query(mariadb_server, None, "SHOW GLOBAL VARIABLES LIKE 'innodb_old_blocks_time'")
    execute(mariadb_server, None, "SET GLOBAL innodb_old_blocks_time = 0", root=True)
    yield
    execute(mariadb_server, None, f"SET GLOBAL innodb_old_blocks_time = {int(before)}", root=True)


@pytest.fixture
def dump_only_account(mariadb_server: MariaDBServer, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An account with exactly the dump privileges the docs list (no SUPER), and its password file."""
    user, password = f"dumper_{secrets.token_hex(3)}", secrets.token_hex(12)
    execute(
        mariadb_server,
        None,
        f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'",
        f"GRANT SELECT, SHOW VIEW, TRIGGER, EVENT, LOCK TABLES ON *.* TO '{user}'@'%'",
        root=True,
    )
    folder = tmp_path / "dumper"
    folder.mkdir()
    yield user, password_file(folder, password)
    execute(mariadb_server, None, f"DROP USER '{user}'@'%'", root=True)


def test_doctor_warns_when_innodb_old_blocks_time_is_0(
    mariadb_server: MariaDBServer,
    mariadb_database: str,
    old_blocks_time_zero: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(tmp_path, {"shop": mysql_job(mariadb_server, tmp_path, [mariadb_database])})
    code, lines = doctor_lines(config, capsys)
    warnings = [line for line in lines if line.startswith("WARNING") and "innodb_old_blocks_time = 0" in line]
    assert len(warnings) == 1, lines
    assert "SET GLOBAL innodb_old_blocks_time = 1000" in warnings[0]
    assert code == 0  # a warning, not a problem


def test_doctor_reports_the_buffer_pool_settings_when_they_protect_the_hot_pages(
    mariadb_server: MariaDBServer, mariadb_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, {"shop": mysql_job(mariadb_server, tmp_path, [mariadb_database])})
    code, lines = doctor_lines(config, capsys)
    assert code == 0
    assert any(line.startswith("ok") and "innodb_old_blocks_pct = 37" in line for line in lines), lines
    assert not any(line.startswith("WARNING") for line in lines), lines


def test_doctor_names_super_when_protect_buffer_pool_lacks_it(
    mariadb_server: MariaDBServer,
    mariadb_database: str,
    dump_only_account: tuple[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    user, secret_file = dump_only_account
    job = mysql_job(mariadb_server, tmp_path, [mariadb_database], protect_buffer_pool=True)
    job.update(user=user, password_file=str(secret_file))
    config = write_config(tmp_path, {"shop": job})
    code, lines = doctor_lines(config, capsys)
    (problem,) = [line for line in lines if line.startswith("PROBLEM")]
    assert "protect_buffer_pool" in problem and "lacks SUPER" in problem and "GRANT SUPER ON *.* TO" in problem
    assert code == 1


def test_protect_buffer_pool_saves_the_page_list_before_the_dump_and_reloads_it_after(
    mariadb_server: MariaDBServer, mariadb_database: str, tmp_path: Path
) -> None:
    execute(
        mariadb_server,
        mariadb_database,
        "CREATE TABLE hot (id INT PRIMARY KEY, body TEXT) ENGINE=InnoDB",
        "INSERT INTO hot SELECT seq, REPEAT('x', 200) FROM seq_1_to_2000",
    )
    job = mysql_job(mariadb_server, tmp_path, [mariadb_database], protect_buffer_pool=True)
    config = write_config(tmp_path, {"shop": job})
    assert run_cli(config, "backup", "--job", "shop") == 0
    assert len(data_files(tmp_path / "storage")) == 1
    (saved,) = events_named(tmp_path, "buffer_pool.saved")
    assert "dump completed" in str(saved["status"])
    assert len(events_named(tmp_path, "buffer_pool.load_started")) == 1
    outcome = events_named(tmp_path, "buffer_pool.loaded") + events_named(tmp_path, "buffer_pool.load_continuing")
    assert len(outcome) == 1
    expected = ["buffer_pool.saved", "backup.finished", "buffer_pool.load_started", outcome[0]["event"]]
    order = [event["event"] for event in log_events(tmp_path) if event.get("event") in expected]
    assert order == expected  # saved before the dump, reloaded after it


def test_on_mariadb_only_super_may_save_the_buffer_pool(
    mariadb_server: MariaDBServer, dump_only_account: tuple[str, Path]
) -> None:
    user, secret_file = dump_only_account
    password = secret_file.read_text().strip()
    execute(mariadb_server, None, f"GRANT {FINER_PRIVILEGES} ON *.* TO '{user}'@'%'", root=True)

    def try_save() -> int | None:
        with mariadb_server.connect(user=user, password=password) as connection, connection.cursor() as cursor:
            try:
                cursor.execute("SET GLOBAL innodb_buffer_pool_dump_now = ON")
            except pymysql.MySQLError as error:
                return int(error.args[0])
        return None

    assert try_save() == ACCESS_DENIED_NEED_PRIVILEGE
    execute(mariadb_server, None, f"GRANT SUPER ON *.* TO '{user}'@'%'", root=True)
    assert try_save() is None


def test_without_super_protect_buffer_pool_warns_and_the_dump_still_runs(
    mariadb_server: MariaDBServer, mariadb_database: str, dump_only_account: tuple[str, Path], tmp_path: Path
) -> None:
    user, secret_file = dump_only_account
    execute(mariadb_server, mariadb_database, "CREATE TABLE t (id INT PRIMARY KEY)", "INSERT INTO t VALUES (1)")
    job = mysql_job(mariadb_server, tmp_path, [mariadb_database], protect_buffer_pool=True)
    job.update(user=user, password_file=str(secret_file))
    config = write_config(tmp_path, {"shop": job})
    assert run_cli(config, "backup", "--job", "shop") == 0
    assert len(data_files(tmp_path / "storage")) == 1
    (warning,) = events_named(tmp_path, "buffer_pool.not_saved")
    assert warning["privilege"] == "SUPER" and "SUPER" in str(warning["error"])
    assert events_named(tmp_path, "buffer_pool.load_started") == []  # nothing saved: nothing to reload
