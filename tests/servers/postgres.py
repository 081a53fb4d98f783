"""A throwaway PostgreSQL server for tests, never the system instance on 5432.

``initdb`` refuses to run as root, and pytest's temp folders are 0700 root-owned, so as root the
cluster lives in a fresh 0755 ``/tmp/backup-agent-pg-*`` directory owned by ``postgres`` and
``initdb``/``postgres`` run as that user (the test process stays root). The server is started
directly (not through ``pg_ctl``) so it is our child in its own process group and can be killed
with it. Durability is switched off for speed. The password-authenticated ``backup`` role is a
superuser because ``pg_dumpall`` reads ``pg_authid``; the bootstrap superuser ``postgres`` is
reachable only through the unix socket (trust), TCP always asks for a SCRAM password.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from .common import (
    CommandError,
    ServerProcess,
    free_port,
    give_to,
    make_base_dir,
    require_binaries,
    run_command,
    service_account,
    wait_until,
)

__all__ = ["PostgresServer", "find_bin_dir", "running_postgres"]

_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "50",
    "shared_buffers": "16MB",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "logging_collector": "off",
    "timezone": "'UTC'",
    "password_encryption": "'scram-sha-256'",
}
_PG_HBA = "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"


@dataclass(frozen=True)
class PostgresServer:
    """A running throwaway cluster; ``user``/``password`` is what the agent under test uses."""

    host: str
    port: int
    socket_dir: str
    superuser: str
    user: str
    password: str = field(repr=False)
    bin_dir: str
    data_dir: str
    _process: ServerProcess = field(repr=False, compare=False)
    tls_ca: str | None = None  # the server's self-signed certificate, as a CA for sslmode=verify-ca

    def connect(self, database: str = "postgres", **kw: Any) -> psycopg.Connection[Any]:
        """An autocommit connection as ``user`` over TCP with the password."""
        options: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "dbname": database,
            "autocommit": True,
            "connect_timeout": 10,
        }
        options.update(kw)
        return psycopg.connect(**options)

    def connect_superuser(self, database: str = "postgres") -> psycopg.Connection[Any]:
        """An autocommit connection as the bootstrap superuser through the unix socket (trust)."""
        return psycopg.connect(
            host=self.socket_dir,
            port=self.port,
            user=self.superuser,
            dbname=database,
            autocommit=True,
            connect_timeout=5,
        )

    def dsn(self, database: str = "postgres") -> str:
        """A libpq conninfo for ``user`` over TCP, without the password (give it via PGPASSFILE)."""
        return make_conninfo(host=self.host, port=self.port, user=self.user, dbname=database)

    def is_running(self) -> bool:
        return self._process.is_running()

    def start(self) -> None:
        """Start the server if it is down and wait until it accepts connections."""
        if self.is_running():
            return
        self._process.start()
        wait_until(self._accepts_connections, what="PostgreSQL", timeout=60, process=self._process)

    def stop(self) -> None:
        """Fast shutdown (SIGINT); the process group is killed if that takes more than 10 s."""
        self._process.stop(timeout=10)

    def psql(self, database: str, sql: str) -> str:
        """Run SQL with ``psql`` as ``user`` over TCP; return unaligned, tuples-only stdout."""
        argv = [*self._psql_argv(database), "--no-align", "--tuples-only", "-v", "ON_ERROR_STOP=1", "-f", "-"]
        with self._password_env() as env:
            return run_command(argv, env=env, input=sql).stdout

    def psql_file(self, database: str, path: Path, *, stop_on_error: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a SQL file with ``psql``; with ``stop_on_error=False`` errors are only reported on stderr."""
        on_error_stop = "ON_ERROR_STOP=1" if stop_on_error else "ON_ERROR_STOP=0"
        argv = [*self._psql_argv(database), "-v", on_error_stop, "-f", str(path)]
        with self._password_env() as env:
            return run_command(argv, env=env, check=stop_on_error, timeout=300)

    def _psql_argv(self, database: str) -> list[str]:
        return [
            str(Path(self.bin_dir) / "psql"),
            "--no-psqlrc",
            "--quiet",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--username",
            self.user,
            "--dbname",
            database,
        ]

    @contextmanager
    def _password_env(self) -> Iterator[Mapping[str, str]]:
        """Environment with a 0600 PGPASSFILE in a private temp dir: the password never goes in argv/env."""
        with tempfile.TemporaryDirectory(prefix="backup-agent-pgpass-") as directory:
            passfile = Path(directory) / "pgpass"
            passfile.touch(mode=0o600)
            passfile.write_text(
                ":".join(_pgpass_escape(part) for part in (self.host, str(self.port), "*", self.user, self.password))
                + "\n"
            )
            env = {key: value for key, value in os.environ.items() if key != "PGPASSWORD"}
            env.update(PGPASSFILE=str(passfile), PGCONNECT_TIMEOUT="10")
            yield env

    def _accepts_connections(self) -> bool:
        with self.connect_superuser() as connection:
            connection.execute("SELECT 1")
        return True


