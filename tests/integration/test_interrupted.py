"""A planned stop (SIGTERM during a dump, every deploy) is `interrupted`: no failure, no alert, rerun at next start."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agent_helpers import events_named, run_cli, write_config
from servers.postgres import PostgresServer
from test_daemon import PROJECT, daemons, postgres_job  # noqa: F401 - daemons: the fixture


def config_for(tmp_path: Path, server: PostgresServer, database: str) -> Path:
    marker = tmp_path / "on_failure.ran"
    return write_config(
        tmp_path,
        {"app": postgres_job(tmp_path, server, database, every="1h")},
        sections={"jobs.app.hooks": {"on_failure": ["/bin/sh", "-c", f"touch {marker}"]}},
    )


def wait_until(condition: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.05)


def test_sigterm_during_a_dump_is_interrupted_not_failed_and_the_next_start_reruns_it(
    tmp_path: Path,
    daemons: Any,  # noqa: F811 - the fixture imported above
    pg_server: PostgresServer,
    pg_database: str,
) -> None:
    config = config_for(tmp_path, pg_server, pg_database)
    assert run_cli(config, "backup") == 0  # a good backup after this hour's interval fire: no catch-up owed
    (tmp_path / "hang").touch()  # the next dump hangs until it is stopped
    backup = subprocess.Popen(
        [sys.executable, "-m", "agent", "-c", str(config), "backup"],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    storage = tmp_path / "storage"
    wait_until((tmp_path / "hang.pid").exists, "the hanging dump")
    backup.send_signal(signal.SIGTERM)
    out, _ = backup.communicate(timeout=30)

    assert backup.returncode == 128 + signal.SIGTERM
    assert "INTERRUPTED" in out and "FAILED" not in out
    assert [event["reason"] for event in events_named(tmp_path, "backup.interrupted")] == ["shutdown"]
    assert events_named(tmp_path, "backup.failed") == []
    assert not (tmp_path / "on_failure.ran").exists(), "a planned stop ran the on_failure hook"
    history = json.loads((storage / ".agent" / "databases.json").read_text())
    [record] = history["jobs"]["app"]["databases"]
    assert record["last_status"] == "interrupted"
    assert record["failures_total"] == 0 and record["last_failure"] is None
    state = json.loads((storage / ".agent" / "state.json").read_text())["jobs"]["app"]
    assert state["last_status"] == "interrupted" and state["last_failure"] is None

    (tmp_path / "hang").unlink()
    daemon = daemons(tmp_path, config)
    [owed] = daemon.wait_for("schedule.catch_up")
    assert owed["job"] == "app"
    daemon.wait_for("job.finished", where=lambda event: event["status"] == "ok")
    code, _took = daemon.stop()
    assert code == 0
    history = json.loads((storage / ".agent" / "databases.json").read_text())
    assert history["jobs"]["app"]["databases"][0]["last_status"] == "ok"
