"""A MongoDB wire-protocol server for tests: SecantusDB, or a real MongoDB from ``MONGODB_TEST_URI``.

MongoDB itself cannot be installed here, so SecantusDB (pure Python over WiredTiger, pinned
0.7.0b3) stands in as a subprocess ``secantusd-py`` from the venv. What we found in 0.7.0b3:

* Auth: ``--auth`` enforces SCRAM-SHA-256/SHA-1 with mongod-like RBAC, but there is no localhost
  exception, so a user is provisioned by starting once without ``--auth``, running ``createUser``
  (``root`` on ``admin``), stopping and restarting with ``--auth`` on the same storage. Each start
  takes well under a second. A wrong password fails with code 18; unauthenticated commands other
  than the handshake (hello, ping, buildInfo) fail with code 13. ``mongo_server_noauth`` is a second,
  separate instance without ``--auth``.
* It advertises a single-node replica set named ``secantus``; we connect with ``directConnection``.
* ``buildInfo`` says version 8.2.11 plus ``secantusVersion``; listCollections, listIndexes and
  listDatabases (``admin`` is not listed even when it holds users) behave like mongod.
* Snapshot reads are accepted but not pinned: ``readConcern: snapshot`` (snapshot sessions) answers
  with an ``atClusterTime`` while reads still see later writes, so tests must not rely on it for a
  point-in-time dump. Reads inside a multi-document transaction are pinned (WiredTiger snapshot).
* Stopping takes about 2 s (the accept thread is joined with a 2 s timeout), so the auth instance
  needs about 3 s to start, the auth-less one about 0.5 s.
* A config file is auto-discovered from ./, ~/.secantus and /etc/secantus; we pass ``--config`` with
  an empty file to keep the server hermetic.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymongo
import pytest
from pymongo.uri_parser import parse_uri

from .common import ServerProcess, free_port, make_base_dir, require_binaries, wait_until

__all__ = ["MongoServer", "external_mongo", "running_secantus"]

EXTERNAL_URI_VARIABLE = "MONGODB_TEST_URI"


@dataclass(frozen=True)
class MongoServer:
    """A MongoDB-wire server; with ``auth`` the ``user`` is a root user on the ``admin`` database."""

    host: str
    port: int
    user: str | None
    password: str | None = field(repr=False)
    auth: bool
    _process: ServerProcess | None = field(default=None, repr=False, compare=False)
    _external_uri: str | None = field(default=None, repr=False, compare=False)

    @property
    def is_external(self) -> bool:
        """True for the server named by MONGODB_TEST_URI, which the tests cannot stop or start."""
        return self._external_uri is not None

    def client(self, **kw: Any) -> pymongo.MongoClient[dict[str, Any]]:
        """A client logged in as ``user`` (when ``auth``); keyword arguments override the defaults."""
        if self._external_uri is not None:
            return pymongo.MongoClient(self._external_uri, **{"serverSelectionTimeoutMS": 10_000, **kw})
        options: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "directConnection": True,
            "serverSelectionTimeoutMS": 10_000,
        }
        if self.auth:
            options.update(username=self.user, password=self.password, authSource="admin")
        options.update(kw)
        return pymongo.MongoClient(**options)

    def uri(self) -> str:
        """The connection URI without the password."""
        if self._external_uri is not None:
            return _without_password(self._external_uri)
        userinfo = f"{self.user}@" if self.auth and self.user else ""
        options = "authSource=admin&directConnection=true" if self.auth else "directConnection=true"
        return f"mongodb://{userinfo}{self.host}:{self.port}/?{options}"

    def is_running(self) -> bool:
        return self._process is None or self._process.is_running()

    def start(self) -> None:
        """Start the server if it is down and wait until an authenticated ping works."""
        process = self._controllable()
        if process.is_running():
            return
        process.start()
        wait_until(self._answers_ping, what="SecantusDB", timeout=60, process=process)

    def stop(self) -> None:
        """SIGTERM; the process group is killed if the server has not exited within 10 s."""
        self._controllable().stop(timeout=10)

    def _controllable(self) -> ServerProcess:
        if self._process is None:
            pytest.skip(f"the MongoDB server from {EXTERNAL_URI_VARIABLE} cannot be stopped or started")
        return self._process

    def _answers_ping(self) -> bool:
        with self.client(serverSelectionTimeoutMS=500, connectTimeoutMS=500) as client:
            client.admin.command("ping")
            if self.auth:
                client.admin.command("listDatabases", nameOnly=True)  # proves the login works
        return True


def _without_password(uri: str) -> str:
    scheme, separator, rest = uri.partition("://")
    authority, slash, tail = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    if not at:
        return uri
    user = userinfo.split(":", 1)[0]
    return f"{scheme}{separator}{user}@{hosts}{slash}{tail}"


def external_mongo(uri: str) -> MongoServer:
    """Describe the server named by ``MONGODB_TEST_URI``; it is used as is and never stopped."""
    parsed = parse_uri(uri)
    host, port = parsed["nodelist"][0]
    user = parsed["username"]
    return MongoServer(
        host=str(host),
        port=int(port),
        user=user,
        password=parsed["password"],
        auth=user is not None,
        _external_uri=uri,
    )


def find_secantusd() -> str:
    """``secantusd-py`` next to the running interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).parent / "secantusd-py"
    if os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("secantusd-py") or "secantusd-py"