def _pgpass_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def find_bin_dir() -> str:
    """The server binaries' directory: env ``PG_BIN_DIR``, else where ``initdb`` on PATH really lives."""
    configured = os.environ.get("PG_BIN_DIR")
    if configured:
        return configured
    initdb = shutil.which("initdb")
    if initdb is not None:
        return str(Path(initdb).resolve().parent)
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda path: int(path.parent.name))
    return str(versions[-1]) if versions else "/usr/lib/postgresql/15/bin"


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """initdb, configure, start and provision a cluster; stop it and delete its files on exit."""
    bin_dir = find_bin_dir()
    require_binaries(
        [str(Path(bin_dir) / name) for name in ("initdb", "postgres", "psql")],
        hint="install postgresql-15 or set PG_BIN_DIR",
    )
    run_as = service_account("postgres")
    base = make_base_dir("backup-agent-pg-", run_as)
    try:
        data_dir = base / "data"
        socket_dir = base / "socket"
        port = free_port()
        _init_cluster(bin_dir, data_dir, socket_dir, port, base, run_as)
        tls_ca = _enable_tls(data_dir, base, run_as)
        process = ServerProcess(
            [str(Path(bin_dir) / "postgres"), "-D", str(data_dir)],
            log_path=base / "postgres.log",
            run_as=run_as,
            cwd=base,
            stop_signal=signal.SIGINT,
        )
        server = PostgresServer(
            host="127.0.0.1",
            port=port,
            socket_dir=str(socket_dir),
            superuser="postgres",
            user="backup",
            password="pw-" + secrets.token_hex(8),
            bin_dir=bin_dir,
            data_dir=str(data_dir),
            _process=process,
            tls_ca=tls_ca,
        )
        try:
            server.start()
            with server.connect_superuser() as connection:
                connection.execute(
                    sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                        sql.Identifier(server.user), sql.Literal(server.password)
                    )
                )
            yield server
        finally:
            process.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _enable_tls(data_dir: Path, base: Path, run_as: str | None) -> str | None:
    """A self-signed certificate for 127.0.0.1 and `ssl = on` (clients that do not ask still connect
    without TLS); None without openssl. Returns the certificate, readable by anyone, as the CA."""
    if shutil.which("openssl") is None:
        return None
    certificate, key = data_dir / "server.crt", data_dir / "server.key"
    run_command(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(certificate)],
    )  # fmt: skip
    key.chmod(0o600)
    for path in (certificate, key):
        give_to(path, run_as)
    authority = base / "ca.pem"
    shutil.copyfile(certificate, authority)
    authority.chmod(0o644)
    with (data_dir / "postgresql.conf").open("a") as config:
        config.write("ssl = on\n")
    return str(authority)


def _init_cluster(bin_dir: str, data_dir: Path, socket_dir: Path, port: int, base: Path, run_as: str | None) -> None:
    try:
        run_command(
            [
                str(Path(bin_dir) / "initdb"),
                "--pgdata",
                str(data_dir),
                "--username",
                "postgres",
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
            run_as=run_as,
            cwd=base,
        )
    except CommandError as error:
        raise RuntimeError(f"initdb failed for the test PostgreSQL:\n{error}") from error
    socket_dir.mkdir(mode=0o755)
    give_to(socket_dir, run_as)
    settings = {**_SETTINGS, "port": str(port), "unix_socket_directories": f"'{socket_dir}'"}
    with (data_dir / "postgresql.conf").open("a") as config:
        config.write("\n# backup-agent test server\n")
        config.writelines(f"{name} = {value}\n" for name, value in settings.items())
    (data_dir / "pg_hba.conf").write_text(_PG_HBA)
