"""Scheduled runs get the same operations as manual ones: metrics, alerts, then a passing `status --check`."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from agent_helpers import events_named, run_cli, write_config

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ping_server() -> Iterator[tuple[str, list[str]]]:
    paths: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            paths.append(self.path.split("?")[0])
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/ping/abc", paths
    finally:
        server.shutdown()
        server.server_close()


def test_a_scheduled_run_writes_metrics_and_pings_like_a_manual_one(
    tmp_path: Path, ping_server: tuple[str, list[str]]
) -> None:
    url, paths = ping_server
    database = tmp_path / "app.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE t (x)")
    connection.close()
    textfile = tmp_path / "backup_agent.prom"
    config = write_config(
        tmp_path,
        {"app": {"engine": "sqlite", "databases": [str(database)], "every": "2s", "max_backup_age": "1h"}},
        sections={"metrics": {"textfile": textfile}, "notify": {"healthchecks_url": url}},
    )
    daemon = subprocess.Popen(
        [sys.executable, "-m", "agent", "-c", str(config), "run"],
        cwd=PROJECT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not events_named(tmp_path, "job.finished") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert events_named(tmp_path, "job.finished"), "no scheduled run finished within 20s"
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(30)

    assert code == 0
    assert "/ping/abc/start" in paths and "/ping/abc" in paths
    metrics = textfile.read_text()
    assert f'backup_agent_backups{{job="app",database="{database}",kind="database"}} ' in metrics
    assert "backup_agent_last_success_timestamp_seconds{" in metrics
    assert run_cli(config, "status", "--check") == 0
