"""How long the retention planner takes for many backups (target: 100,000 well under a second).

Run as a script: `python bench/retention_bench.py [backups] [series]`; or call `bench()`.
The backups are hourly over ~11 years split across series, with a GFS policy in a time zone that
has daylight saving, a budget that forces deletions, and a few pins and incomplete files.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime, timedelta

from agent.budget import Budget, DiskFigures
from agent.config import RetentionPolicy
from agent.retention import Backup, Series, plan

NOW = datetime(2027, 1, 1, tzinfo=UTC)
POLICY = RetentionPolicy(
    keep_last=24, keep_hourly=48, keep_daily=30, keep_weekly=52, keep_monthly=24, keep_yearly=10, keep_min=2
)


def make_series(backups: int, series: int) -> list[Series]:
    per_series = backups // series
    result = []
    for index in range(series):
        items = tuple(
            Backup(
                key=f"job/db{index}/{number}",
                created_at=NOW - timedelta(hours=number),
                size_bytes=1_000_000 + number % 1000,
                good=number % 97 != 0,
                pinned=number % 5000 == 1,
            )
            for number in range(per_series)
        )
        result.append(Series(f"job/db{index}", items, POLICY, "Europe/Berlin"))
    return result


def bench(backups: int = 100_000, series: int = 10, repeats: int = 3) -> float:
    """Best of `repeats` wall-clock seconds to plan `backups` backups (input building not timed)."""
    data = make_series(backups, series)
    usage = sum(backup.size_bytes for one in data for backup in one.backups)
    figures = DiskFigures(total_bytes=usage * 2, free_bytes=usage // 2, usage_bytes=usage)
    budget = Budget(reserve_bytes=usage // 4, max_usage_bytes=usage // 2)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        result = plan(data, figures, budget, now=NOW, need_bytes=10**9)
        best = min(best, time.perf_counter() - started)
    assert result.deletions, "the benchmark budget should force deletions"
    return best


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    groups = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    seconds = bench(count, groups)
    print(f"retention plan for {count} backups in {groups} series: {seconds * 1000:.0f} ms")
