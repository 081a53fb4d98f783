"""Pacing a dump by the machine's contention (Linux pressure stall information).

A slower reader slows the whole chain: the dump tool blocks on its full pipe and the server's
COPY/SELECT backend on its full socket, so the CPU the server spends on the dump falls with the
rate the agent reads. The `Pacer` pauses after each chunk for a share of the time the dump has
been running, raising that share while CPU or I/O pressure is high and lowering it while it is
low; the share never passes `max_share`, so a paced dump takes at most 1 / (1 - max_share) of
its unpaced time (2x at 0.5). The pressure is the cgroup's own (cgroup v2 `cpu.pressure`: the
container, not its neighbours), else the whole machine's (/proc/pressure); without PSI the share
stays at `min_share`. While the database itself is over its busy threshold (agent/busy.py) the
share rises too, up to `busy_max_share`: the application's queries need the server more than the
dump does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent.busy import BusyReading, Episode, next_episode
from agent.limits import cgroup_directories, parse_mountinfo, parse_proc_cgroup


@dataclass(frozen=True, slots=True)
class PacingSettings:
    high: float = 0.30  # stall share above which the pacer slows the dump further
    low: float = 0.10  # stall share below which it speeds up again
    step: float = 0.10  # change of the pause share per interval
    min_share: float = 0.0
    max_share: float = 0.5
    busy_max_share: float = 0.75  # while the database is busy: a paced dump takes at most 4x its time
    interval: float = 0.5  # seconds between pressure readings
    longest_pause: float = 1.0  # seconds; the stall watchdog and shutdown stay responsive


def parse_stall_total(text: str) -> int | None:
    """The `some ... total=MICROSECONDS` counter of a pressure file (/proc/pressure/cpu)."""
    for line in text.splitlines():
        if line.startswith("some "):
            for field in line.split()[1:]:
                name, _, value = field.partition("=")
                if name == "total":
                    return int(value)
    return None


def next_share(share: float, pressure: float | None, settings: PacingSettings, *, busy: bool = False) -> float:
    """The pause share for the next interval, from the stall share of the last one and whether
    the database is over its busy threshold (which raises it, pressure or not)."""
    if busy:
        return min(settings.busy_max_share, max(settings.min_share, share + settings.step))
    if pressure is None:
        return settings.min_share
    if pressure > settings.high:
        share += settings.step
    elif pressure < settings.low:
        share -= settings.step
    return min(settings.max_share, max(settings.min_share, share))


def pause_for(share: float, active_seconds: float) -> float:
    """The pause that makes `share` of the wall time since the last pause a pause."""
    if share <= 0 or active_seconds <= 0:
        return 0.0
    return active_seconds * share / (1 - share)


class StallGauge:
    """The share of wall time some task stalled, between two readings of pressure files."""

    def __init__(self, paths: Sequence[Path], clock: Callable[[], float] = time.monotonic) -> None:
        self._paths = list(paths)
        self._clock = clock
        self._last: list[tuple[float, int] | None] = [self._read(path) for path in self._paths]

    def _read(self, path: Path) -> tuple[float, int] | None:
        try:
            total = parse_stall_total(path.read_text())
        except (OSError, ValueError):
            return None
        return None if total is None else (self._clock(), total)

    @property
    def available(self) -> bool:
        return any(last is not None for last in self._last)

    def sample(self) -> float | None:
        """The largest stall share (CPU or I/O) since the last sample; None without PSI."""
        shares: list[float] = []
        for index, path in enumerate(self._paths):
            now, before = self._read(path), self._last[index]
            self._last[index] = now
            if now is None or before is None or now[0] <= before[0]:
                continue
            shares.append((now[1] - before[1]) / 1e6 / (now[0] - before[0]))
        return max(shares) if shares else None


def pressure_files(proc: Path = Path("/proc")) -> list[Path]:
    """cpu and io pressure of this process's cgroup v2 when the kernel has them there, else the system's."""
    try:
        mounts = parse_mountinfo((proc / "self" / "mountinfo").read_text())
        unified = parse_proc_cgroup((proc / "self" / "cgroup").read_text()).get("")
    except OSError:
        mounts, unified = [], None
    if unified is not None:
        for mount in mounts:
            if mount.version != 2:
                continue
            folders = cgroup_directories(mount, unified)
            if folders and (folders[0] / "cpu.pressure").exists():
                return [folders[0] / "cpu.pressure", folders[0] / "io.pressure"]
    return [proc / "pressure" / "cpu", proc / "pressure" / "io"]


class BusySource(Protocol):
    def latest(self) -> BusyReading | None: ...


class Pacer:
    """Called after each chunk of a dump; returns how long to pause before reading the next.

    `busy` (a running `agent.busy.BusySampler`) adds the database's own load; `on_busy` is called
    once when an episode of it starts, from the reading thread, to log it.
    """

    def __init__(
        self,
        gauge: StallGauge,
        settings: PacingSettings = PacingSettings(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gauge = gauge
        self.settings = settings
        self._clock = clock
        self.share = settings.min_share
        self._next_reading = self._active_since = clock()
        self.paused_seconds = 0.0
        self.highest_share = self.share
        self.pressures: list[float] = []
        self.busy: BusySource | None = None
        self.on_busy: Callable[[BusyReading], None] | None = None
        self.busy_paused_seconds = 0.0
        self.busy_episodes = 0
        self._episode = Episode()
        self.restart()

    def restart(self) -> None:
        """At the start of each stream: the time before it (probe, counts) is not the dump's."""
        now = self._clock()
        self._active_since = now
        self._next_reading = now + self.settings.interval
        self.gauge.sample()

    def pause(self) -> float:
        now = self._clock()
        if now >= self._next_reading:
            self._next_reading = now + self.settings.interval
            pressure = self.gauge.sample()
            if pressure is not None:
                self.pressures.append(pressure)
            self.share = next_share(self.share, pressure, self.settings, busy=self._database_busy(now))
            self.highest_share = max(self.highest_share, self.share)
        seconds = min(self.settings.longest_pause, pause_for(self.share, now - self._active_since))
        self._active_since = now + seconds
        self.paused_seconds += seconds
        if self._episode.active:
            self.busy_paused_seconds += seconds
        return seconds

    def _database_busy(self, now: float) -> bool:
        reading = self.busy.latest() if self.busy is not None else None
        over = reading is not None and reading.over
        self._episode, started = next_episode(self._episode, over, now)
        if started and reading is not None:
            self.busy_episodes += 1
            if self.on_busy is not None:
                self.on_busy(reading)
        return over


def new_pacer(settings: PacingSettings = PacingSettings()) -> Pacer:
    return Pacer(StallGauge(pressure_files()), settings)
