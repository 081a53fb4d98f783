"""Progress where people watch: a terminal sees `backup`, `restore` and `drill` advance; a pipe sees
nothing extra; the daemon's log shows a long dump is alive.

The CLI runs as a real subprocess with its stderr on a pseudo-terminal (the pty module's openpty),
against the throwaway PostgreSQL server; a ~10 MB table written at 4 MiB/s (`storage.max_write_rate`)
makes the dump last long enough for several redraws on any machine.
"""

from __future__ import annotations

import itertools
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from agent_helpers import data_files, events_named, write_config
from servers.postgres import PostgresServer
from test_daemon import sqlite_database, sqlite_job
from test_postgres import drop_database, pg_job

from agent.manifest import manifest_path, read_manifest
from agent.units import format_size

PROJECT = Path(__file__).resolve().parents[2]
ROWS = (
    "CREATE TABLE item (id int, body text);"
    "INSERT INTO item SELECT n, repeat(md5(n::text), 3) FROM generate_series(1, 100000) n;"
)
SLOW = {"compression": "none", "max_write_rate": "4MiB/s", "impact": "fastest"}
# `<operation> <database>: <size> of ~<size> (<n>%)...`: one frame of the progress line
FRAME = re.compile(
    r"(?P<operation>backup|restore|drill) (?P<database>\S+)(?: \((?P<step>\w+)\))?: (?P<done>[\d.]+ \w?i?B)"
    r"(?: of ~(?P<total>[\d.]+ \w?i?B) \((?P<percent>\d+)%\))?"
)


def agent_argv(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "agent", "-c", str(config), *args]


def on_a_terminal(config: Path, *args: str, timeout: float = 120) -> tuple[int, str, str]:
    """Run the agent with stderr on a pseudo-terminal: (exit code, what the terminal got, stdout)."""
    primary, terminal = os.openpty()
    environment = {**os.environ, "COLUMNS": "200"}  # a pty made by openpty has no size: no cut lines
    process = subprocess.Popen(
        agent_argv(config, *args),
        cwd=PROJECT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=terminal,
        env=environment,
    )
    os.close(terminal)
    received = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 1.0)
            if not ready:
                continue
            try:
                data = os.read(primary, 65536)
            except OSError:  # EIO: every writer of the terminal has closed it
                break
            if not data:
                break
            received += data
        else:
            process.kill()
            raise AssertionError(f"{args} did not end within {timeout}s: {received.decode(errors='replace')}")
        assert process.stdout is not None
        stdout = process.stdout.read().decode()
        code = process.wait(30)
    finally:
        os.close(primary)
        if process.poll() is None:
            process.kill()
            process.wait()
    return code, received.decode(errors="replace"), stdout


def piped(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        agent_argv(config, *args), cwd=PROJECT, capture_output=True, text=True, timeout=120, check=False
    )


def frames(terminal: str, operation: str) -> list[re.Match[str]]:
    """The progress frames of `operation` drawn on the terminal (each redraw starts with \\r)."""
    return [match for part in terminal.split("\r") if (match := FRAME.match(part)) and match["operation"] == operation]


@pytest.fixture
def backed_up(pg_server: PostgresServer, pg_database: str, tmp_path: Path) -> Path:
    """A ~10 MB database and a config whose dumps take a few seconds; one backup made through a pipe."""
    pg_server.psql(pg_database, ROWS)
    config = write_config(
        tmp_path, {"main": pg_job(pg_server, tmp_path, [pg_database], include_globals=False)}, storage=SLOW
    )
    result = piped(config, "backup")
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", "nothing but the result when stderr is not a terminal"
    assert "\r" not in result.stdout and "of ~" not in result.stdout
    assert result.stdout.splitlines() == [line for line in result.stdout.splitlines() if line.startswith("ok ")]
    return config


def newest_raw_size(storage: Path) -> int:
    return read_manifest(manifest_path(data_files(storage)[-1])).raw_bytes


def test_a_backup_on_a_terminal_shows_bytes_rate_and_the_estimated_total_and_clears_the_line(
    pg_database: str, backed_up: Path, tmp_path: Path
) -> None:
    expected = format_size(newest_raw_size(tmp_path / "storage"))
    code, terminal, stdout = on_a_terminal(backed_up, "backup")

    assert code == 0, terminal
    shown = frames(terminal, "backup")
    assert len(shown) >= 3, f"a few seconds of dump redraw the line every half second: {terminal!r}"
    assert {frame["database"] for frame in shown} == {pg_database}
    # the total is the last dump's size (a dump that outgrows it shows no total rather than over 100%)
    assert {frame["total"] for frame in shown} - {None} == {expected}
    percents = [int(frame["percent"]) for frame in shown]
    assert percents == sorted(percents) and percents[-1] > percents[0], percents
    assert any("MiB/s" in part and "elapsed" in part and "left" in part for part in terminal.split("\r"))
    last = terminal.rindex(shown[-1].group(0))
    assert "\r\x1b[K" in terminal[last:], "the line is cleared when the dump ends"
    assert stdout.startswith("ok      main "), stdout


