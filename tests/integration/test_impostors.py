"""No password reaches a process that took the server's port or socket while the server was down.

Each impostor (tests/servers/impostor.py) runs as `nobody`, speaks the real protocol just far
enough to ask for the password in clear text, and records every byte it receives. Two cases per
engine: the impostor holds the port or socket (refused before any connection: its owner is not
the server's account), and a server whose owner is accepted (`server_user = "nobody"`) asks for
clear text (refused by the driver, and by the tool where the tool can be told).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_helpers import events_named, password_file, run_cli, write_config
from servers.impostor import IMPOSTOR_USER, Impostor, impostor
from servers.postgres import PostgresServer

from agent import engines
from agent.config import load_config
from agent.engines.base import EngineContext
from agent.engines.mysql.versions import parse_tool_version
from agent.engines.postgres import handshake
from agent.process import StreamLimits

PASSWORD = "impostor-bait-7Qx"


def job(engine: str, directory: Path, **connection: object) -> dict[str, object]:
    return {
        "engine": engine,
        "user": "backup",
        "password_file": str(password_file(directory, PASSWORD)),
        "databases": ["shop"],
        "connect_timeout": "3s",
        **connection,
    }


def run(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = run_cli(config, *args)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def assert_no_password(fake: Impostor) -> None:
    assert PASSWORD.encode() not in fake.received()


def failure(directory: Path) -> dict[str, object]:
    [event] = events_named(directory, "backup.failed")
    return event


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    """A folder `nobody` may write, as a careless setup or /tmp gives: where an impostor puts its socket."""
    folder = Path(tempfile.mkdtemp(prefix="impostor-socket-", dir="/tmp"))
    folder.chmod(0o1777)
    try:
        yield folder
    finally:
        for entry in folder.iterdir():
            entry.unlink()
        folder.rmdir()


# --------------------------------------------------------------------------------------------------
# MySQL / MariaDB


def test_a_mysql_impostor_holding_the_port_gets_no_connection_and_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with impostor("mysql") as fake:
        config = write_config(tmp_path, {"shop": job("mariadb", tmp_path, host="127.0.0.1", port=fake.port)})

        code, output = run(config, capsys, "backup")
        assert code == 1
        assert failure(tmp_path)["reason"] == "untrusted_server"
        assert f"127.0.0.1:{fake.port} is held by {IMPOSTOR_USER}" in output
        code, output = run(config, capsys, "doctor")
        assert code == 1 and f"is held by {IMPOSTOR_USER}" in output and "PROBLEM  jobs.shop: server:" in output
        code, output = run(config, capsys, "check-config", "--offline")
        assert code == 1 and f"is held by {IMPOSTOR_USER}" in output

        assert fake.connections() == 0
        assert_no_password(fake)


def test_a_mysql_server_asking_for_clear_text_gets_no_password_from_the_driver(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with impostor("mysql") as fake:
        connection = {"host": "127.0.0.1", "port": fake.port, "server_user": IMPOSTOR_USER}
        config = write_config(tmp_path, {"shop": job("mariadb", tmp_path, **connection)})

        code, output = run(config, capsys, "backup")
        assert code == 1
        assert "asked for the password in clear text (mysql_clear_password)" in output
        code, output = run(config, capsys, "doctor")
        assert code == 1 and "in clear text" in output
        code, output = run(config, capsys, "check-config")
        assert code == 1 and "in clear text" in output

        assert fake.connections() >= 2  # it was asked, twice, and answered nothing
        assert_no_password(fake)


def test_the_mariadb_dump_tool_sends_no_clear_text_password(tmp_path: Path) -> None:
    """The tool gets the same refusal: only the client plugins that never send the password can load."""
    with impostor("mysql") as fake:
        connection = {"host": "127.0.0.1", "port": fake.port, "server_user": IMPOSTOR_USER}
        config = load_config(write_config(tmp_path, {"shop": job("mariadb", tmp_path, **connection)}))
        scratch = tmp_path / "storage" / ".agent" / "tmp" / "shop"
        engine = engines.engine_class("mysql")(config.jobs["shop"], EngineContext(tmp_path, scratch, StreamLimits()))
        version_text = subprocess.run(["mariadb-dump", "--version"], capture_output=True, text=True, check=True).stdout
        version = parse_tool_version(version_text)
        assert version is not None
        argv = engine._dump_argv("mariadb-dump", version, "shop", False)  # the command a dump runs
        assert any(argument.startswith("--plugin-dir=") for argument in argv)

        with engine._options() as (defaults, fds):
            command = [argv[0], defaults, *argv[1:]]
            refused = subprocess.run(command, capture_output=True, text=True, pass_fds=fds, check=False)
            assert refused.returncode != 0 and "mysql_clear_password" in refused.stderr
            assert_no_password(fake)
            # the same command without the agent's plugin folder: the password goes out in clear text
            plain = [argument for argument in argv[1:] if not argument.startswith("--plugin-dir=")]
            subprocess.run([argv[0], defaults, *plain], capture_output=True, pass_fds=fds, check=False)
        assert PASSWORD.encode() in fake.received()


def test_a_mysql_socket_in_a_folder_others_can_write_is_never_used(
    tmp_path: Path, shared_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with impostor("mysql", socket_path=shared_folder / "mysqld.sock") as fake:
        config = write_config(tmp_path, {"shop": job("mariadb", tmp_path, socket=fake.socket)})

        code, output = run(config, capsys, "backup")
        assert code == 1
        assert f"{shared_folder} is writable by others" in output or "may be planted" in output
        code, output = run(config, capsys, "doctor")
        assert code == 1 and str(shared_folder) in output

        assert fake.connections() == 0
        assert_no_password(fake)


def test_a_standard_socket_someone_else_planted_is_never_tried(
    tmp_path: Path, shared_folder: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no host or socket, only a standard socket that is the server's is used (never /tmp/mysql.sock)."""
    from agent.engines.mysql import engine as mysql_engine

    assert all(not path.startswith("/tmp/") for path in mysql_engine.DEFAULT_SOCKETS)
    planted = shared_folder / "mysql.sock"
    monkeypatch.setattr(mysql_engine, "DEFAULT_SOCKETS", (str(tmp_path / "missing.sock"), str(planted)))
    with impostor("mysql", socket_path=planted) as fake:
        config = write_config(tmp_path, {"shop": job("mariadb", tmp_path)})

        run(config, capsys, "backup")  # then TCP localhost:3306, whoever holds it (checked the same way)

        assert fake.connections() == 0
        assert_no_password(fake)