def _secantus_argv(executable: str, base: Path, port: int, *, auth: bool, standalone: bool = False) -> list[str]:
    argv = [
        executable,
        "--config",
        str(base / "secantusd.toml"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--storage-path",
        str(base / "data"),
        "--cache-size",
        "64M",
        "--log-level",
        "WARNING",
    ]
    argv += ["--standalone"] if standalone else []
    return [*argv, "--auth"] if auth else argv


@contextmanager
def running_secantus(*, auth: bool, standalone: bool = False) -> Iterator[MongoServer]:
    """Start SecantusDB (provisioning a root user first when ``auth``); stop and delete on exit.

    It runs as a single-node replica set with an oplog unless `standalone` (no set, no oplog)."""
    executable = require_binaries([find_secantusd()], hint="pip install SecantusDB==0.7.0b3")
    secantusd = next(iter(executable.values()))
    base = make_base_dir("backup-agent-mongo-", None)
    try:
        (base / "secantusd.toml").write_text("# empty: keeps secantusd from reading other configs\n")
        port = free_port()
        user, password = ("backup", "pw-" + secrets.token_hex(8)) if auth else (None, None)
        if auth:
            _provision_user(secantusd, base, port, user or "", password or "")
        process = ServerProcess(
            _secantus_argv(secantusd, base, port, auth=auth, standalone=standalone),
            log_path=base / "secantusd.log",
            run_as=None,
            cwd=base,
            stop_signal=signal.SIGTERM,
        )
        server = MongoServer(host="127.0.0.1", port=port, user=user, password=password, auth=auth, _process=process)
        try:
            server.start()
            yield server
        finally:
            process.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _provision_user(secantusd: str, base: Path, port: int, user: str, password: str) -> None:
    """SecantusDB has no localhost exception: create the user on an unauthenticated first start."""
    bootstrap = ServerProcess(
        _secantus_argv(secantusd, base, port, auth=False),
        log_path=base / "secantusd-bootstrap.log",
        run_as=None,
        cwd=base,
    )
    unauthenticated = MongoServer(host="127.0.0.1", port=port, user=None, password=None, auth=False, _process=bootstrap)
    try:
        unauthenticated.start()
        with unauthenticated.client() as client:
            client.admin.command("createUser", user, pwd=password, roles=[{"role": "root", "db": "admin"}])
    finally:
        bootstrap.stop()
