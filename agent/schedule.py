"""When jobs run: fire times for cron, interval and before-snapshots schedules (pure, `now` passed in).

Every function here takes its inputs (including the current time) and returns values; the daemon
drives APScheduler with them. All instants are timezone-aware UTC; local time appears only when a
cron expression or a snapshot time is read in its time zone.

Local-time rules (the same for cron and snapshot times):
- a local time that happens twice (clocks go back) fires once, at its first occurrence;
- a local time that does not exist (clocks go forward) fires once, at the instant the clocks jump
  (the first valid local time after it, e.g. 03:00 for a 02:30 job in Europe/Berlin).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

from agent.config import JobConfig, ScheduleKind, SnapshotsConfig

CRON: ScheduleKind = "cron"
INTERVAL: ScheduleKind = "interval"
BEFORE_SNAPSHOTS: ScheduleKind = "before-snapshots"

DEFAULT_MAX_JITTER = timedelta(minutes=5)
JITTER_SHARE_OF_PERIOD = 10  # the default jitter is at most a tenth of the gap between two runs
DEFAULT_DURATION_ESTIMATE = timedelta(minutes=15)
DURATION_PERCENTILE = 90
RECENT_DURATIONS_KEPT = 20

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_WALL_REFERENCE = datetime(2001, 1, 1, tzinfo=UTC)  # fixed, so a cron's default jitter never drifts
_LOOKBACKS = (timedelta(hours=3), timedelta(days=2), timedelta(days=33), timedelta(days=367),
              timedelta(days=366 * 9))  # fmt: skip
_SEARCH_LIMIT = 100_000


@dataclass(frozen=True, slots=True)
class Plan:
    """One job's schedule as data: what kind, its parameters, and the job's fixed jitter."""

    job: str
    kind: ScheduleKind
    jitter: timedelta
    cron: str | None = None
    every: timedelta | None = None
    timezone: str = "UTC"
    snapshot_times: tuple[time, ...] = ()
    margin: timedelta = timedelta(0)
    estimate: timedelta = DEFAULT_DURATION_ESTIMATE

    def describe(self) -> dict[str, str]:
        """The plan for a log line."""
        described = {"kind": self.kind, "timezone": self.timezone, "jitter": _seconds_text(self.jitter)}
        if self.cron is not None:
            described["cron"] = self.cron
        if self.every is not None:
            described["every"] = _seconds_text(self.every)
        if self.kind == BEFORE_SNAPSHOTS:
            described["snapshots"] = ",".join(moment.strftime("%H:%M") for moment in self.snapshot_times)
            described["margin"] = _seconds_text(self.margin)
            described["estimate"] = _seconds_text(self.estimate)
        return described


def _seconds_text(duration: timedelta) -> str:
    return f"{duration.total_seconds():g}s"


# --------------------------------------------------------------------------------------------------
# Building a plan


def plan_for(
    job: JobConfig, snapshots: SnapshotsConfig | None, host: str, durations: Sequence[float] = ()
) -> Plan | None:
    """The plan of a scheduled job, or None for a manual one; `durations` are recent run seconds."""
    schedule = job.schedule
    if schedule.kind == INTERVAL and schedule.every is not None:
        base = Plan(job.name, INTERVAL, timedelta(0), every=schedule.every)
    elif schedule.kind == CRON and schedule.cron is not None:
        base = Plan(job.name, CRON, timedelta(0), cron=schedule.cron, timezone=job.timezone)
    elif schedule.kind == BEFORE_SNAPSHOTS and snapshots is not None and snapshots.times:
        base = Plan(
            job.name,
            BEFORE_SNAPSHOTS,
            timedelta(0),
            timezone=snapshots.timezone,
            snapshot_times=snapshots.times,
            margin=snapshots.margin,
            estimate=estimate_duration(durations),
        )
    else:
        return None
    maximum = job.jitter if job.jitter is not None else default_max_jitter(base)
    return Plan(
        base.job,
        base.kind,
        jitter_for(host, job.name, maximum),
        base.cron,
        base.every,
        base.timezone,
        base.snapshot_times,
        base.margin,
        base.estimate,
    )


def default_max_jitter(plan: Plan) -> timedelta:
    """Five minutes, but never more than a tenth of the shortest gap between two runs.

    So `every = "6h"` spreads starts over 5 minutes while `every = "4s"` stays within 0.4 s.
    """
    return min(DEFAULT_MAX_JITTER, shortest_gap(plan) / JITTER_SHARE_OF_PERIOD)


def shortest_gap(plan: Plan) -> timedelta:
    """The shortest time between two consecutive runs of the plan (without jitter)."""
    if plan.kind == INTERVAL:
        assert plan.every is not None
        return plan.every
    if plan.kind == CRON:
        assert plan.cron is not None
        return _cron_shortest_gap(plan.cron)
    minutes = sorted(moment.hour * 60 + moment.minute for moment in plan.snapshot_times)
    gaps = [later - earlier for earlier, later in itertools.pairwise(minutes)]
    gaps.append(minutes[0] + 24 * 60 - minutes[-1])
    return timedelta(minutes=min(gaps))


@functools.lru_cache(maxsize=256)
def _cron_shortest_gap(cron: str) -> timedelta:
    trigger = _wall_trigger(cron)
    fires: list[datetime] = []
    cursor = _WALL_REFERENCE
    while len(fires) < 16:
        fire = trigger.get_next_fire_time(None, cursor)
        if fire is None:
            break
        fires.append(fire)
        cursor = fire + timedelta(seconds=1)
    gaps = [later - earlier for earlier, later in itertools.pairwise(fires)]
    return min(gaps, default=timedelta(days=1))


def jitter_for(host: str, job: str, maximum: timedelta) -> timedelta:
    """A fixed delay in [0, maximum) derived from host and job, so a node's jobs never start in step."""
    if maximum <= timedelta(0):
        return timedelta(0)
    digest = hashlib.sha256(f"{host}\0{job}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    microseconds = int(maximum / timedelta(microseconds=1) * fraction)
    return timedelta(milliseconds=microseconds // 1000)


def estimate_duration(durations: Sequence[float]) -> timedelta:
    """The 90th percentile (nearest rank) of recent successful run durations; 15 minutes without any."""
    usable = sorted(seconds for seconds in durations if seconds >= 0)
    if not usable:
        return DEFAULT_DURATION_ESTIMATE
    rank = math.ceil(DURATION_PERCENTILE / 100 * len(usable))
    return timedelta(seconds=usable[rank - 1])


# --------------------------------------------------------------------------------------------------
# Fire times


def first_fire_at_or_after(plan: Plan, now: datetime) -> datetime:
    """The first fire time at or after `now`."""
    return _fire_after(plan, now - timedelta(microseconds=1))


def next_fire_after(plan: Plan, after: datetime) -> datetime:
    """The first fire time strictly after `after`.

    For before-snapshots, `after` is taken as the previous start: the next start serves the
    snapshot after the one that run served, so one snapshot never gets two runs.
    """
    if plan.kind == INTERVAL:
        return _interval_next(plan, after)
    if plan.kind == CRON:
        return _cron_next(plan, after)
    return _snapshot_next(plan, after)


def previous_fire_at_or_before(plan: Plan, now: datetime) -> datetime | None:
    """The latest fire time at or before `now` (None if the plan never fired in the last nine years)."""
    if plan.kind == INTERVAL:
        return _interval_next(plan, now) - _every(plan)
    for lookback in _LOOKBACKS:
        fire = _fire_after(plan, now - lookback)
        if fire > now:
            continue
        for _ in range(_SEARCH_LIMIT):
            later = _fire_after(plan, fire)
            if later > now:
                return fire
            fire = later
    return None


def _fire_after(plan: Plan, after: datetime) -> datetime:
    """The first fire time strictly after `after`, whatever ran before (no snapshot bookkeeping)."""
    if plan.kind == BEFORE_SNAPSHOTS:
        return _snapshot_start_after(plan, after)
    return next_fire_after(plan, after)


# --- interval: aligned to the Unix epoch, so restarts never shift the schedule --------------------


def _every(plan: Plan) -> timedelta:
    assert plan.every is not None
    return plan.every


def _interval_next(plan: Plan, after: datetime) -> datetime:
    every = _every(plan) // timedelta(microseconds=1)
    elapsed = (after - plan.jitter - _EPOCH) // timedelta(microseconds=1)
    count = elapsed // every + 1
    return _EPOCH + timedelta(microseconds=count * every) + plan.jitter


# --- cron: wall-clock fire times, mapped to instants with the local-time rules ---------------------


@functools.lru_cache(maxsize=256)
def _wall_trigger(cron: str) -> CronTrigger:
    """The cron expression evaluated on wall-clock time written as if it were UTC (no DST at all)."""
    return CronTrigger.from_crontab(cron, timezone="UTC")


def _cron_next(plan: Plan, after: datetime) -> datetime:
    assert plan.cron is not None
    zone = ZoneInfo(plan.timezone)
    trigger = _wall_trigger(plan.cron)
    base_after = after - plan.jitter
    # a wall clock is at most a few hours off its instant's UTC reading; start safely before it
    cursor = wall_clock(base_after, zone).replace(tzinfo=UTC) - timedelta(hours=3)
    for _ in range(_SEARCH_LIMIT):
        fire = trigger.get_next_fire_time(None, cursor)
        if fire is None:
            break
        instant = local_to_instant(fire.replace(tzinfo=None), zone)
        if instant > base_after:
            return instant + plan.jitter
        cursor = fire + timedelta(seconds=1)
    raise ValueError(f"the cron expression {plan.cron!r} never fires")


def wall_clock(instant: datetime, zone: ZoneInfo) -> datetime:
    """The naive local wall-clock reading of an instant."""
    return instant.astimezone(zone).replace(tzinfo=None)


def local_to_instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant of a naive local time: its first occurrence, or the jump over a gap."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if wall_clock(first, zone) == wall:
        return first
    # inside a gap: fold=1 reads it with the offset after the jump, an instant before the jump
    low = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    high = first
    if low > high:
        low, high = high, low
    low_seconds, high_seconds = int(low.timestamp()), math.ceil(high.timestamp())
    while low_seconds + 1 < high_seconds:
        middle = (low_seconds + high_seconds) // 2
        if wall_clock(datetime.fromtimestamp(middle, UTC), zone) > wall:
            high_seconds = middle
        else:
            low_seconds = middle
    return datetime.fromtimestamp(high_seconds, UTC)


# --- before-snapshots: start = snapshot - margin - estimate - jitter --------------------------------


def snapshots_from(plan: Plan, after: datetime) -> Iterator[datetime]:
    """Snapshot instants in ascending order, from the local day before `after` on, without repeats."""
    zone = ZoneInfo(plan.timezone)
    day = wall_clock(after, zone).date() - timedelta(days=1)
    previous: datetime | None = None
    while True:
        for moment in plan.snapshot_times:
            instant = local_to_instant(datetime.combine(day, moment), zone)
            if previous is None or instant > previous:
                previous = instant
                yield instant
        day += timedelta(days=1)


def start_for_snapshot(plan: Plan, snapshot: datetime) -> datetime:
    """When a run must start to finish `margin` before `snapshot`, by the plan's estimate."""
    return snapshot - plan.margin - plan.estimate - plan.jitter


def _snapshot_start_after(plan: Plan, after: datetime) -> datetime:
    """The first start strictly after `after`, whichever snapshot it serves."""
    for snapshot in snapshots_from(plan, after - plan.estimate - plan.margin - plan.jitter):
        start = start_for_snapshot(plan, snapshot)
        if start > after:
            return start
    raise AssertionError("unreachable: snapshots never end")


def served_snapshot(plan: Plan, start: datetime) -> datetime:
    """The snapshot a run started at `start` lands in: the first one at or after its expected end."""
    expected_end = start + plan.margin + plan.estimate
    for snapshot in snapshots_from(plan, expected_end):
        if snapshot >= expected_end:
            return snapshot
    raise AssertionError("unreachable: snapshots never end")


def _snapshot_next(plan: Plan, previous_start: datetime) -> datetime:
    served = served_snapshot(plan, previous_start)
    for snapshot in snapshots_from(plan, served):
        if snapshot <= served:
            continue
        start = start_for_snapshot(plan, snapshot)
        if start > previous_start:
            return start
    raise AssertionError("unreachable: snapshots never end")


# --------------------------------------------------------------------------------------------------
# Catch-up


@dataclass(frozen=True, slots=True)
class CatchUp:
    """A run to start soon because the job's last good backup predates its last scheduled time."""

    run_at: datetime
    missed: datetime


def catch_up(plan: Plan, now: datetime, last_good: datetime | None) -> CatchUp | None:
    """Whether a starting daemon owes this job one run, and when (now + the job's jitter).

    Owed when the newest good backup on disk is older than the latest scheduled time (for an
    interval that is at most one interval ago): the node was down or the run failed. One run,
    however long the downtime; none when the regular schedule fires first anyway.
    """
    missed = previous_fire_at_or_before(plan, now)
    if missed is None or (last_good is not None and last_good >= missed):
        return None
    run_at = now + plan.jitter
    if next_fire_after(plan, now) <= run_at:
        return None
    return CatchUp(run_at, missed)
