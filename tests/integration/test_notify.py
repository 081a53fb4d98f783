"""Alerts against a real HTTP server on 127.0.0.1: Healthchecks pings, webhooks, dead endpoints, secrets."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from agent_helpers import events_named, log_events, password_file, run_cli, write_config
from servers.postgres import PostgresServer

PING_PATH = "/ping/5f3c1a9e-0000-4000-8000-123456789abc"


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str
    body: bytes


@dataclass
class Endpoint:
    url: str
    requests: list[Received] = field(default_factory=list)

    def paths(self) -> list[str]:
        return [request.path for request in self.requests]

    def webhook_events(self) -> list[dict[str, object]]:
        return [json.loads(request.body) for request in self.requests if request.path == "/hook"]

    def wait_for(self, count: int, seconds: float = 5.0) -> None:
        deadline = time.monotonic() + seconds
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.02)


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    """An HTTP server on a free loopback port that records every request and answers 200."""
    received: list[Received] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            parts = urlsplit(self.path)
            received.append(
                Received(
                    "POST",
                    parts.path,
                    parse_qs(parts.query),
                    self.headers.get("Content-Type", ""),
                    self.rfile.read(length),
                )
            )
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *_args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Endpoint(f"http://127.0.0.1:{server.server_address[1]}", received)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) but never answers."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def closed_port() -> int:
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.bind(("127.0.0.1", 0))
    port: int = probe.getsockname()[1]
    probe.close()  # nobody listens there now: connections are refused
    return port


def sqlite_database(path: Path) -> Path:
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE t (x)")
        connection.execute("INSERT INTO t VALUES (1)")
    connection.close()
    return path


def notify_section(endpoint_url: str, **extra: object) -> dict[str, object]:
    return {"healthchecks_url": endpoint_url + PING_PATH, "webhooks": [endpoint_url + "/hook"], **extra}


def test_a_successful_backup_pings_start_and_success_with_one_run_id(tmp_path: Path, endpoint: Endpoint) -> None:
    database = sqlite_database(tmp_path / "app.db")
    config = write_config(
        tmp_path,
        {"app": {"engine": "sqlite", "databases": [str(database)]}},
        sections={"notify": notify_section(endpoint.url)},
    )

    assert run_cli(config, "backup") == 0
    endpoint.wait_for(4)

    pings = [request for request in endpoint.requests if request.path.startswith(PING_PATH)]
    assert sorted(request.path for request in pings) == [PING_PATH, PING_PATH + "/start"]
    assert len({request.query["rid"][0] for request in pings}) == 1
    success = next(request for request in pings if request.path == PING_PATH)
    assert success.body.decode().startswith("1 backup(s) written in")
    events = {event["event"]: event for event in endpoint.webhook_events()}
    assert set(events) == {"run.started", "run.succeeded"}
    finished = events["run.succeeded"]
    assert finished["job"] == "app" and finished["status"] == "ok"
    assert finished["databases"] == [
        {
            "database": str(database),
            "kind": "database",
            "status": "ok",
            "path": finished["databases"][0]["path"],
            "reason": "",
            "message": "",
        }
    ]
    assert Path(str(finished["databases"][0]["path"])).is_file()


def test_a_failed_backup_pings_fail_with_the_log_tail(tmp_path: Path, endpoint: Endpoint) -> None:
    config = write_config(
        tmp_path,
        {"app": {"engine": "sqlite", "databases": [str(tmp_path / "gone.db")]}},
        sections={"notify": notify_section(endpoint.url)},
    )

    assert run_cli(config, "backup") == 1
    endpoint.wait_for(4)

    fail = next(request for request in endpoint.requests if request.path == PING_PATH + "/fail")
    body = fail.body.decode()
    assert "backup.failed" in body and "not_found" in body and str(tmp_path / "gone.db") in body
    assert all(line.count("backup.") <= 1 for line in body.splitlines())  # one log event per line
    failed = next(event for event in endpoint.webhook_events() if event["event"] == "run.failed")
    assert failed["status"] == "failed"
    assert any("backup.failed" in line for line in failed["log_tail"])  # type: ignore[union-attr]


def test_a_refused_dump_alerts_as_refused(tmp_path: Path, endpoint: Endpoint) -> None:
    database = sqlite_database(tmp_path / "app.db")
    config = write_config(
        tmp_path,
        {"app": {"engine": "sqlite", "databases": [str(database)]}},
        storage={"max_usage": "4KiB"},
        sections={"notify": notify_section(endpoint.url)},
    )

    assert run_cli(config, "backup") == 1
    endpoint.wait_for(4)

    assert events_named(tmp_path, "backup.refused")
    assert PING_PATH + "/fail" in endpoint.paths()
    refused = next(event for event in endpoint.webhook_events() if event["event"] != "run.started")
    assert refused["event"] == "run.refused" and refused["status"] == "refused"


@pytest.mark.parametrize("dead", ["refused", "silent"])
def test_a_dead_endpoint_delays_a_backup_by_at_most_its_timeout(tmp_path: Path, silent_port: int, dead: str) -> None:
    port = silent_port if dead == "silent" else closed_port()
    database = sqlite_database(tmp_path / "app.db")
    url = f"http://127.0.0.1:{port}"
    config = write_config(
        tmp_path,
        {"app": {"engine": "sqlite", "databases": [str(database)]}},
        sections={"notify": notify_section(url, timeout="1s", retries=3)},
    )

    started = time.monotonic()
    assert run_cli(config, "backup") == 0
    elapsed = time.monotonic() - started

    # 1s of waiting for the pings, every configured retry within it, plus the backup itself
    assert elapsed < 2.5
    if dead == "silent":  # each try timed out within the second: all 1 + 3 made, then given up
        assert {event["attempts"] for event in events_named(tmp_path, "notify.failed")} == {4}
    assert [event["event"] for event in log_events(tmp_path) if event["event"] == "backup.finished"]


def test_secrets_never_reach_a_ping_a_webhook_or_the_log(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path, endpoint: Endpoint
) -> None:
    job = {
        "engine": "postgresql",
        "host": pg_server.host,
        "port": pg_server.port,
        "user": pg_server.user,
        "password_file": str(password_file(tmp_path, pg_server.password)),
        "databases": [pg_database],
        "include_globals": False,
    }
    config = write_config(tmp_path, {"main": job}, sections={"notify": notify_section(endpoint.url)})
    # a careless before hook that prints the password and fails: the run fails and alerts
    careless = f"echo connecting with {pg_server.password} >&2; exit 3"
    hooks = f'\n[jobs.main.hooks]\nbefore = ["/bin/sh", "-c", "{careless}"]\n'
    config.write_text(config.read_text() + hooks)

    assert run_cli(config, "backup") == 1
    endpoint.wait_for(4)

    fail = next(request for request in endpoint.requests if request.path == PING_PATH + "/fail")
    assert b"hook.failed" in fail.body and b"***" in fail.body
    everything = b"".join(request.body for request in endpoint.requests)
    everything += (tmp_path / "agent.log").read_bytes()
    assert pg_server.password.encode() not in everything
