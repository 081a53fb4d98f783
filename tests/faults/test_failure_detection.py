"""Detecting failure: lying, hanging and noisy dump tools, a full disk, a quota, a failing fsync.

Each failure must name its documented reason, leave no file and no partial behind, keep every
older backup as it was, and never block the next run.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import data_files, events_named, run_cli, stored_files, write_config
from fault_helpers import (
    MIB,
    PROJECT,
    agent_argv,
    fake_pg_dump,
    fingerprints,
    partial_files,
    pg_job,
    process_gone,
    read_pid,
    sqlite_database,
    sqlite_job,
    storage_at,
    use_real_tool,
)
from servers.common import tmpfs
from servers.postgres import PostgresServer

from agent import catalog
from agent.verify import OK, verify_storage

ROWS = """
CREATE TABLE item (id serial PRIMARY KEY, name text NOT NULL, note text);
INSERT INTO item (name, note) SELECT 'item ' || g, repeat('x', g % 50) FROM generate_series(1, 5000) g;
"""


def _failures(directory: Path) -> list[tuple[str, str]]:
    return [(event["reason"], event["error"]) for event in events_named(directory, "backup.failed")]


def _assert_nothing_left(storage: Path) -> None:
    assert stored_files(storage) == [], "a failed dump must leave no file"
    assert partial_files(storage) == [], "a failed dump must leave no partial"


def _assert_next_run_succeeds(directory: Path, config: Path) -> None:
    use_real_tool(directory)
    assert run_cli(config, "backup") == 0
    (dump,) = data_files(directory / "storage")
    assert [finding.status for finding in verify_storage(directory / "storage")] == [OK]
    assert dump.stat().st_size > 0


# ------------------------------------------------------------------------------------------------
# Tools that lie, hang or refuse to die


TOOLS = {
    # name: (sh body, documented reason, a fragment of the error)
    "writes 1 MiB then exits 1": ("head -c 1048576 /dev/urandom; exit 1", "tool_failed", "exited with status 1"),
    "exits 0 with no output": ("exit 0", "empty", "empty"),
    "exits 0 with output cut mid-record": ('"$REAL" "$@" | head -c 30000; exit 0', "verification_failed", ""),
    "hangs forever": ("exec sleep 300", "stalled", "wrote nothing for 2s"),
    "ignores SIGTERM": ("trap '' TERM; printf PGDMP; exec sleep 300", "stalled", "wrote nothing for 2s"),
}


@pytest.mark.parametrize("behaviour", list(TOOLS))
def test_a_misbehaving_dump_tool_fails_with_its_reason_and_leaves_nothing(
    behaviour: str, pg_server: PostgresServer, pg_database: str, tmp_path: Path
) -> None:
    body, reason, fragment = TOOLS[behaviour]
    pg_server.psql(pg_database, ROWS)
    tool = fake_pg_dump(tmp_path, pg_server, body)
    config = write_config(
        tmp_path,
        {"main": pg_job(tmp_path, pg_server, [pg_database], tool=str(tool))},
        sections={"daemon": {"shutdown_timeout": "5s"}},
    )
    started = time.monotonic()

    assert run_cli(config, "backup") == 1

    took = time.monotonic() - started
    ((logged_reason, error),) = _failures(tmp_path)
    assert logged_reason == reason
    assert fragment in error
    _assert_nothing_left(tmp_path / "storage")
    assert process_gone(read_pid(tmp_path / "tool.pid")), "the tool outlived its failed run"
    assert took < 12, f"the failure took {took:.1f}s to notice"
    _assert_next_run_succeeds(tmp_path, config)


def _max_rss_of(argv: list[str]) -> tuple[int, int]:
    """Exit status and peak RSS (KiB) of a command run to completion."""
    process = subprocess.Popen(argv, cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_maxrss


def test_a_tool_writing_50_mb_to_stderr_while_dumping_neither_deadlocks_nor_fills_memory(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path
) -> None:
    pg_server.psql(pg_database, ROWS)
    noisy = 'yes "pg_dump: warning: something noisy \\033[31m{\\"event\\": \\"fake\\"}" | head -c {size} >&2'
    body = f'("$REAL" "$@") & {noisy}; wait $!; printf "\\npg_dump: error: the last words\\n" >&2; exit 1'
    quiet = fake_pg_dump(tmp_path, pg_server, body.replace("{size}", "50000"), name="quiet")
    loud = fake_pg_dump(tmp_path, pg_server, body.replace("{size}", "50000000"), name="loud")
    quiet_config = write_config(tmp_path, {"main": pg_job(tmp_path, pg_server, [pg_database], tool=str(quiet))})
    quiet_code, quiet_rss = _max_rss_of(agent_argv(quiet_config, "backup"))
    loud_config = write_config(tmp_path, {"main": pg_job(tmp_path, pg_server, [pg_database], tool=str(loud))})
    started = time.monotonic()

    loud_code, loud_rss = _max_rss_of(agent_argv(loud_config, "backup"))

    assert time.monotonic() - started < 30
    assert (quiet_code, loud_code) == (1, 1)
    assert loud_rss - quiet_rss < 20 * 1024, f"peak RSS grew by {(loud_rss - quiet_rss) // 1024} MiB"
    failed = events_named(tmp_path, "backup.failed")
    assert [event["reason"] for event in failed] == ["tool_failed", "tool_failed"]
    assert "exited with status 1: pg_dump: error: the last words" in failed[-1]["error"]
    assert 0 < len(failed[-1]["stderr_tail"]) <= 2000
    assert failed[-1]["stderr_tail"].endswith("pg_dump: error: the last words")
    _assert_nothing_left(tmp_path / "storage")
    _assert_next_run_succeeds(tmp_path, loud_config)


def test_a_dump_tool_killed_by_sigkill_fails_naming_the_signal_and_the_next_run_succeeds(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path
) -> None:
    """What the OOM killer does: SIGKILL to the tool alone, mid-stream."""
    pg_server.psql(pg_database, ROWS)
    tool = fake_pg_dump(tmp_path, pg_server, "printf PGDMP; while true; do printf x; sleep 0.05; done")
    config = write_config(tmp_path, {"main": pg_job(tmp_path, pg_server, [pg_database], tool=str(tool))})

    process = subprocess.Popen(agent_argv(config, "backup"), cwd=PROJECT, stdout=subprocess.PIPE, text=True)
    os.kill(read_pid(tmp_path / "tool.pid"), 9)
    stdout, _ = process.communicate(timeout=30)

    assert process.returncode == 1
    ((reason, error),) = _failures(tmp_path)
    assert reason == "killed"
    assert "was killed by SIGKILL" in error and "SIGKILL" in stdout
    _assert_nothing_left(tmp_path / "storage")
    _assert_next_run_succeeds(tmp_path, config)


# ------------------------------------------------------------------------------------------------
# No space: a real full disk, a quota


def test_a_disk_filling_up_mid_dump_removes_the_partial_at_once_and_the_next_run_succeeds(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path
) -> None:
    with pg_server.connect(pg_database) as connection:
        connection.execute("CREATE TABLE blob (id int, data bytea)")
        connection.execute("ALTER TABLE blob ALTER COLUMN data SET STORAGE EXTERNAL")
        connection.execute("INSERT INTO blob VALUES (1, %s)", (os.urandom(4 * MIB),))
    with tmpfs(tmp_path / "disk", "24m") as disk:
        whole = tmp_path / "whole.dump"
        body = (
            f'"$REAL" "$@" > "{whole}" || exit 9\n'
            f'head -c 1500000 "{whole}"\nsleep 1\n'
            f'head -c 100M /dev/zero > "{disk}/filler" 2>/dev/null\n'
            f'tail -c +1500001 "{whole}"\n'
        )
        tool = fake_pg_dump(tmp_path, pg_server, body)
        job = pg_job(tmp_path, pg_server, [pg_database], tool=str(tool))
        config = storage_at(write_config(tmp_path, {"main": job}, storage={"compression": "none"}), disk / "storage")
        use_real_tool(tmp_path)
        assert run_cli(config, "backup") == 0
        older = fingerprints(stored_files(disk / "storage"))
        (tmp_path / "real").unlink()
        started = time.monotonic()

        assert run_cli(config, "backup") == 1

        assert time.monotonic() - started < 10
        reasons = [reason for reason, _error in _failures(tmp_path)]
        # the disk fills between two room checks (no_space) or just before one (disk_contention)
        assert reasons in (["no_space"], ["disk_contention"]), "one failure, no retries"
        assert partial_files(disk / "storage") == []
        assert fingerprints(stored_files(disk / "storage")) == older
        assert process_gone(read_pid(tmp_path / "tool.pid"))
        (disk / "filler").unlink()
        use_real_tool(tmp_path)
        assert run_cli(config, "backup") == 0
        assert [record.status for record in catalog.scan(disk / "storage")] == ["good", "good"]
        assert all(finding.status == OK for finding in verify_storage(disk / "storage"))


def _failing_writes(error_number: int, after_writes: int) -> tuple[Callable[..., int], dict[str, int]]:
    """An os.write that fails with `error_number` on a partial dump file after `after_writes` writes."""
    real_write = os.write
    calls = {"before": 0, "after": 0}

    def write(descriptor: int, data: Any) -> int:
        target = os.readlink(f"/proc/self/fd/{descriptor}")
        if target.endswith(".sqlite.partial"):
            if calls["before"] >= after_writes:
                calls["after"] += 1
                raise OSError(error_number, os.strerror(error_number))
            calls["before"] += 1
        return real_write(descriptor, data)

    return write, calls


def test_a_quota_exceeded_mid_dump_fails_once_removes_the_partial_and_keeps_older_backups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = sqlite_database(tmp_path / "app.db", payload_bytes=3 * MIB)
    config = write_config(tmp_path, {"app": sqlite_job(database)}, storage={"compression": "none"})
    assert run_cli(config, "backup") == 0
    storage = tmp_path / "storage"
    older = fingerprints(stored_files(storage))
    write, calls = _failing_writes(errno.EDQUOT, after_writes=1)
    monkeypatch.setattr(os, "write", write)

    code = run_cli(config, "backup")

    monkeypatch.undo()
    assert code == 1
    assert calls == {"before": 1, "after": 1}, "the failed write was retried"
    assert [reason for reason, _error in _failures(tmp_path)] == ["no_space"]
    assert partial_files(storage) == []
    assert fingerprints(stored_files(storage)) == older
    assert run_cli(config, "backup") == 0
    assert len(data_files(storage)) == 2


# ------------------------------------------------------------------------------------------------
# fsync


def _failing_fsync(suffix: str) -> tuple[Callable[[int], None], list[str]]:
    """An os.fsync that fails with EIO for files whose name ends with `suffix`; records every call."""
    real_fsync = os.fsync
    calls: list[str] = []

    def fsync(descriptor: int) -> None:
        target = os.readlink(f"/proc/self/fd/{descriptor}")
        calls.append(target)
        if target.endswith(suffix):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(descriptor)

    return fsync, calls


@pytest.mark.parametrize("suffix", [".sqlite.zst.partial", ".sqlite.zst.json.partial"], ids=["data", "manifest"])
def test_a_failed_fsync_fails_the_run_removes_the_file_and_is_never_retried(
    suffix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = sqlite_database(tmp_path / "first.db"), sqlite_database(tmp_path / "second.db")
    config = write_config(tmp_path, {"app": sqlite_job(first, second)})
    fsync, calls = _failing_fsync(suffix)
    monkeypatch.setattr(os, "fsync", fsync)

    code = run_cli(config, "backup")

    monkeypatch.undo()
    assert code == 1
    failing = [call for call in calls if call.endswith(suffix)]
    assert len(failing) == 2, "one fsync per database, never a second try"
    assert [reason for reason, _error in _failures(tmp_path)] == ["io_error", "io_error"]
    storage = tmp_path / "storage"
    assert data_files(storage) == [] and stored_files(storage) == []
    assert [record.status for record in catalog.scan(storage)] == []
    assert run_cli(config, "backup") == 0
    assert len(data_files(storage)) == 2


def test_a_journal_that_cannot_be_written_is_logged_and_the_whole_backups_still_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = sqlite_database(tmp_path / "first.db"), sqlite_database(tmp_path / "second.db")
    config = write_config(tmp_path, {"app": sqlite_job(first, second)})
    fsync, _calls = _failing_fsync("journal.jsonl")
    monkeypatch.setattr(os, "fsync", fsync)

    code = run_cli(config, "backup")

    monkeypatch.undo()
    assert code == 0, "both backups are whole: their manifests say so"
    assert len(events_named(tmp_path, "journal.write_failed")) == 2
    assert [record.status for record in catalog.scan(tmp_path / "storage")] == [catalog.GOOD, catalog.GOOD]
    assert all(finding.status == OK for finding in verify_storage(tmp_path / "storage"))
