"""Invariants of the retention planner, for any backups, policy, disk figures and need."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.budget import Budget, DiskFigures, shortfall
from agent.config import RetentionPolicy
from agent.retention import BUDGET, Backup, Plan, Series, plan

NOW = datetime(2027, 1, 1, tzinfo=UTC)
EXAMPLES = settings(max_examples=100, deadline=None)

counts = st.one_of(st.none(), st.integers(0, 6))
policies = st.builds(
    RetentionPolicy,
    keep_last=counts,
    keep_hourly=counts,
    keep_daily=counts,
    keep_weekly=counts,
    keep_monthly=counts,
    keep_yearly=counts,
    max_age=st.one_of(st.none(), st.integers(1, 800).map(lambda days: timedelta(days=days))),
    keep_min=st.integers(1, 4),
)


@st.composite
def one_series(draw: st.DrawFn, index: int) -> Series:
    minutes = draw(st.lists(st.integers(0, 2 * 365 * 24 * 60), min_size=0, max_size=14, unique=True))
    items = tuple(
        Backup(
            key=f"job/db{index}/{minute}",
            created_at=NOW - timedelta(minutes=minute),
            size_bytes=draw(st.integers(1, 100)),
            good=draw(st.booleans() | st.just(True)),
            pinned=draw(st.integers(0, 9)) == 0,
        )
        for minute in minutes
    )
    zone = draw(st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kathmandu"]))
    return Series(f"job/db{index}", items, draw(policies), zone)


@st.composite
def situations(draw: st.DrawFn) -> tuple[list[Series], DiskFigures, Budget, int]:
    series = [draw(one_series(index)) for index in range(draw(st.integers(1, 3)))]
    usage = sum(backup.size_bytes for one in series for backup in one.backups) + draw(st.integers(0, 50))
    figures = DiskFigures(total_bytes=10_000, free_bytes=draw(st.integers(0, 1_000)), usage_bytes=usage)
    budget = Budget(
        reserve_bytes=draw(st.integers(0, 500)),
        max_usage_bytes=draw(st.one_of(st.none(), st.integers(0, 2_000))),
    )
    return series, figures, budget, draw(st.integers(0, 800))


def protected(series: list[Series]) -> set[str]:
    """Pins and the keep_min newest good backups of each series, computed independently."""
    keys = set()
    for one in series:
        good = sorted((b for b in one.backups if b.good), key=lambda b: b.created_at, reverse=True)
        keys.update(b.key for b in good[: one.policy.keep_min])
        keys.update(b.key for b in one.backups if b.pinned)
    return keys


def all_backups(series: list[Series]) -> list[Backup]:
    return [backup for one in series for backup in one.backups]


def deleted_keys(result: Plan) -> set[str]:
    return {decision.backup.key for decision in result.deletions}


@EXAMPLES
@given(situations(), st.sampled_from([None, ()]))
def test_nothing_ever_deletes_a_pin_or_the_keep_min_newest_good_backups(
    situation: tuple[list[Series], DiskFigures, Budget, int], scope: tuple[()] | None
) -> None:
    series, figures, budget, need = situation
    result = plan(series, figures, budget, now=NOW, need_bytes=need, policy_scope=scope)
    assert not deleted_keys(result) & protected(series)
    assert not {decision.backup.key for decision in result.queue} & protected(series)


@EXAMPLES
@given(situations(), st.sampled_from([None, ()]))
def test_a_backup_a_keep_rule_selects_goes_only_when_the_budget_needs_its_room(
    situation: tuple[list[Series], DiskFigures, Budget, int], scope: tuple[()] | None
) -> None:
    series, figures, budget, need = situation
    result = plan(series, figures, budget, now=NOW, need_bytes=need, policy_scope=scope)
    freed_before = 0
    for decision in result.deletions:
        if decision.rule == BUDGET or scope == ():
            assert freed_before < result.shortfall_bytes, "a deletion the room did not need"
        freed_before += decision.backup.size_bytes
    if result.shortfall_bytes == 0:
        assert all(decision.rule != BUDGET for decision in result.deletions)
        if scope == ():
            assert result.deletions == ()


@EXAMPLES
@given(situations())
def test_the_need_fits_after_the_plan_whenever_the_floor_allows_and_otherwise_the_plan_refuses(
    situation: tuple[list[Series], DiskFigures, Budget, int],
) -> None:
    series, figures, budget, need = situation
    result = plan(series, figures, budget, now=NOW, need_bytes=need)
    deletable = sum(b.size_bytes for b in all_backups(series) if b.key not in protected(series))
    possible = deletable >= shortfall(figures, budget, need)
    assert result.fits == possible
    freed = result.deleted_bytes
    after = DiskFigures(figures.total_bytes, figures.free_bytes + freed, figures.usage_bytes - freed)
    if result.fits:
        assert shortfall(after, budget, need) == 0
    else:
        assert deleted_keys(result) == {b.key for b in all_backups(series)} - protected(series)


@EXAMPLES
@given(situations(), st.integers(0, 500), st.integers(0, 500))
def test_a_tighter_budget_never_keeps_more(
    situation: tuple[list[Series], DiskFigures, Budget, int], more_reserve: int, more_need: int
) -> None:
    series, figures, budget, need = situation
    loose = plan(series, figures, budget, now=NOW, need_bytes=need, policy_scope=())
    tighter = replace(budget, reserve_bytes=budget.reserve_bytes + more_reserve)
    tight = plan(series, figures, tighter, now=NOW, need_bytes=need + more_need, policy_scope=())
    assert deleted_keys(loose) <= deleted_keys(tight)
    assert loose.expected_deletions <= tight.expected_deletions
    limit = budget.max_usage_bytes
    smaller = replace(budget, max_usage_bytes=1_000 if limit is None else limit // 2)
    assert deleted_keys(plan(series, figures, budget, now=NOW)) <= deleted_keys(plan(series, figures, smaller, now=NOW))


@EXAMPLES
@given(situations())
def test_an_impossible_budget_overrides_every_keep_rule_but_never_keep_min_or_pins(
    situation: tuple[list[Series], DiskFigures, Budget, int],
) -> None:
    series, figures, budget, _need = situation
    result = plan(series, figures, replace(budget, reserve_bytes=10**9), now=NOW)
    assert not result.fits
    assert deleted_keys(result) == {b.key for b in all_backups(series)} - protected(series)


@EXAMPLES
@given(situations())
def test_every_backup_gets_exactly_one_decision_and_deletions_follow_the_queue(
    situation: tuple[list[Series], DiskFigures, Budget, int],
) -> None:
    series, figures, budget, need = situation
    result = plan(series, figures, budget, now=NOW, need_bytes=need)
    assert sorted(d.backup.key for d in result.decisions) == sorted(b.key for b in all_backups(series))
    queue_order = [d.backup.key for d in result.queue]
    positions = [queue_order.index(d.backup.key) for d in result.deletions]
    assert positions == sorted(positions)
