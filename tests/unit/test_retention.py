"""The retention planner: GFS periods in the job's time zone, the floor, pins, max_age, and the budget."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.budget import (
    CONTENDED,
    DELETE,
    MIB,
    WRITE,
    Budget,
    DiskFigures,
    Prediction,
    check_interval,
    in_flight_room,
    predict,
    resolve_budget,
    shortfall,
)
from agent.config import RetentionPolicy, StorageConfig
from agent.retention import Backup, Plan, Series, plan
from agent.units import SizeSpec

ROOMY = DiskFigures(total_bytes=10**12, free_bytes=10**12, usage_bytes=0)
NO_LIMIT = Budget(reserve_bytes=0, max_usage_bytes=None)
ONLY = RetentionPolicy(keep_daily=None, keep_weekly=None, keep_monthly=None, keep_min=1)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def backups(*moments: str, size: int = 10, good: bool = True) -> tuple[Backup, ...]:
    return tuple(
        Backup(key=f"job/db/{moment}", created_at=at(moment), size_bytes=size, good=good) for moment in moments
    )


def kept(result: Plan) -> list[str]:
    return [decision.backup.key.removeprefix("job/db/") for decision in result.decisions if not decision.delete]


def deleted(result: Plan) -> list[str]:
    return [decision.backup.key.removeprefix("job/db/") for decision in result.deletions]


def run(
    items: tuple[Backup, ...],
    policy: RetentionPolicy,
    *,
    timezone: str = "UTC",
    figures: DiskFigures = ROOMY,
    budget: Budget = NO_LIMIT,
    need: int = 0,
    now: str = "2027-06-01T00:00:00",
    scope: tuple[str, ...] | None = None,
) -> Plan:
    series = Series("job/db", items, policy, timezone)
    return plan([series], figures, budget, now=at(now), need_bytes=need, policy_scope=scope)


def rules_of(result: Plan) -> dict[str, str]:
    return {decision.backup.key.removeprefix("job/db/"): decision.rule for decision in result.decisions}


# --------------------------------------------------------------------------------------------------
# GFS periods


def test_keep_daily_keeps_the_newest_backup_of_each_of_the_last_n_days_that_have_one() -> None:
    items = backups(
        "2026-03-01T06:00:00", "2026-03-01T18:00:00",
        "2026-03-02T06:00:00", "2026-03-02T18:00:00",
        "2026-03-04T06:00:00", "2026-03-04T18:00:00",
    )  # fmt: skip
    result = run(items, RetentionPolicy(keep_daily=2, keep_weekly=None, keep_monthly=None, keep_min=1))
    assert kept(result) == ["2026-03-02T18:00:00", "2026-03-04T18:00:00"]
    assert set(rules_of(result).values()) >= {"expired", "keep_min,keep_daily"}


def test_monthly_periods_follow_the_jobs_time_zone_across_a_month_boundary() -> None:
    # 04:30 UTC on 1 February is still 31 January in New York (UTC-5)
    items = backups("2025-12-20T12:00:00", "2026-01-31T20:00:00", "2026-02-01T04:30:00")
    policy = RetentionPolicy(keep_daily=None, keep_weekly=None, keep_monthly=2, keep_min=1)
    in_utc = run(items, policy, timezone="UTC")
    in_new_york = run(items, policy, timezone="America/New_York")
    assert kept(in_utc) == ["2026-01-31T20:00:00", "2026-02-01T04:30:00"]
    assert kept(in_new_york) == ["2025-12-20T12:00:00", "2026-02-01T04:30:00"]


def test_yearly_periods_split_at_local_new_year() -> None:
    # 23:30 UTC on 31 December 2025 is already 1 January 2026 in Berlin, and still 2025 in UTC
    items = backups("2025-06-01T00:00:00", "2025-12-31T12:00:00", "2025-12-31T23:30:00")
    policy = RetentionPolicy(keep_daily=None, keep_weekly=None, keep_monthly=None, keep_yearly=2, keep_min=1)
    assert kept(run(items, policy, timezone="UTC")) == ["2025-12-31T23:30:00"]
    assert kept(run(items, policy, timezone="Europe/Berlin")) == ["2025-12-31T12:00:00", "2025-12-31T23:30:00"]


def test_iso_weeks_span_the_new_year() -> None:
    # 2026 has 53 ISO weeks: Friday 1 January 2027 still belongs to 2026-W53
    items = backups("2026-12-28T12:00:00", "2027-01-01T12:00:00", "2027-01-04T12:00:00")
    policy = RetentionPolicy(keep_daily=None, keep_weekly=2, keep_monthly=None, keep_min=1)
    assert kept(run(items, policy)) == ["2027-01-01T12:00:00", "2027-01-04T12:00:00"]


def test_daily_periods_are_local_days_across_a_daylight_saving_change() -> None:
    # Berlin falls back on 25 October 2026: 22:30 UTC on the 24th is 00:30 CEST on the 25th and
    # 22:30 UTC on the 25th is 23:30 CET on the 25th: the same local day.
    items = backups("2026-10-24T12:00:00", "2026-10-24T22:30:00", "2026-10-25T22:30:00")
    policy = RetentionPolicy(keep_daily=2, keep_weekly=None, keep_monthly=None, keep_min=1)
    assert kept(run(items, policy, timezone="Europe/Berlin")) == ["2026-10-24T12:00:00", "2026-10-25T22:30:00"]
    assert kept(run(items, policy, timezone="UTC")) == ["2026-10-24T22:30:00", "2026-10-25T22:30:00"]


def test_one_backup_can_count_for_several_rules() -> None:
    items = backups("2026-05-01T00:00:00", "2026-05-02T00:00:00")
    policy = RetentionPolicy(keep_last=1, keep_daily=1, keep_weekly=None, keep_monthly=1, keep_min=1)
    assert rules_of(run(items, policy))["2026-05-02T00:00:00"] == "keep_min,keep_last,keep_daily,keep_monthly"
    assert deleted(run(items, policy)) == ["2026-05-01T00:00:00"]


def test_with_no_keep_rule_every_good_backup_stays_until_max_age() -> None:
    items = backups("2026-01-01T00:00:00", "2026-05-20T00:00:00", "2026-05-30T00:00:00", "2026-05-31T00:00:00")
    assert deleted(run(items, ONLY)) == []
    aged = run(
        items,
        RetentionPolicy(keep_daily=None, keep_weekly=None, keep_monthly=None, max_age=timedelta(days=30), keep_min=1),
        now="2026-06-01T00:00:00",
    )
    assert deleted(aged) == ["2026-01-01T00:00:00"]
    assert rules_of(aged)["2026-01-01T00:00:00"] == "max_age"


# --------------------------------------------------------------------------------------------------
# Floor, pins, incomplete files


def test_max_age_never_goes_below_keep_min() -> None:
    items = backups("2020-01-01T00:00:00", "2020-01-02T00:00:00", "2020-01-03T00:00:00")
    policy = RetentionPolicy(keep_daily=7, max_age=timedelta(days=1), keep_min=2)
    result = run(items, policy)
    assert kept(result) == ["2020-01-02T00:00:00", "2020-01-03T00:00:00"]
    assert rules_of(result)["2020-01-02T00:00:00"].startswith("keep_min")


def test_incomplete_files_never_count_toward_the_floor_or_any_rule() -> None:
    good = backups("2026-05-01T00:00:00", "2026-05-02T00:00:00")
    broken = backups("2026-05-03T00:00:00", good=False)
    policy = RetentionPolicy(keep_last=1, keep_daily=None, keep_weekly=None, keep_monthly=None, keep_min=1)
    result = run(good + broken, policy)
    rules = rules_of(result)
    assert rules["2026-05-02T00:00:00"] == "keep_min,keep_last"
    assert rules["2026-05-03T00:00:00"] == "newer_than_good"
    assert deleted(result) == ["2026-05-01T00:00:00"]


def test_an_incomplete_file_older_than_the_newest_good_backup_goes_with_rule_incomplete() -> None:
    broken = backups("2026-05-01T00:00:00", good=False)
    good = backups("2026-05-02T00:00:00")
    result = run(broken + good, ONLY)
    assert deleted(result) == ["2026-05-01T00:00:00"]
    assert result.deletions[0].rule == "incomplete"


def test_a_pinned_backup_survives_every_rule_and_any_budget() -> None:
    old = Backup("job/db/2019-01-01T00:00:00", at("2019-01-01T00:00:00"), 10, good=True, pinned=True)
    items = (old, *backups("2026-05-01T00:00:00", "2026-05-02T00:00:00"))
    policy = RetentionPolicy(
        keep_last=1, keep_daily=None, keep_weekly=None, keep_monthly=None, max_age=timedelta(days=1), keep_min=1
    )
    result = run(items, policy, figures=DiskFigures(100, 0, 100), budget=Budget(50, 10), need=1000)
    assert "2019-01-01T00:00:00" in kept(result)
    assert rules_of(result)["2019-01-01T00:00:00"] == "pinned"
    assert not result.fits


# --------------------------------------------------------------------------------------------------
# The budget


def test_the_budget_takes_expired_backups_before_those_a_rule_keeps_oldest_first() -> None:
    items = backups(*(f"2026-05-{day:02d}T00:00:00" for day in range(1, 8)), size=100)
    policy = RetentionPolicy(keep_daily=5, keep_weekly=None, keep_monthly=None, keep_min=2)
    figures = DiskFigures(total_bytes=10_000, free_bytes=1_000, usage_bytes=700)
    # 1000 free, reserve 500, need 750: 250 short, so three backups go (two expired, one kept by keep_daily)
    result = run(items, policy, figures=figures, budget=Budget(500, None), need=750, scope=())
    assert result.fits
    assert [decision.rule for decision in result.queue[:3]] == ["expired", "expired", "budget"]
    assert result.expected_deletions == 3
    assert [decision.backup.key[-19:-9] for decision in result.queue[:3]] == ["2026-05-01", "2026-05-02", "2026-05-03"]
    assert deleted(result) == ["2026-05-01T00:00:00", "2026-05-02T00:00:00", "2026-05-03T00:00:00"]


def test_a_pre_flight_with_room_deletes_nothing_even_expired_backups() -> None:
    items = backups("2026-05-01T00:00:00", "2026-05-02T00:00:00", "2026-05-03T00:00:00")
    policy = RetentionPolicy(keep_last=1, keep_daily=None, keep_weekly=None, keep_monthly=None, keep_min=1)
    result = run(items, policy, need=50, scope=())
    assert result.fits
    assert deleted(result) == []
    assert [decision.rule for decision in result.queue] == ["expired", "expired"]


def test_the_plan_refuses_when_only_the_floor_would_make_room() -> None:
    items = backups("2026-05-01T00:00:00", "2026-05-02T00:00:00", "2026-05-03T00:00:00", size=100)
    policy = RetentionPolicy(keep_last=3, keep_min=2)
    figures = DiskFigures(total_bytes=1_000, free_bytes=200, usage_bytes=300)
    result = run(items, policy, figures=figures, budget=Budget(100, None), need=250, scope=())
    assert result.shortfall_bytes == 150
    assert result.freeable_bytes == 100
    assert not result.fits


def test_max_usage_limits_the_agents_own_files() -> None:
    items = backups(*(f"2026-05-{day:02d}T00:00:00" for day in range(1, 6)), size=100)
    figures = DiskFigures(total_bytes=10**9, free_bytes=10**9, usage_bytes=500)
    result = run(items, RetentionPolicy(keep_last=10, keep_min=2), figures=figures, budget=Budget(0, 450), need=100)
    assert deleted(result) == ["2026-05-01T00:00:00", "2026-05-02T00:00:00"]
    assert {decision.rule for decision in result.deletions} == {"budget"}


# --------------------------------------------------------------------------------------------------
# Budget figures and predictions


def test_percentages_resolve_against_the_filesystem_or_quota_size() -> None:
    storage = StorageConfig(path=Path("/x"), max_usage=SizeSpec(None, 40.0), reserve=SizeSpec(None, 20.0))
    assert resolve_budget(storage, 10 * 2**30) == Budget(reserve_bytes=2 * 2**30, max_usage_bytes=4 * 2**30)


def test_one_shortfall_covers_both_the_reserve_and_max_usage() -> None:
    figures = DiskFigures(total_bytes=1000, free_bytes=300, usage_bytes=400)
    assert shortfall(figures, Budget(100, None), 150) == 0
    assert shortfall(figures, Budget(200, None), 150) == 50
    assert shortfall(figures, Budget(0, 450), 150) == 100


def test_the_prediction_is_the_largest_recent_size_with_a_growth_margin() -> None:
    assert predict([5, 1000, 10, 10, 10, 10, 10], 999_999, "zstd") == Prediction(12, "history", least_bytes=10)
    assert predict([100, 300, 200], None, "none") == Prediction(360, "history", least_bytes=200)


def test_with_no_history_the_prediction_comes_from_the_servers_estimate() -> None:
    mebibytes = 2**20
    assert predict([], 100 * mebibytes, "none") == Prediction(100 * mebibytes, "estimate", least_bytes=100 * mebibytes)
    assert predict([], 100 * mebibytes, "zstd") == Prediction(50 * mebibytes, "estimate", least_bytes=50 * mebibytes)
    measured = predict([], 100 * mebibytes, "zstd", (0.05, 0.3))
    assert measured == Prediction(30 * mebibytes, "estimate", least_bytes=5 * mebibytes)
    assert predict([], None, "zstd").basis == "unknown"


def test_free_space_is_checked_every_few_mib_scaled_to_the_disk() -> None:
    assert check_interval(64 * 2**20, NO_LIMIT) == 2**20
    assert check_interval(10 * 2**30, NO_LIMIT) == 10 * 2**20
    assert check_interval(10 * 2**40, NO_LIMIT) == 64 * 2**20
    assert check_interval(10 * 2**40, Budget(0, 2 * 2**30)) == 2 * 2**20


# In flight: whose bytes took the room

_BASELINE = DiskFigures(total_bytes=1000 * MIB, free_bytes=300 * MIB, usage_bytes=400 * MIB)
_RESERVE = Budget(reserve_bytes=100 * MIB, max_usage_bytes=None)


def test_in_flight_the_next_stretch_is_written_while_it_fits_above_the_reserve() -> None:
    room = in_flight_room(_BASELINE, _RESERVE, agent_bytes=150 * MIB, free_bytes=150 * MIB, need_bytes=50 * MIB)
    assert (room.action, room.shortfall_bytes) == (WRITE, 0)


def test_in_flight_the_agents_own_bytes_beyond_the_room_ask_for_a_deletion_of_exactly_the_shortfall() -> None:
    room = in_flight_room(_BASELINE, _RESERVE, agent_bytes=190 * MIB, free_bytes=110 * MIB, need_bytes=20 * MIB)
    assert (room.action, room.shortfall_bytes, room.taken_by_others_bytes) == (DELETE, 10 * MIB, 0)


def test_in_flight_free_space_taken_by_another_writer_stops_the_dump_instead_of_deleting() -> None:
    # the dump wrote 10 MiB, yet free space fell by 195 MiB: 185 MiB went to someone else
    room = in_flight_room(_BASELINE, _RESERVE, agent_bytes=10 * MIB, free_bytes=105 * MIB, need_bytes=20 * MIB)
    assert (room.action, room.taken_by_others_bytes) == (CONTENDED, 185 * MIB)


def test_in_flight_a_little_unexplained_space_is_tolerated_and_the_others_grants_explain_more() -> None:
    tolerated = in_flight_room(
        _BASELINE, _RESERVE, agent_bytes=190 * MIB, free_bytes=110 * MIB - (100 << 10), need_bytes=20 * MIB
    )
    assert tolerated.action == DELETE
    another_dump = in_flight_room(
        _BASELINE, _RESERVE, agent_bytes=180 * MIB, free_bytes=110 * MIB, need_bytes=20 * MIB, allowance_bytes=16 * MIB
    )
    assert another_dump.action == DELETE
    stranger = in_flight_room(_BASELINE, _RESERVE, agent_bytes=180 * MIB, free_bytes=110 * MIB, need_bytes=20 * MIB)
    assert stranger.action == CONTENDED


def test_in_flight_the_agents_own_max_usage_is_always_its_own_need_even_while_another_writer_fills_the_disk() -> None:
    capped = Budget(reserve_bytes=100 * MIB, max_usage_bytes=500 * MIB)
    room = in_flight_room(_BASELINE, capped, agent_bytes=95 * MIB, free_bytes=100 * MIB, need_bytes=20 * MIB)
    assert (room.action, room.shortfall_bytes) == (DELETE, 20 * MIB)


def test_in_flight_space_given_back_by_deletions_counts_for_the_agent() -> None:
    # 60 MiB written, 40 MiB deleted: the agent added 20 MiB, free fell by 20 MiB, nobody else wrote
    room = in_flight_room(_BASELINE, _RESERVE, agent_bytes=20 * MIB, free_bytes=280 * MIB, need_bytes=200 * MIB)
    assert (room.action, room.taken_by_others_bytes) == (DELETE, 0)


class _SeriesWatchingTheCollector(list[Series]):
    """The planner's input; records whether the cyclic garbage collector is on as the plan reads it."""

    collector_enabled: list[bool]

    def __iter__(self) -> Iterator[Series]:
        self.collector_enabled.append(gc.isenabled())
        return super().__iter__()


def test_planning_leaves_the_garbage_collector_running_for_the_daemons_other_threads() -> None:
    moments = [datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=hour) for hour in range(500)]
    items = tuple(Backup(key=f"job/db/{moment}", created_at=moment, size_bytes=10, good=True) for moment in moments)
    series = _SeriesWatchingTheCollector([Series("job/db", items, RetentionPolicy(keep_daily=7))])
    series.collector_enabled = []
    result = plan(series, ROOMY, NO_LIMIT, now=moments[-1])
    assert len(result.decisions) == 500
    assert series.collector_enabled == [True]
