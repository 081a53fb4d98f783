"""How far a running dump, restore or drill has got: bytes done, an estimated total, rate, time left.

A `Meter` counts the bytes of one stream and hands `Snapshot`s to its watchers, each at its own
pace: the CLI's terminal line (every half second, only on a terminal), the log's `*.progress` event
(every `log.progress_every`, five minutes by default), the status record. Per chunk it costs one
addition and one monotonic clock reading (no system call); a watcher runs only when one is due.
Nothing here prints or knows the CLI: the layers above hand their watchers down.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agent.units import format_size

TERMINAL_EVERY_SECONDS = 0.5  # the terminal line's redraw interval: lively, and cheap on a slow terminal


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One moment of one stream: `operation` is backup, restore or drill; `total_bytes` an estimate."""

    operation: str
    database: str
    done_bytes: int
    total_bytes: int | None
    elapsed_seconds: float
    finished: bool = False
    step: str = ""  # a step before the operation proper: "verifying" the stored file before a restore

    @property
    def rate(self) -> float:
        """Bytes per second since the start (0 before any time has passed)."""
        return self.done_bytes / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    @property
    def expected_bytes(self) -> int | None:
        """The estimated total while it still can be right: an estimate already passed says nothing."""
        if self.total_bytes is None or self.total_bytes <= 0 or self.done_bytes > self.total_bytes:
            return None
        return self.total_bytes

    @property
    def remaining_seconds(self) -> float | None:
        """Time left at the rate so far, when both the total and a rate are known."""
        expected, rate = self.expected_bytes, self.rate
        if expected is None or rate <= 0:
            return None
        return (expected - self.done_bytes) / rate

    def log_fields(self) -> dict[str, Any]:
        """The fields of a `*.progress` log event."""
        return {
            **({"step": self.step} if self.step else {}),
            "database": self.database,
            "bytes": self.done_bytes,
            "expected_bytes": self.expected_bytes,
            "rate_bytes_per_second": round(self.rate),
            "elapsed_seconds": round(self.elapsed_seconds, 1),
        }


def clock_text(seconds: float) -> str:
    """`m:ss`, or `h:mm:ss` from an hour on."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, second = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{second:02d}" if hours else f"{minutes}:{second:02d}"


def describe(snapshot: Snapshot) -> str:
    """The terminal line: `backup shop: 12 MiB of ~40 MiB (30%), 4.1 MiB/s, 0:03 elapsed, ~0:07 left`."""
    done = format_size(snapshot.done_bytes)
    expected = snapshot.expected_bytes
    if expected is not None:
        done += f" of ~{format_size(expected)} ({snapshot.done_bytes * 100 // expected}%)"
    parts = [done]
    if snapshot.elapsed_seconds >= TERMINAL_EVERY_SECONDS:  # a rate over the first chunk alone means nothing
        parts.append(f"{format_size(round(snapshot.rate))}/s")
    parts.append(f"{clock_text(snapshot.elapsed_seconds)} elapsed")
    remaining = snapshot.remaining_seconds
    if remaining is not None and snapshot.elapsed_seconds >= TERMINAL_EVERY_SECONDS:
        parts.append(f"~{clock_text(remaining)} left")
    step = f" ({snapshot.step})" if snapshot.step else ""
    return f"{snapshot.operation} {snapshot.database}{step}: " + ", ".join(parts)


class Watcher(Protocol):
    """Told about one stream's progress at most every `every` seconds (and at its first chunk when
    `at_start`), and once at its end."""

    @property
    def every(self) -> float: ...

    @property
    def at_start(self) -> bool: ...

    def update(self, snapshot: Snapshot) -> None: ...

    def finish(self, snapshot: Snapshot) -> None: ...


class LogWatcher:
    """Logs `<operation>.progress` every `every` seconds of a stream (`log.progress_every`); nothing
    at its end (the operation's own `finished` or `failed` event says that)."""

    at_start = False

    def __init__(self, log: Any, every: float) -> None:
        self._log = log
        self.every = every

    def update(self, snapshot: Snapshot) -> None:
        self._log.info(f"{snapshot.operation}.progress", **snapshot.log_fields())

    def finish(self, snapshot: Snapshot) -> None:
        return None


class CallbackWatcher:
    """A watcher made of one function, called with the bytes done every `every` seconds."""

    at_start = False

    def __init__(self, every: float, update: Callable[[int], None]) -> None:
        self.every = every
        self._update = update

    def update(self, snapshot: Snapshot) -> None:
        self._update(snapshot.done_bytes)

    def finish(self, snapshot: Snapshot) -> None:
        return None


class Meter:
    """Counts one stream's bytes; `advance` is the per-chunk call, cheap until a watcher is due.

    A watcher `at_start` sees the first chunk (a person sees the stream has started), then each
    watcher is told at its own interval.
    """

    def __init__(
        self,
        operation: str,
        database: str,
        total_bytes: int | None,
        watchers: Sequence[Watcher],
        *,
        clock: Callable[[], float],
        step: str = "",
    ) -> None:
        self.operation, self.database, self.total_bytes, self.step = operation, database, total_bytes, step
        self.done_bytes = 0
        self._watchers = list(watchers)
        self._clock = clock
        self._started = clock()
        self._due = [self._started + (0.0 if watcher.at_start else watcher.every) for watcher in self._watchers]
        self._next = min(self._due, default=float("inf"))
        self._finished = False

    def advance(self, byte_count: int) -> None:
        self.done_bytes += byte_count
        now = self._clock()
        if now >= self._next:
            self._tell(now)

    def snapshot(self, now: float | None = None, *, finished: bool = False) -> Snapshot:
        moment = self._clock() if now is None else now
        return Snapshot(
            self.operation,
            self.database,
            self.done_bytes,
            self.total_bytes,
            moment - self._started,
            finished,
            self.step,
        )

    def _tell(self, now: float) -> None:
        snapshot = self.snapshot(now)
        for index, watcher in enumerate(self._watchers):
            if now >= self._due[index]:
                self._due[index] = now + watcher.every
                watcher.update(snapshot)
        self._next = min(self._due, default=float("inf"))

    def __enter__(self) -> Meter:
        return self

    def __exit__(self, *_exception: object) -> None:
        self.finish()

    def finish(self) -> None:
        """The stream is over (done, failed or stopped): every watcher hears it once."""
        if self._finished:
            return
        self._finished = True
        snapshot = self.snapshot(finished=True)
        for watcher in self._watchers:
            watcher.finish(snapshot)


def counted(chunks: Iterable[bytes], meter: Meter) -> Iterator[bytes]:
    """`chunks`, each counted by `meter` as it is handed on; the meter finishes when they end or the
    consumer stops early."""
    try:
        for chunk in chunks:
            meter.advance(len(chunk))
            yield chunk
    finally:
        meter.finish()
