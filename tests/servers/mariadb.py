"""A throwaway MariaDB server for tests, never the system instance on 3306.

Both ``mariadb-install-db`` and ``mariadbd`` get ``--no-defaults`` so nothing from /etc/mysql (the
system instance's config) leaks in, and run as ``mysql`` when we are root, in a fresh 0755
``/tmp/backup-agent-mariadb-*`` directory (pytest's 0700 temp dirs are unreachable for ``mysql``).
Root keeps a password-less account on the unix socket only, used to provision ``backup``; the TCP
root accounts are dropped so every TCP login needs a password. Durability is relaxed for speed.
The ``mariadb`` client always gets its credentials from a 0600 ``--defaults-extra-file``.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql

from .common import (
    CommandError,
    ServerProcess,
    free_port,
    make_base_dir,
    port_is_open,
    require_binaries,
    run_command,
    service_account,
    wait_until,
)

__all__ = ["MariaDBServer", "running_mariadb"]

_SERVER_BINARY = "/usr/sbin/mariadbd"
_CLIENT_BINARY = "mariadb"
_INSTALL_BINARY = "mariadb-install-db"
_INNODB_LOG_FILE_SIZE = "--innodb-log-file-size=16M"


@dataclass(frozen=True)
class MariaDBServer:
    """A running throwaway server; ``user``/``password`` is what the agent under test uses."""

    host: str
    port: int
    socket: str
    user: str
    password: str = field(repr=False)
    data_dir: str
    _process: ServerProcess = field(repr=False, compare=False)
    root_socket_user: str = "root"

    def connect(self, database: str | None = None, **kw: Any) -> pymysql.connections.Connection:
        """An autocommit connection as ``user`` over TCP with the password."""
        options: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "database": database,
            "autocommit": True,
            "charset": "utf8mb4",
            "connect_timeout": 10,
        }
        options.update(kw)
        return pymysql.connect(**options)

    def connect_root(self, database: str | None = None) -> pymysql.connections.Connection:
        """An autocommit connection as the password-less root through the unix socket."""
        return pymysql.connect(
            unix_socket=self.socket,
            user=self.root_socket_user,
            database=database,
            autocommit=True,
            charset="utf8mb4",
            connect_timeout=5,
        )

    def is_running(self) -> bool:
        return self._process.is_running()

    def start(self) -> None:
        """Start the server if it is down and wait until TCP and the root socket both answer."""
        if self.is_running():
            return
        self._process.start()
        wait_until(self._accepts_connections, what="MariaDB", timeout=60, process=self._process)

    def stop(self) -> None:
        """Normal shutdown (SIGTERM); the process group is killed if that takes more than 15 s."""
        self._process.stop(timeout=15)

    def mysql(self, database: str | None, sql: str) -> str:
        """Run SQL with the ``mariadb`` client as ``user`` over TCP; return tab-separated rows, no header."""
        with self._defaults_file() as defaults:
            argv = self._client_argv(defaults, database, "--batch", "--skip-column-names")
            return run_command(argv, input=sql).stdout

    def mysql_lines(self, database: str | None, lines: Iterable[str], *, timeout: float = 300) -> str:
        """Stream SQL lines into the ``mariadb`` client without holding the script in memory."""
        with self._defaults_file() as defaults, tempfile.TemporaryFile() as output:
            argv = self._client_argv(defaults, database, "--batch", "--skip-column-names")
            with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=output, stderr=output, text=True) as process:
                assert process.stdin is not None
                try:
                    for line in lines:
                        process.stdin.write(line)
                    process.stdin.close()
                except BrokenPipeError:
                    pass  # the client died on an error; its output below says which
                returncode = process.wait(timeout=timeout)
            output.seek(0)
            text = output.read().decode(errors="replace")
        if returncode != 0:
            raise CommandError(argv, returncode, text)
        return text

    def _client_argv(self, defaults: Path, database: str | None, *options: str) -> list[str]:
        argv = [
            _CLIENT_BINARY,
            f"--defaults-extra-file={defaults}",  # must be the first option
            "--protocol=TCP",
            f"--host={self.host}",
            f"--port={self.port}",
            "--default-character-set=utf8mb4",
            *options,
        ]
        if database is not None:
            argv.append(f"--database={database}")
        return argv

    @contextmanager
    def _defaults_file(self) -> Iterator[Path]:
        """A 0600 option file with the credentials in a private temp dir; never argv or env."""
        with tempfile.TemporaryDirectory(prefix="backup-agent-mycnf-") as directory:
            path = Path(directory) / "client.cnf"
            path.touch(mode=0o600)
            path.write_text(
                f'[client]\nuser="{_option_escape(self.user)}"\npassword="{_option_escape(self.password)}"\n'
            )
            yield path

    def _accepts_connections(self) -> bool:
        if not port_is_open(self.host, self.port):
            return False
        with self.connect_root() as connection, connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True


def _option_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _server_argv(data_dir: Path, base: Path, port: int, socket: Path, *, binary_log: bool = False) -> list[str]:
    logging = [f"--log-bin={base / 'binlog'}", "--server-id=1"] if binary_log else ["--skip-log-bin"]
    return [
        _SERVER_BINARY,
        "--no-defaults",
        f"--datadir={data_dir}",
        f"--port={port}",
        "--bind-address=127.0.0.1",
        f"--socket={socket}",
        f"--pid-file={base / 'mariadbd.pid'}",
        f"--tmpdir={base}",
        "--skip-name-resolve",
        *logging,
        "--event-scheduler=ON",
        "--character-set-server=utf8mb4",
        "--innodb-buffer-pool-size=64M",
        "--innodb-flush-log-at-trx-commit=0",
        "--innodb-doublewrite=0",
        _INNODB_LOG_FILE_SIZE,
        "--max-connections=50",
    ]


@contextmanager
def running_mariadb(*, binary_log: bool = False) -> Iterator[MariaDBServer]:
    """Install system tables, start the server and provision ``backup``; stop and delete on exit.

    `binary_log`: with the binary log on (`--log-bin`), as a replication source would run."""
    require_binaries([_INSTALL_BINARY, _SERVER_BINARY, _CLIENT_BINARY], hint="install mariadb-server")
    run_as = service_account("mysql")
    base = make_base_dir("backup-agent-mariadb-", run_as)
    try:
        data_dir = base / "data"
        socket = base / "mariadbd.sock"
        port = free_port()
        try:
            run_command(
                [
                    _INSTALL_BINARY,
                    "--no-defaults",
                    f"--datadir={data_dir}",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                    "--skip-name-resolve",
                    _INNODB_LOG_FILE_SIZE,
                ],
                run_as=run_as,
                cwd=base,
            )
        except CommandError as error:
            raise RuntimeError(f"mariadb-install-db failed for the test MariaDB:\n{error}") from error
        process = ServerProcess(
            _server_argv(data_dir, base, port, socket, binary_log=binary_log),
            log_path=base / "mariadbd.log",
            run_as=run_as,
            cwd=base,
            stop_signal=signal.SIGTERM,
        )
        server = MariaDBServer(
            host="127.0.0.1",
            port=port,
            socket=str(socket),
            user="backup",
            password="pw-" + secrets.token_hex(8),
            data_dir=str(data_dir),
            _process=process,
        )
        try:
            server.start()
            _provision(server)
            yield server
        finally:
            process.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _provision(server: MariaDBServer) -> None:
    """Create ``backup`` for socket and TCP logins; leave root only on the socket."""
    with server.connect_root() as connection, connection.cursor() as cursor:
        cursor.execute("SELECT user, host FROM mysql.user WHERE user = 'root' AND host <> 'localhost'")
        for user, host in cursor.fetchall():
            cursor.execute("DROP USER %s@%s", (user, host))
        for host in ("localhost", "127.0.0.1", "%"):
            cursor.execute("CREATE USER %s@%s IDENTIFIED BY %s", (server.user, host, server.password))
            cursor.execute("GRANT ALL PRIVILEGES ON *.* TO %s@%s WITH GRANT OPTION", (server.user, host))
