"""`notify.retries` as documented: a failing endpoint is tried 1 + retries times, all within
`notify.timeout`, for a manual backup too (its process does not outlive the wait)."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from agent_helpers import events_named, run_cli, write_config


@dataclass
class SilentEndpoint:
    """Accepts every connection and never answers: each try ends in its own timeout."""

    port: int
    connections: list[float] = field(default_factory=list)


@pytest.fixture
def silent_endpoint() -> Iterator[SilentEndpoint]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.1)
    endpoint = SilentEndpoint(listener.getsockname()[1])
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            endpoint.connections.append(time.monotonic())
            held.append(connection)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield endpoint
    finally:
        stop.set()
        thread.join(2)
        for connection in held:
            connection.close()
        listener.close()


def _backup_with_webhook(tmp_path: Path, port: int, **notify: object) -> float:
    database = tmp_path / "app.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE t (x)")
    config = write_config(
        tmp_path,
        {"app": {"engine": "sqlite", "databases": [str(database)]}},
        sections={"notify": {"webhooks": [f"http://127.0.0.1:{port}/hook"], **notify}},
    )
    started = time.monotonic()
    assert run_cli(config, "backup") == 0
    return time.monotonic() - started


@pytest.mark.parametrize("retries", [0, 2, 3])
def test_a_silent_endpoint_is_tried_one_plus_retries_times_within_the_timeout(
    tmp_path: Path, silent_endpoint: SilentEndpoint, retries: int
) -> None:
    elapsed = _backup_with_webhook(tmp_path, silent_endpoint.port, timeout="2s", retries=retries)
    time.sleep(0.2)  # the accept loop's last connection
    # two events (run.started, run.succeeded), each tried 1 + retries times
    assert len(silent_endpoint.connections) == 2 * (1 + retries)
    failed = events_named(tmp_path, "notify.failed")
    assert sorted(event["notify_event"] for event in failed) == ["run.started", "run.succeeded"], failed
    assert {event["attempts"] for event in failed} == {1 + retries}
    assert elapsed < 2 + 1.5  # the wait stays bounded by notify.timeout (plus the backup itself)