# --------------------------------------------------------------------------------------------------
# PostgreSQL


def test_a_postgres_impostor_holding_the_port_gets_no_connection_and_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with impostor("postgres") as fake:
        config = write_config(tmp_path, {"main": job("postgresql", tmp_path, host="127.0.0.1", port=fake.port)})

        code, output = run(config, capsys, "backup")
        assert code == 1 and f"is held by {IMPOSTOR_USER}" in output
        code, output = run(config, capsys, "doctor")
        assert code == 1 and f"is held by {IMPOSTOR_USER}" in output

        assert fake.connections() == 0
        assert_no_password(fake)


def test_a_postgres_server_asking_for_clear_text_gets_no_password_from_driver_or_tools(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with impostor("postgres") as fake:
        connection = {"host": "127.0.0.1", "port": fake.port, "server_user": IMPOSTOR_USER, "include_globals": True}
        config = write_config(tmp_path, {"main": job("postgresql", tmp_path, **connection)})

        code, output = run(config, capsys, "backup")
        assert code == 1
        assert "asked for the password in clear text" in output
        code, output = run(config, capsys, "doctor")
        assert code == 1 and "in clear text" in output
        code, output = run(config, capsys, "check-config")
        assert code == 1 and "in clear text" in output

        assert fake.connections() >= 1
        assert_no_password(fake)


def test_restore_onto_a_server_asking_for_clear_text_sends_no_password(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = job("postgresql", tmp_path, host=pg_server.host, port=pg_server.port, include_globals=False)
    password_file(tmp_path, pg_server.password)  # the real server's, in the job's password file
    config = write_config(tmp_path, {"main": {**source, "databases": [pg_database]}})
    assert run_cli(config, "backup") == 0
    config.write_text(config.read_text().replace("[jobs.main]", f'[jobs.main]\nserver_user = "{IMPOSTOR_USER}"'))
    with impostor("postgres") as fake:
        code, output = run(
            config,
            capsys,
            "restore",
            "--job",
            "main",
            "--database",
            pg_database,
            "--into",
            "copy",
            "--target-url",
            f"postgresql://127.0.0.1:{fake.port}",
        )

        assert code == 1 and "in clear text" in output
        assert pg_server.password.encode() not in fake.received()


def test_the_handshake_probe_learns_the_clear_text_request_without_sending_a_password() -> None:
    """For a driver whose libpq has no require_auth: ask first, answer nothing."""
    with impostor("postgres") as fake:
        assert fake.port is not None
        method = handshake.asked_method(("127.0.0.1", fake.port), "backup", "shop", timeout=5)

        assert method == handshake.AUTH_CLEARTEXT
        assert fake.received().endswith(handshake.startup_message("backup", "shop"))  # and nothing after it


# --------------------------------------------------------------------------------------------------
# MongoDB


def test_a_mongodb_impostor_holding_the_port_gets_no_connection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with impostor("postgres") as fake:  # the protocol does not matter: nothing is sent to it
        config = write_config(tmp_path, {"docs": job("mongodb", tmp_path, host="127.0.0.1", port=fake.port)})

        code, output = run(config, capsys, "backup")

        assert code == 1 and f"is held by {IMPOSTOR_USER}" in output
        assert fake.connections() == 0


@pytest.mark.parametrize("uri_options", ["authMechanism=PLAIN", "authMechanism=PLAIN&tls=true&tlsInsecure=true"])
def test_mongodb_plain_authentication_without_verified_tls_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], uri_options: str
) -> None:
    uri = f"mongodb://127.0.0.1:27017/?{uri_options}"
    config = write_config(tmp_path, {"docs": {**job("mongodb", tmp_path), "uri": uri}})

    code, output = run(config, capsys, "check-config", "--offline")

    assert code == 78 and "authMechanism=PLAIN sends the password in clear text" in output
    assert not os.path.exists(tmp_path / "storage")
