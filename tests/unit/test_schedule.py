"""The schedule planner: when each job runs, with `now` passed in (no clocks, no scheduler)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import Config, parse_config
from agent.daemon import PlanTrigger
from agent.schedule import (
    DEFAULT_DURATION_ESTIMATE,
    CatchUp,
    Plan,
    catch_up,
    estimate_duration,
    first_fire_at_or_after,
    jitter_for,
    local_to_instant,
    next_fire_after,
    plan_for,
    previous_fire_at_or_before,
    start_for_snapshot,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
HOST = "db-host-1"


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def local(zone: ZoneInfo, *parts: int) -> datetime:
    return datetime(*parts, tzinfo=zone)  # type: ignore[misc]


def cron(expression: str, timezone: str = "UTC", jitter: timedelta = timedelta(0)) -> Plan:
    return Plan("main", "cron", jitter, cron=expression, timezone=timezone)


def interval(every: timedelta, jitter: timedelta = timedelta(0)) -> Plan:
    return Plan("main", "interval", jitter, every=every)


def fires(plan: Plan, after: datetime, count: int) -> list[datetime]:
    """The first `count` fire times strictly after `after`, each found from the one before it."""
    moments = [first_fire_at_or_after(plan, after + timedelta(microseconds=1))]
    while len(moments) < count:
        moments.append(next_fire_after(plan, moments[-1]))
    return moments


def config(job_body: str, extra: str = "") -> Config:
    text = (
        '[storage]\npath = "/var/backups/db"\n'
        + extra
        + f'\n[jobs.main]\nengine = "postgresql"\ndatabases = "*"\n{job_body}\n'
    )
    return parse_config(text, Path("/etc/backup-agent/config.toml"))


def plan_of(job_body: str, extra: str = "", durations: tuple[float, ...] = (), host: str = HOST) -> Plan:
    parsed = config(job_body, extra)
    plan = plan_for(parsed.jobs["main"], parsed.snapshots, host, durations)
    assert plan is not None
    return plan


# ------------------------------------------------------------------------------------------------
# Cron in a time zone, across both DST changes


def test_a_0230_berlin_job_runs_at_0300_on_the_night_the_clocks_skip_0230() -> None:
    plan = cron("30 2 * * *", "Europe/Berlin")
    moments = fires(plan, local(BERLIN, 2026, 3, 27, 12, 0), 4)
    assert [moment.astimezone(BERLIN).strftime("%m-%d %H:%M %Z") for moment in moments] == [
        "03-28 02:30 CET",
        "03-29 03:00 CEST",  # 02:30 does not exist that night: the first valid time after it
        "03-30 02:30 CEST",
        "03-31 02:30 CEST",
    ]
    assert moments[1] == utc(2026, 3, 29, 1, 0)


def test_a_0230_berlin_job_runs_once_on_the_night_0230_happens_twice() -> None:
    plan = cron("30 2 * * *", "Europe/Berlin")
    moments = fires(plan, local(BERLIN, 2026, 10, 23, 12, 0), 4)
    assert moments == [
        utc(2026, 10, 24, 0, 30),
        utc(2026, 10, 25, 0, 30),  # the first 02:30 (CEST); the second one (01:30 UTC) is not a run
        utc(2026, 10, 26, 1, 30),
        utc(2026, 10, 27, 1, 30),
    ]


def test_every_time_inside_the_skipped_hour_becomes_one_run_at_the_jump() -> None:
    plan = cron("*/15 2 * * *", "Europe/Berlin")
    moments = fires(plan, local(BERLIN, 2026, 3, 28, 12, 0), 3)
    assert moments[0] == local(BERLIN, 2026, 3, 29, 3, 0)
    assert moments[1] == local(BERLIN, 2026, 3, 30, 2, 0)
    assert moments[2] == local(BERLIN, 2026, 3, 30, 2, 15)


def test_a_half_hourly_job_never_repeats_a_local_time_when_the_clocks_go_back() -> None:
    plan = cron("*/30 * * * *", "Europe/Berlin")
    moments = fires(plan, utc(2026, 10, 24, 23, 0), 6)
    walls = [moment.astimezone(BERLIN).strftime("%H:%M") for moment in moments]
    assert walls == ["01:30", "02:00", "02:30", "03:00", "03:30", "04:00"]
    assert moments[2] == utc(2026, 10, 25, 0, 30)  # 02:30 CEST, its first occurrence
    assert moments[3] == utc(2026, 10, 25, 2, 0)  # 03:00 CET: the repeated hour is not run again


def test_each_zone_follows_its_own_dst_dates() -> None:
    # New York: 2026-03-08 02:00 -> 03:00; 2026-11-01 02:00 -> 01:00 (01:00-01:59 happens twice)
    spring = fires(cron("30 2 * * *", "America/New_York"), local(NEW_YORK, 2026, 3, 7, 12, 0), 2)
    autumn = fires(cron("30 1 * * *", "America/New_York"), local(NEW_YORK, 2026, 10, 31, 12, 0), 2)
    assert spring == [local(NEW_YORK, 2026, 3, 8, 3, 0), local(NEW_YORK, 2026, 3, 9, 2, 30)]
    assert autumn == [utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)]  # 01:30 EDT once, then 01:30 EST


def test_a_job_without_a_time_zone_runs_on_utc() -> None:
    plan = plan_of('schedule = "0 */6 * * *"\njitter = "0s"')
    assert plan.timezone == "UTC"
    assert fires(plan, utc(2026, 3, 29, 0, 30), 3) == [
        utc(2026, 3, 29, 6),
        utc(2026, 3, 29, 12),
        utc(2026, 3, 29, 18),
    ]


def test_cron_days_of_week_mean_what_cron_means() -> None:
    plan = plan_of('schedule = "0 3 * * 1"\njitter = "0s"')  # 1 is Monday in cron
    moment = next_fire_after(plan, utc(2026, 11, 26))  # a Thursday
    assert moment == utc(2026, 11, 30, 3)
    assert moment.weekday() == 0


def test_a_gap_time_maps_to_the_instant_the_clocks_jump() -> None:
    # local_to_instant takes a naive wall-clock time on purpose: the zone comes separately
    assert local_to_instant(datetime(2026, 3, 29, 2, 0), BERLIN) == utc(2026, 3, 29, 1, 0)  # noqa: DTZ001
    assert local_to_instant(datetime(2026, 3, 29, 2, 59), BERLIN) == utc(2026, 3, 29, 1, 0)  # noqa: DTZ001
    assert local_to_instant(datetime(2026, 10, 25, 2, 30), BERLIN) == utc(2026, 10, 25, 0, 30)  # noqa: DTZ001


_ZONES = ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "UTC"]
_CRONS = ["30 2 * * *", "*/30 * * * *", "0 * * * *", "15 1-3 * * *", "0 0 * * sun", "5 */6 * * *"]


@settings(max_examples=60, deadline=None)
@given(
    zone=st.sampled_from(_ZONES),
    expression=st.sampled_from(_CRONS),
    # hypothesis takes naive bounds and attaches the zone from `timezones`
    start=st.datetimes(
        min_value=datetime(2026, 1, 1),  # noqa: DTZ001
        max_value=datetime(2027, 12, 31),  # noqa: DTZ001
        timezones=st.just(UTC),
    ),
)
def test_fire_times_always_move_forward_and_never_repeat_a_local_time(
    zone: str, expression: str, start: datetime
) -> None:
    plan = cron(expression, zone)
    moments = fires(plan, start, 30)
    assert moments[0] > start
    assert all(earlier < later for earlier, later in itertools.pairwise(moments))
    walls = [moment.astimezone(ZoneInfo(zone)).replace(tzinfo=None) for moment in moments]
    assert len(set(walls)) == len(walls)
    assert first_fire_at_or_after(plan, moments[3]) == moments[3]
    assert previous_fire_at_or_before(plan, moments[5] + timedelta(seconds=1)) == moments[5]


# ------------------------------------------------------------------------------------------------
# Intervals


def test_interval_runs_are_aligned_to_the_clock_so_a_restart_keeps_the_same_times() -> None:
    plan = interval(timedelta(hours=6))
    assert fires(plan, utc(2026, 5, 1, 7, 13), 3) == [utc(2026, 5, 1, 12), utc(2026, 5, 1, 18), utc(2026, 5, 2)]
    assert next_fire_after(plan, utc(2026, 5, 1, 12)) == utc(2026, 5, 1, 18)  # strictly after
    assert first_fire_at_or_after(plan, utc(2026, 5, 1, 12)) == utc(2026, 5, 1, 12)


def test_a_four_second_interval_fires_every_four_seconds() -> None:
    plan = plan_of('every = "4s"')
    moments = fires(plan, utc(2026, 5, 1, 7, 13, 1), 5)
    assert {later - earlier for earlier, later in itertools.pairwise(moments)} == {timedelta(seconds=4)}
    assert moments[0] - utc(2026, 5, 1, 7, 13, 1) <= timedelta(seconds=4)


# ------------------------------------------------------------------------------------------------
# Jitter


def test_jitter_is_the_same_for_the_same_host_and_job_every_time() -> None:
    first = plan_of('every = "6h"').jitter
    assert plan_of('every = "6h"').jitter == first
    assert jitter_for(HOST, "main", timedelta(minutes=5)) == first


def test_jitter_differs_between_hosts_so_they_do_not_start_together() -> None:
    jitters = {jitter_for(f"host-{index}", "main", timedelta(minutes=5)) for index in range(50)}
    assert len(jitters) > 40


@given(host=st.text(max_size=30), job=st.text(min_size=1, max_size=30), seconds=st.integers(0, 100_000))
def test_jitter_stays_below_its_maximum(host: str, job: str, seconds: int) -> None:
    maximum = timedelta(seconds=seconds)
    value = jitter_for(host, job, maximum)
    assert timedelta(0) <= value <= maximum
    if seconds:
        assert value < maximum


def test_default_jitter_is_at_most_five_minutes_and_a_tenth_of_a_short_period() -> None:
    assert timedelta(0) < plan_of('every = "6h"').jitter < timedelta(minutes=5)
    assert plan_of('every = "4s"').jitter < timedelta(milliseconds=400)
    assert plan_of('schedule = "*/5 * * * *"').jitter < timedelta(seconds=30)
    assert plan_of('schedule = "0 3 * * *"').jitter < timedelta(minutes=5)


def test_a_configured_jitter_is_the_maximum_and_zero_turns_it_off() -> None:
    assert plan_of('every = "6h"\njitter = "0s"').jitter == timedelta(0)
    assert timedelta(0) < plan_of('every = "6h"\njitter = "1h"').jitter < timedelta(hours=1)


def test_jitter_delays_every_run_of_a_job_by_the_same_amount() -> None:
    jittered = cron("0 3 * * *", "Europe/Berlin", timedelta(seconds=97))
    plain = cron("0 3 * * *", "Europe/Berlin")
    start = utc(2026, 3, 27)
    assert fires(jittered, start, 5) == [moment + timedelta(seconds=97) for moment in fires(plain, start, 5)]


# ------------------------------------------------------------------------------------------------
# Catch-up on start


def test_a_job_never_backed_up_runs_soon_after_start() -> None:
    plan = cron("0 3 * * *", jitter=timedelta(seconds=40))
    now = utc(2026, 6, 1, 12)
    assert catch_up(plan, now, last_good=None) == CatchUp(now + timedelta(seconds=40), utc(2026, 6, 1, 3, 0, 40))


def test_a_node_down_over_the_scheduled_time_gets_one_run_soon() -> None:
    plan = cron("0 3 * * *")
    owed = catch_up(plan, utc(2026, 6, 1, 12), last_good=utc(2026, 5, 31, 3, 0, 5))
    assert owed is not None
    assert owed.run_at == utc(2026, 6, 1, 12)
    assert owed.missed == utc(2026, 6, 1, 3)


def test_a_job_whose_last_scheduled_run_succeeded_is_not_run_again_on_start() -> None:
    plan = cron("0 3 * * *")
    assert catch_up(plan, utc(2026, 6, 1, 12), last_good=utc(2026, 6, 1, 3, 0, 2)) is None


def test_after_a_month_of_downtime_there_is_still_exactly_one_catch_up_run() -> None:
    plan = cron("0 * * * *")
    now = utc(2026, 7, 1, 12, 30)
    owed = catch_up(plan, now, last_good=utc(2026, 6, 1))
    assert owed == CatchUp(now, utc(2026, 7, 1, 12))  # a single run, for the latest missed time


def test_an_interval_job_catches_up_when_its_last_backup_is_older_than_the_interval() -> None:
    plan = interval(timedelta(hours=6))
    now = utc(2026, 6, 1, 13)
    assert catch_up(plan, now, last_good=utc(2026, 6, 1, 5)) is not None  # 8h old
    assert catch_up(plan, now, last_good=utc(2026, 6, 1, 12, 0, 1)) is None  # 1h old


def test_no_catch_up_when_the_regular_run_comes_before_it() -> None:
    plan = cron("0 3 * * *", jitter=timedelta(minutes=4))
    now = utc(2026, 6, 1, 3, 1)  # the 03:04 run is due in 3 minutes; a catch-up would be at 03:05
    assert catch_up(plan, now, last_good=None) is None


def test_the_trigger_starts_with_the_catch_up_then_follows_the_plan() -> None:
    plan = cron("0 3 * * *")
    now = utc(2026, 6, 1, 12)
    trigger = PlanTrigger(lambda: plan, catch_up_at=now)
    assert trigger.get_next_fire_time(None, now) == now
    assert trigger.get_next_fire_time(now, now) == utc(2026, 6, 2, 3)


def test_the_trigger_returns_only_the_latest_missed_time_after_a_long_pause() -> None:
    plan = interval(timedelta(seconds=2))
    trigger = PlanTrigger(lambda: plan)
    resumed = utc(2026, 6, 1, 12, 0, 1)
    assert trigger.get_next_fire_time(utc(2026, 5, 1), resumed) == utc(2026, 6, 1, 12)
    assert trigger.get_next_fire_time(utc(2026, 6, 1, 12), resumed) == utc(2026, 6, 1, 12, 0, 2)


# ------------------------------------------------------------------------------------------------
# Before-snapshots


SNAPSHOTS = '[snapshots]\ntimes = ["00:00", "06:00", "12:00", "18:00"]\nmargin = "30m"\n'


def test_p90_of_recent_durations_is_the_estimate() -> None:
    assert estimate_duration([float(value) for value in range(1, 11)]) == timedelta(seconds=9)
    assert estimate_duration([300.0]) == timedelta(seconds=300)
    assert estimate_duration([10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 900.0]) == timedelta(seconds=10)
    assert estimate_duration([10.0] * 8 + [900.0] * 2) == timedelta(seconds=900)


def test_without_history_the_estimate_is_fifteen_minutes() -> None:
    assert estimate_duration([]) == DEFAULT_DURATION_ESTIMATE == timedelta(minutes=15)
    plan = plan_of('schedule = "before-snapshots"\njitter = "0s"', SNAPSHOTS)
    assert first_fire_at_or_after(plan, utc(2026, 6, 1, 1)) == utc(2026, 6, 1, 5, 15)  # 06:00 - 30m - 15m


def test_a_job_starts_so_it_finishes_the_margin_before_each_snapshot() -> None:
    plan = plan_of('schedule = "before-snapshots"\njitter = "0s"', SNAPSHOTS, durations=(100.0, 120.0, 600.0))
    assert plan.estimate == timedelta(minutes=10)
    assert fires(plan, utc(2026, 6, 1, 1), 4) == [
        utc(2026, 6, 1, 5, 20),
        utc(2026, 6, 1, 11, 20),
        utc(2026, 6, 1, 17, 20),
        utc(2026, 6, 1, 23, 20),
    ]


def test_jitter_makes_a_before_snapshots_job_start_earlier_never_later() -> None:
    plan = plan_of('schedule = "before-snapshots"', SNAPSHOTS, durations=(600.0,))
    snapshot = utc(2026, 6, 1, 6)
    start = first_fire_at_or_after(plan, utc(2026, 6, 1, 1))
    assert start == start_for_snapshot(plan, snapshot)
    assert snapshot - timedelta(minutes=45) < start <= snapshot - timedelta(minutes=40)


def test_a_shorter_estimate_after_a_run_does_not_run_again_for_the_same_snapshot() -> None:
    slow = plan_of('schedule = "before-snapshots"\njitter = "0s"', SNAPSHOTS)  # 15 minutes assumed
    first = first_fire_at_or_after(slow, utc(2026, 6, 1, 1))
    assert first == utc(2026, 6, 1, 5, 15)
    fast = plan_of('schedule = "before-snapshots"\njitter = "0s"', SNAPSHOTS, durations=(20.0,))
    assert next_fire_after(fast, first) == utc(2026, 6, 1, 11, 29, 40)  # for 12:00, not 06:00 again


def test_snapshot_times_follow_their_time_zone_across_dst() -> None:
    extra = '[snapshots]\ntimes = ["02:30"]\ntimezone = "Europe/Berlin"\nmargin = "10m"\n'
    plan = plan_of('schedule = "before-snapshots"\njitter = "0s"', extra, durations=(300.0,))
    starts = fires(plan, local(BERLIN, 2026, 3, 27, 12), 3)
    assert starts == [
        local(BERLIN, 2026, 3, 28, 2, 15),
        utc(2026, 3, 29, 0, 45),  # 15 minutes before 03:00 CEST: the 02:30 snapshot fires at the jump
        local(BERLIN, 2026, 3, 30, 2, 15),
    ]


def test_a_late_start_still_owes_a_run_before_the_next_snapshot() -> None:
    plan = plan_of('schedule = "before-snapshots"\njitter = "0s"', SNAPSHOTS, durations=(600.0,))
    now = utc(2026, 6, 1, 5, 25)  # 5 minutes after the planned 05:20 start for 06:00
    owed = catch_up(plan, now, last_good=utc(2026, 6, 1, 0, 1))
    assert owed == CatchUp(now, utc(2026, 6, 1, 5, 20))


def test_manual_jobs_have_no_plan() -> None:
    parsed = config("")
    assert plan_for(parsed.jobs["main"], parsed.snapshots, HOST) is None


def test_a_plan_describes_itself_for_the_log() -> None:
    described = plan_of('schedule = "before-snapshots"\njitter = "0s"', SNAPSHOTS).describe()
    assert described == {
        "kind": "before-snapshots",
        "timezone": "UTC",
        "jitter": "0s",
        "snapshots": "00:00,06:00,12:00,18:00",
        "margin": "1800s",
        "estimate": "900s",
    }


@pytest.mark.parametrize("times", [("06:00",), ("00:00", "23:59"), ("03:00", "09:00", "15:00")])
def test_every_before_snapshots_start_is_followed_by_its_snapshot_after_the_estimate_and_margin(
    times: tuple[str, ...],
) -> None:
    extra = f'[snapshots]\ntimes = {list(times)!r}\nmargin = "30m"\n'.replace("'", '"')
    plan = plan_of('schedule = "before-snapshots"', extra, durations=(1200.0,))
    snapshot_clock = {time.fromisoformat(text) for text in times}
    for start in fires(plan, utc(2026, 6, 1), 8):
        lands = (start + plan.jitter + plan.margin + plan.estimate).astimezone(UTC)
        assert lands.time().replace(second=0, microsecond=0) in snapshot_clock
