"""Two strong keeps in the planner: a label until its keep runs out, and (skip_unchanged) the newest
good backup a skip relies on. Neither goes to the budget; both end exactly when they should."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from agent.budget import Budget, DiskFigures
from agent.config import RetentionPolicy
from agent.retention import Backup, Series, plan

ROOMY = DiskFigures(total_bytes=10**12, free_bytes=10**12, usage_bytes=0)
FULL = DiskFigures(total_bytes=1000, free_bytes=0, usage_bytes=1000)
NO_LIMIT = Budget(reserve_bytes=0, max_usage_bytes=None)
RESERVE = Budget(reserve_bytes=500, max_usage_bytes=None)
LAST_ONE = RetentionPolicy(keep_last=1, keep_daily=None, keep_weekly=None, keep_monthly=None, keep_min=1)
AGED = RetentionPolicy(keep_daily=None, keep_weekly=None, keep_monthly=None, keep_min=1)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def backup(moment: str, **fields: object) -> Backup:
    return replace(Backup(f"job/db/{moment}", at(moment), 100, good=True), **fields)  # type: ignore[arg-type]


def decisions(series: Series, now: str, figures: DiskFigures = ROOMY, budget: Budget = NO_LIMIT) -> dict[str, str]:
    result = plan([series], figures, budget, now=at(now), need_bytes=400)
    return {
        item.backup.key.removeprefix("job/db/"): ("delete " if item.delete else "keep ") + item.rule
        for item in result.decisions
    }


def test_a_labelled_backup_is_kept_against_rules_and_budget_until_its_keep_runs_out() -> None:
    labelled = backup("2027-01-01T00:00:00", keep_until=at("2027-01-31T00:00:00"))
    series = Series("job/db", (labelled, backup("2027-01-02T00:00:00"), backup("2027-01-03T00:00:00")), LAST_ONE)
    before = decisions(series, "2027-01-30T23:59:59", FULL, RESERVE)
    assert before["2027-01-01T00:00:00"] == "keep labelled"
    assert before["2027-01-02T00:00:00"] == "delete expired"
    after = decisions(series, "2027-01-31T00:00:00", FULL, RESERVE)
    assert after["2027-01-01T00:00:00"] == "delete expired"


def test_the_newest_good_backup_of_a_skipping_job_outlives_max_age_and_the_budget() -> None:
    old = (backup("2026-01-01T00:00:00"), backup("2026-02-01T00:00:00"))
    aged = replace(AGED, max_age=at("2026-03-01T00:00:00") - at("2026-02-01T00:00:00"))
    skipping = Series("job/db", old, aged, protect_newest=True)
    result = decisions(skipping, "2027-01-01T00:00:00", FULL, RESERVE)
    assert result["2026-02-01T00:00:00"] == "keep skip_unchanged,keep_min"
    assert result["2026-01-01T00:00:00"] == "delete max_age"
    # an incomplete file newer than it changes nothing: only good backups are relied on
    newer_broken = replace(skipping, backups=(*old, backup("2026-03-01T00:00:00", good=False)))
    assert decisions(newer_broken, "2027-01-01T00:00:00")["2026-02-01T00:00:00"].startswith("keep skip_unchanged")
    # without skip_unchanged the same backup is kept by the floor alone
    plain = Series("job/db", old, aged)
    assert decisions(plain, "2027-01-01T00:00:00")["2026-02-01T00:00:00"] == "keep keep_min"