def test_status_shows_a_running_dumps_bytes_against_its_estimated_total(backed_up: Path, tmp_path: Path) -> None:
    expected = newest_raw_size(tmp_path / "storage")
    backed_up.write_text(backed_up.read_text().replace('"4MiB/s"', '"2MiB/s"'))  # ~5 s: time for a few looks
    backup = subprocess.Popen(
        agent_argv(backed_up, "backup"), cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            text = piped(backed_up, "status").stdout
            running = [line for line in text.splitlines() if line.startswith("running: ")]
            if running:
                break
            assert backup.poll() is None and time.monotonic() < deadline, "status never saw the dump running"
        assert backup.wait(60) == 0
    finally:
        if backup.poll() is None:
            backup.kill()
            backup.wait()
    assert f" of ~{format_size(expected)} so far" in running[0], running


def test_a_restore_a_restore_to_a_file_and_a_drill_on_a_terminal_show_their_progress_against_the_manifests_size(
    pg_server: PostgresServer, pg_database: str, backed_up: Path, tmp_path: Path
) -> None:
    expected = format_size(newest_raw_size(tmp_path / "storage"))
    target = f"{pg_database}_copy"
    try:
        code, terminal, stdout = on_a_terminal(
            backed_up, "restore", "--job", "main", "--database", pg_database, "--into", target
        )
        assert code == 0, terminal
        shown = frames(terminal, "restore")
        assert {frame["step"] for frame in shown} == {"verifying", None}, f"both passes are shown: {terminal!r}"
        assert all(frame["database"] == pg_database and frame["total"] == expected for frame in shown)
        assert "\r\x1b[K" in terminal[terminal.rindex(shown[-1].group(0)) :]
        assert stdout.startswith("restored "), stdout
    finally:
        drop_database(pg_server, target)

    output = tmp_path / "plain.dump"
    code, terminal, stdout = on_a_terminal(
        backed_up, "restore", "--job", "main", "--database", pg_database, "--to-file", str(output)
    )
    assert code == 0 and output.stat().st_size == newest_raw_size(tmp_path / "storage"), terminal
    shown = frames(terminal, "restore")
    assert {frame["step"] for frame in shown} == {"verifying", None}, f"--to-file too: {terminal!r}"

    code, terminal, stdout = on_a_terminal(backed_up, "drill", "--job", "main")
    assert code == 0, terminal + stdout
    shown = frames(terminal, "drill")
    assert {frame["step"] for frame in shown} == {"verifying", None}, terminal
    assert all(frame["database"] == pg_database and frame["total"] == expected for frame in shown), terminal
    assert stdout.startswith("PASSED"), stdout


def test_a_restore_and_a_drill_through_a_pipe_print_nothing_extra(
    pg_server: PostgresServer, pg_database: str, backed_up: Path
) -> None:
    target = f"{pg_database}_piped"
    try:
        restored = piped(backed_up, "restore", "--job", "main", "--database", pg_database, "--into", target)
    finally:
        drop_database(pg_server, target)
    drilled = piped(backed_up, "drill", "--job", "main")
    assert (restored.returncode, drilled.returncode) == (0, 0), restored.stderr + drilled.stderr
    assert (restored.stderr, drilled.stderr) == ("", "")
    assert restored.stdout.startswith("restored ") and len(restored.stdout.splitlines()) == 1
    assert drilled.stdout.startswith("PASSED") and len(drilled.stdout.splitlines()) == 1


def test_the_daemon_logs_a_progress_event_during_a_long_dump(tmp_path: Path) -> None:
    # 4 MB in 1 MiB chunks at 700 KiB/s: a chunk every ~1.5 s, for ~6 s
    database = sqlite_database(tmp_path / "app.db", payload_bytes=4_000_000)
    storage = {"compression": "none", "max_write_rate": "700KiB/s"}
    config = write_config(tmp_path, {"app": sqlite_job(database, every="1h")}, storage=storage)
    # the log's interval shortened from five minutes to one second: the test hook is the config key
    config.write_text(config.read_text().replace('level = "debug"', 'level = "debug"\nprogress_every = "1s"'))
    with (tmp_path / "daemon.stderr").open("wb") as stderr:
        daemon = subprocess.Popen(
            agent_argv(config, "run"), cwd=PROJECT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr
        )
    try:
        deadline = time.monotonic() + 60
        while not events_named(tmp_path, "backup.finished"):
            assert daemon.poll() is None, (tmp_path / "daemon.stderr").read_text()
            assert time.monotonic() < deadline, "the dump never finished"
            time.sleep(0.1)
        daemon.terminate()
        daemon.wait(30)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()

    progress = events_named(tmp_path, "backup.progress")
    assert len(progress) >= 2, progress
    assert all(event["database"] == str(database) and event["job"] == "app" for event in progress)
    assert [event["bytes"] for event in progress] == sorted(event["bytes"] for event in progress)
    assert 0 < progress[0]["bytes"] < progress[-1]["bytes"] <= events_named(tmp_path, "backup.finished")[0]["bytes"]
    assert all(event["rate_bytes_per_second"] > 0 and event["elapsed_seconds"] >= 1 for event in progress)
    gaps = [later["elapsed_seconds"] - earlier["elapsed_seconds"] for earlier, later in itertools.pairwise(progress)]
    assert all(gap >= 0.9 for gap in gaps), f"one event per second at most: {gaps}"
