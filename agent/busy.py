"""The database's own load, sampled beside a dump, so a gentle dump slows while the application works.

Each engine that can tell (agent/engines/*/busy.py) opens its own connection, with the job's
credentials and the engine's trust checks, and counts the application's work in progress, the
dump's own sessions left out: PostgreSQL's active client backends, MySQL/MariaDB's running
threads, MongoDB's queued operations. `BusySampler` asks it every `interval` seconds on a side
thread, so a slow answer never holds up the read loop; the `Pacer` (agent/pressure.py) reads the
latest figure without waiting. The decisions are the pure functions below.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from structlog.stdlib import BoundLogger

SAMPLE_INTERVAL = 1.0  # seconds between two samples: one small query a second, on its own connection
STALE_AFTER = 5.0  # seconds: an older sample (a hung sampler) says nothing about now
QUIET_SECONDS = 10.0  # an episode ends after this long at or under the threshold
CLOSE_WAIT = 2.0  # seconds close() waits for a sample in flight (the thread is a daemon thread)


class BusyProbe(Protocol):
    """An engine's count of the application's work in progress, on a connection of its own."""

    signal: str  # what is counted, for the log ("active client backends")
    threshold: int  # above this the database is busy

    def sample(self) -> int | None:
        """The figure now; None when the server cannot tell (logged once by the sampler)."""

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class BusyReading:
    value: int
    threshold: int
    signal: str
    taken_at: float  # monotonic seconds

    @property
    def over(self) -> bool:
        return self.value > self.threshold


def current_reading(reading: BusyReading | None, now: float, stale_after: float = STALE_AFTER) -> BusyReading | None:
    """The reading if it is recent enough to pace by, else None (no figure: no busy pacing)."""
    if reading is None or now - reading.taken_at > stale_after:
        return None
    return reading


@dataclass(frozen=True, slots=True)
class Episode:
    """A stretch of time the database was over its threshold, with its quiet tail."""

    active: bool = False
    last_over: float = 0.0  # monotonic seconds of the last reading over the threshold


def next_episode(episode: Episode, over: bool, now: float, quiet: float = QUIET_SECONDS) -> tuple[Episode, bool]:
    """The episode after one reading, and whether a new one started (the moment to log it once)."""
    if over:
        return Episode(True, now), not episode.active
    if episode.active and now - episode.last_over >= quiet:
        return Episode(False, episode.last_over), False
    return episode, False


class BusySampler:
    """Samples a `BusyProbe` every `interval` seconds on a daemon thread until closed."""

    def __init__(
        self,
        probe: BusyProbe,
        log: BoundLogger,
        interval: float = SAMPLE_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probe = probe
        self._log = log
        self._interval = interval
        self._clock = clock
        self._latest: BusyReading | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="busy-sampler", daemon=True)

    @property
    def signal(self) -> str:
        return self._probe.signal

    def start(self) -> BusySampler:
        self._thread.start()
        return self

    def latest(self) -> BusyReading | None:
        """The newest reading if still fresh; never waits for the sampler."""
        return current_reading(self._latest, self._clock())

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                value = self._probe.sample()
            except Exception as error:  # a lost connection or a refused query: pace by pressure alone
                self._log.warning("backup.busy_unavailable", signal=self._probe.signal, error=str(error))
                return
            if value is None:  # the server does not report the figure: no use asking again
                self._log.info("backup.busy_unavailable", signal=self._probe.signal, error="cannot sample")
                return
            self._latest = BusyReading(value, self._probe.threshold, self._probe.signal, self._clock())
            self._stop.wait(self._interval)

    def close(self) -> None:
        """Stop sampling and close the probe's connection (waits at most for one sample)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=CLOSE_WAIT)  # a hung query never holds up the run or a shutdown
        try:
            self._probe.close()
        except Exception as error:  # a connection already gone: nothing left to close
            self._log.debug("backup.busy_close_failed", error=str(error))
