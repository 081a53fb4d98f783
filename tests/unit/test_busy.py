"""The database-busy signal's pure decisions: episodes, freshness, the pacing share, each engine's
figure from its server's reply; and the pacer and sampler driven by fake probes and a fake clock."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import structlog

from agent.busy import BusyReading, BusySampler, Episode, current_reading, next_episode
from agent.engines.mongo.busy import queued_operations
from agent.engines.mysql.busy import busy_threads
from agent.pressure import Pacer, PacingSettings, StallGauge, next_share


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_episode_starts_once_and_ends_only_after_a_quiet_stretch() -> None:
    episode, started = next_episode(Episode(), over=True, now=10.0, quiet=5.0)
    assert started and episode.active
    episode, started = next_episode(episode, over=True, now=11.0, quiet=5.0)
    assert not started  # the same episode: logged once
    episode, started = next_episode(episode, over=False, now=14.0, quiet=5.0)
    assert episode.active and not started  # quiet for 3 s only
    episode, started = next_episode(episode, over=True, now=15.0, quiet=5.0)
    assert not started  # back over within the quiet stretch: still the same episode
    episode, _ = next_episode(episode, over=False, now=20.0, quiet=5.0)
    assert not episode.active
    _, started = next_episode(episode, over=True, now=21.0, quiet=5.0)
    assert started  # a new episode


def test_an_old_reading_says_nothing_about_now() -> None:
    reading = BusyReading(9, 2, "running threads", taken_at=100.0)
    assert current_reading(reading, now=103.0, stale_after=5.0) is reading
    assert current_reading(reading, now=106.0, stale_after=5.0) is None
    assert current_reading(None, now=100.0) is None
    assert reading.over and not BusyReading(2, 2, "x", 0.0).over  # at the threshold is not over it


def test_a_busy_database_raises_the_share_even_without_pressure_figures_up_to_its_own_cap() -> None:
    settings = PacingSettings(step=0.1, max_share=0.5, busy_max_share=0.75)
    share = 0.0
    for _ in range(20):
        share = next_share(share, None, settings, busy=True)
    assert share == pytest.approx(0.75)
    assert next_share(share, 0.0, settings) == pytest.approx(0.5)  # not busy: back under the pressure cap
    assert next_share(0.3, None, settings) == settings.min_share  # neither figure: no pacing


def test_mysql_busy_threads_leave_out_the_sampler_the_dump_and_the_event_scheduler() -> None:
    assert busy_threads(running=2, dump_threads=0, scheduler_on=True) == 0  # an idle server
    assert busy_threads(running=6, dump_threads=1, scheduler_on=True) == 3
    assert busy_threads(running=4, dump_threads=1, scheduler_on=False) == 2
    assert busy_threads(running=1, dump_threads=1, scheduler_on=True) == 0  # never negative


def test_mongodb_queued_operations_from_server_status_or_none() -> None:
    assert queued_operations({"globalLock": {"currentQueue": {"total": 3, "readers": 2, "writers": 1}}}) == 3
    assert queued_operations({"globalLock": {"currentQueue": {"readers": 2, "writers": 2}}}) == 4
    assert queued_operations({"ok": 1}) is None  # the SecantusDB stand-in: cannot sample
    assert queued_operations({"globalLock": "n/a"}) is None


class FakeBusy:
    def __init__(self) -> None:
        self.reading: BusyReading | None = None

    def latest(self) -> BusyReading | None:
        return self.reading


def test_the_pacer_pauses_while_the_database_is_busy_and_reports_each_episode_once(tmp_path: Path) -> None:
    clock = Clock()
    settings = PacingSettings(interval=0.5, step=0.25, busy_max_share=0.75)
    pacer = Pacer(StallGauge([tmp_path / "no-psi"], clock), settings, clock)  # no PSI: only the busy signal
    busy, started = FakeBusy(), []
    pacer.busy, pacer.on_busy = busy, started.append

    def read_for(seconds: float) -> float:
        paused = 0.0
        end = clock.now + seconds
        while clock.now < end:
            clock.now += 0.1  # a chunk
            pause = pacer.pause()
            clock.now += pause
            paused += pause
        return paused

    assert read_for(5.0) == 0.0  # no reading: no pause
    busy.reading = BusyReading(5, 2, "active client backends", clock.now)
    paused = read_for(20.0)
    assert started == [busy.reading]
    assert paused / 20.0 == pytest.approx(0.75, abs=0.1)  # close to the cap, never more
    assert pacer.busy_paused_seconds == pytest.approx(paused)
    busy.reading = BusyReading(1, 2, "active client backends", clock.now)
    read_for(20.0)  # quiet: the episode ends
    busy.reading = BusyReading(6, 2, "active client backends", clock.now)
    read_for(2.0)
    assert len(started) == 2 and pacer.busy_episodes == 2


class FakeProbe:
    signal = "running threads"
    threshold = 2

    def __init__(self, values: list[int | None]) -> None:
        self.values = values
        self.asked = 0
        self.closed = False
        self.done = threading.Event()

    def sample(self) -> int | None:
        self.asked += 1
        value = self.values.pop(0) if self.values else None
        if not self.values:
            self.done.set()
        return value

    def close(self) -> None:
        self.closed = True


def test_a_sampler_that_cannot_sample_says_so_once_and_stops_asking() -> None:
    logged: list[dict[str, Any]] = []

    def capture(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        logged.append(event)
        raise structlog.DropEvent

    log = structlog.wrap_logger(None, processors=[capture])
    probe = FakeProbe([4, None])
    sampler = BusySampler(probe, log, interval=0.01).start()
    assert probe.done.wait(5)
    sampler._thread.join(5)
    assert not sampler._thread.is_alive()  # stopped on its own
    assert probe.asked == 2
    assert [event["event"] for event in logged] == ["backup.busy_unavailable"]
    assert logged[0]["error"] == "cannot sample"
    reading = sampler.latest()
    assert reading is not None and reading.value == 4  # the last good figure, while fresh
    sampler.close()
    assert probe.closed
