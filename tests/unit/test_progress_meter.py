"""The progress model: bytes, rate, estimated total and time left, each watcher told at its own pace."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field

from agent.cli import _TerminalProgress
from agent.progress import LogWatcher, Meter, Snapshot, clock_text, counted, describe

MIB = 1 << 20


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Recorder:
    every: float
    at_start: bool = False
    updates: list[Snapshot] = field(default_factory=list)
    finished: list[Snapshot] = field(default_factory=list)

    def update(self, snapshot: Snapshot) -> None:
        self.updates.append(snapshot)

    def finish(self, snapshot: Snapshot) -> None:
        self.finished.append(snapshot)


class FakeLog:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, object]]] = []

    def info(self, event: str, **fields: object) -> None:
        self.events.append((event, fields))


def test_the_line_shows_bytes_the_estimated_total_rate_elapsed_and_time_left() -> None:
    snapshot = Snapshot("backup", "shop", 12 * MIB, 40 * MIB, 3.0)
    assert describe(snapshot) == "backup shop: 12 MiB of ~40 MiB (30%), 4 MiB/s, 0:03 elapsed, ~0:07 left"


def test_an_estimate_already_passed_is_dropped_rather_than_shown_as_over_100_percent() -> None:
    snapshot = Snapshot("restore", "shop", 50 * MIB, 40 * MIB, 10.0)
    assert snapshot.expected_bytes is None and snapshot.remaining_seconds is None
    assert describe(snapshot) == "restore shop: 50 MiB, 5 MiB/s, 0:10 elapsed"


def test_without_an_estimate_there_is_no_total_and_no_time_left() -> None:
    assert describe(Snapshot("drill", "shop", 2 * MIB, None, 4.0)) == "drill shop: 2 MiB, 512 KiB/s, 0:04 elapsed"


def test_the_first_chunk_shows_no_rate_yet() -> None:
    assert (
        describe(Snapshot("backup", "shop", MIB, 4 * MIB, 0.01)) == "backup shop: 1 MiB of ~4 MiB (25%), 0:00 elapsed"
    )


def test_clock_text_reads_minutes_and_hours() -> None:
    assert [clock_text(value) for value in (0, 59.6, 61, 3725)] == ["0:00", "1:00", "1:01", "1:02:05"]


def test_each_watcher_is_told_at_its_own_interval_and_once_at_the_end() -> None:
    clock = FakeClock()
    terminal, log = Recorder(0.5, at_start=True), Recorder(300.0)
    meter = Meter("backup", "shop", 100 * MIB, [terminal, log], clock=clock)
    for _ in range(1000):  # 1 MiB every 0.1 s: 100 s of dump
        meter.advance(MIB // 10)
        clock.now += 0.01
    assert 19 <= len(terminal.updates) <= 21, "every half second of 10 s"
    assert terminal.updates[0].done_bytes == MIB // 10, "the first chunk is shown at once"
    assert log.updates == [], "the log waits its whole interval"
    for _ in range(30000):
        meter.advance(MIB // 10)
        clock.now += 0.01
    assert [round(update.elapsed_seconds) for update in log.updates] == [300]
    meter.finish()
    meter.finish()
    assert len(terminal.finished) == len(log.finished) == 1
    assert terminal.finished[0].finished


def test_between_due_times_a_chunk_reads_the_clock_and_nothing_else() -> None:
    readings = 0

    def clock() -> float:
        nonlocal readings
        readings += 1
        return 5.0

    watcher = Recorder(60.0)
    meter = Meter("restore", "shop", None, [watcher], clock=clock)
    for _ in range(100):
        meter.advance(10)
    assert (readings, watcher.updates, meter.done_bytes) == (101, [], 1000)


def test_the_log_watcher_logs_the_operations_progress_event_with_its_figures() -> None:
    clock, log = FakeClock(), FakeLog()
    meter = Meter("restore", "shop", 10 * MIB, [LogWatcher(log, every=1.0)], clock=clock)
    clock.now += 2.0
    meter.advance(4 * MIB)
    assert log.events == [
        (
            "restore.progress",
            {
                "database": "shop",
                "bytes": 4 * MIB,
                "expected_bytes": 10 * MIB,
                "rate_bytes_per_second": 2 * MIB,
                "elapsed_seconds": 2.0,
            },
        )
    ]


def test_counted_chunks_pass_through_unchanged_and_finish_the_meter_when_the_consumer_stops() -> None:
    clock = FakeClock()
    watcher = Recorder(1.0)
    meter = Meter("drill", "shop", None, [watcher], clock=clock)
    chunks = counted(iter([b"ab", b"cde", b"f"]), meter)
    assert next(chunks) == b"ab"
    chunks.close()  # a restore tool that failed stops reading
    assert meter.done_bytes == 2 and len(watcher.finished) == 1
    meter = Meter("drill", "shop", None, [], clock=clock)
    assert b"".join(counted([b"ab", b"cde"], meter)) == b"abcde" and meter.done_bytes == 5


def test_the_re_verification_before_a_restore_is_a_step_of_the_restore() -> None:
    snapshot = Snapshot("restore", "shop", 3 * MIB, 12 * MIB, 1.0, step="verifying")
    assert describe(snapshot) == "restore shop (verifying): 3 MiB of ~12 MiB (25%), 3 MiB/s, 0:01 elapsed, ~0:03 left"
    assert snapshot.log_fields()["step"] == "verifying"
    assert "step" not in Snapshot("restore", "shop", 1, None, 1.0).log_fields()


def test_the_terminal_line_is_cleared_before_a_log_line_and_at_the_end() -> None:
    terminal = io.StringIO()
    line = _TerminalProgress(terminal)
    handler = logging.StreamHandler(terminal)
    handler.addFilter(line)
    logger = logging.Logger("progress-test")
    logger.addHandler(handler)
    line.update(Snapshot("backup", "bad\x1b[2Jname", MIB, None, 1.0))
    logger.warning("a warning mid-dump")
    line.finish(Snapshot("backup", "shop", MIB, None, 1.0, finished=True))
    assert (
        terminal.getvalue()
        == "\rbackup bad\\x1b[2Jname: 1 MiB, 1 MiB/s, 0:01 elapsed\x1b[K\r\x1b[Ka warning mid-dump\n"
    )
