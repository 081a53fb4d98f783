"""The snapshot ledger and the platform-sized retention (agent/snapshots.py), for any journal and clock."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import cli, retention
from agent.budget import Budget, DiskFigures
from agent.config import RetentionPolicy, parse_config
from agent.ledger import deleted_rows, load
from agent.naming import backup_filename
from agent.snapshots import (
    CREATED,
    DELETED,
    LedgerEvent,
    Platform,
    kept_snapshots,
    ledger,
    lifetimes,
    platform_copy_at,
    platform_sized_policy,
    restore_points,
    safe_relative_path,
    snapshot_instants,
)

EXAMPLES = settings(max_examples=150, deadline=None)
FOUR_A_DAY = (time(0), time(6), time(12), time(18))
PLATFORM = Platform(FOUR_A_DAY, "UTC", timedelta(days=14))
BERLIN = Platform(FOUR_A_DAY, "Europe/Berlin", timedelta(days=14))
NOW = datetime(2026, 12, 3, 15, 0, tzinfo=UTC)
zones = st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"])
times_of_day = st.lists(
    st.builds(time, st.integers(0, 23), st.sampled_from([0, 15, 30, 45])), min_size=1, max_size=6, unique=True
).map(lambda items: tuple(sorted(items)))
platforms = st.builds(Platform, times_of_day, zones, st.integers(1, 21).map(lambda days: timedelta(days=days)))
moments = st.integers(0, 60 * 24 * 3600).map(
    lambda seconds: datetime(2026, 10, 1, tzinfo=UTC) + timedelta(seconds=seconds)
)


def _path(moment: datetime, job: str = "main", folder: str = "shop") -> str:
    return f"{job}/{folder}/{backup_filename(job, folder, moment, 'dump.zst')}"


def _events(created: datetime, deleted: datetime | None, path: str | None = None) -> list[LedgerEvent]:
    path = path or _path(created - timedelta(minutes=2))
    events = [LedgerEvent(CREATED, path, created, 1)]
    if deleted is not None:
        events.append(LedgerEvent(DELETED, path, deleted, 2))
    return events


# --------------------------------------------------------------------------------------------------
# Which snapshots hold a file


@EXAMPLES
@given(platforms, moments, st.one_of(st.none(), st.integers(0, 30 * 24 * 3600)), moments)
def test_a_file_is_held_by_exactly_the_kept_snapshots_between_its_publication_and_deletion(
    platform: Platform, published: datetime, lived_seconds: int | None, now: datetime
) -> None:
    deleted = None if lived_seconds is None else published + timedelta(seconds=lived_seconds)
    (entry,) = ledger(_events(published, deleted), platform, now)
    end = min(now, deleted) if deleted is not None else now
    expected = [
        instant
        for instant in snapshot_instants(platform, now - 2 * platform.keep, now)
        if published + timedelta(seconds=1) <= instant <= end and now - platform.keep < instant
    ]
    assert [holding.snapshot for holding in entry.holdings] == expected
    assert all(holding.until == holding.snapshot + platform.keep > now for holding in entry.holdings)


@EXAMPLES
@given(platforms, moments, st.floats(0.05, 0.95), st.floats(0.0, 1.0))
def test_a_file_published_and_deleted_between_two_snapshots_is_held_by_none(
    platform: Platform, around: datetime, start_share: float, end_share: float
) -> None:
    instants = snapshot_instants(platform, around - timedelta(days=2), around + timedelta(days=2))
    earlier, later = next((a, b) for a, b in itertools.pairwise(instants) if b > around)
    gap = (later - earlier).total_seconds()
    published = earlier + timedelta(seconds=gap * start_share)
    deleted = published + timedelta(seconds=(later - published).total_seconds() * end_share * 0.99)
    (entry,) = ledger(_events(published, deleted), platform, later + timedelta(hours=1))
    assert entry.holdings == ()


def test_a_snapshot_in_the_second_of_the_created_line_is_not_claimed_one_a_second_later_is() -> None:
    snapshot = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
    now = snapshot + timedelta(days=1)
    (same_second,) = ledger(_events(snapshot, None), PLATFORM, now)
    (second_before,) = ledger(_events(snapshot - timedelta(seconds=1), None), PLATFORM, now)
    assert snapshot not in [holding.snapshot for holding in same_second.holdings]
    assert snapshot in [holding.snapshot for holding in second_before.holdings]


def test_a_snapshot_at_the_second_of_the_deleted_line_still_holds_the_file() -> None:
    snapshot = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
    (entry,) = ledger(_events(snapshot - timedelta(hours=5), snapshot), PLATFORM, snapshot + timedelta(hours=1))
    assert entry.latest is not None and entry.latest.snapshot == snapshot
    assert entry.latest.until == datetime(2026, 12, 15, 6, 0, tzinfo=UTC)


def test_the_platform_drops_a_deleted_file_with_its_last_snapshot() -> None:
    deleted = datetime(2026, 11, 20, 13, 0, tzinfo=UTC)
    events = _events(datetime(2026, 11, 19, 23, 40, tzinfo=UTC), deleted)
    (just_before,) = ledger(events, PLATFORM, datetime(2026, 12, 4, 11, 59, tzinfo=UTC))
    (after,) = ledger(events, PLATFORM, datetime(2026, 12, 4, 12, 0, tzinfo=UTC))
    assert [holding.snapshot.hour for holding in just_before.holdings] == [12]
    assert after.holdings == ()


# --------------------------------------------------------------------------------------------------
# Snapshot times in local time


def test_four_snapshots_a_day_kept_14_days_are_56_restore_points_in_any_zone() -> None:
    for zone in ("UTC", "Europe/Berlin", "America/New_York"):
        platform = replace(PLATFORM, timezone=zone)
        for now in (NOW, datetime(2026, 3, 30, 12, tzinfo=UTC), datetime(2026, 11, 2, 12, tzinfo=UTC)):
            assert len(kept_snapshots(platform, now)) == 56, (zone, now)


def test_a_0230_snapshot_is_taken_at_the_jump_when_berlin_skips_0230_and_once_when_it_repeats() -> None:
    platform = Platform((time(2, 30),), "Europe/Berlin", timedelta(days=14))
    spring = snapshot_instants(platform, datetime(2026, 3, 28, tzinfo=UTC), datetime(2026, 3, 30, tzinfo=UTC))
    autumn = snapshot_instants(platform, datetime(2026, 10, 24, tzinfo=UTC), datetime(2026, 10, 26, tzinfo=UTC))
    zone = ZoneInfo("Europe/Berlin")
    assert [moment.astimezone(zone).strftime("%d %H:%M %Z") for moment in spring] == ["28 02:30 CET", "29 03:00 CEST"]
    assert [moment.astimezone(zone).strftime("%d %H:%M %Z") for moment in autumn] == ["24 02:30 CEST", "25 02:30 CEST"]


@EXAMPLES
@given(platforms, moments, st.integers(1, 40))
def test_snapshot_instants_ascend_without_repeats_and_read_as_configured_local_times(
    platform: Platform, start: datetime, days: int
) -> None:
    instants = snapshot_instants(platform, start, start + timedelta(days=days))
    assert instants == sorted(set(instants))
    zone = ZoneInfo(platform.timezone)
    local_days = {moment.astimezone(zone).date() for moment in instants}
    assert len(instants) <= (len(local_days) + 1) * len(platform.times)
    for moment in instants:
        local = moment.astimezone(zone)
        # a time inside a skipped hour is taken at the jump: the offset changed just before
        jumped = (moment - timedelta(hours=1)).astimezone(zone).utcoffset() != local.utcoffset()
        assert local.time() in platform.times or jumped


# --------------------------------------------------------------------------------------------------
# Untrusted journal lines


@pytest.mark.parametrize(
    "path",
    [
        "/etc/shadow",
        "../main/shop/main.shop.20261201T000000Z.dump.zst",
        "main/../shop/main.shop.20261201T000000Z.dump.zst",
        "main/shop/../main.shop.20261201T000000Z.dump.zst",
        "main/shop/notes.txt",
        "other/shop/main.shop.20261201T000000Z.dump.zst",
        "main//main.shop.20261201T000000Z.dump.zst",
        "main/shop/sub/main.shop.20261201T000000Z.dump.zst",
    ],
)
def test_a_journal_path_the_agent_never_writes_is_never_offered(path: str) -> None:
    assert safe_relative_path(path) is None
    assert ledger(_events(NOW - timedelta(days=2), None, path), PLATFORM, NOW) == []


def test_a_deleted_line_without_created_publishes_nothing_and_a_second_created_is_ignored() -> None:
    path = _path(NOW - timedelta(days=3))
    published = NOW - timedelta(days=3)
    events = [
        LedgerEvent(DELETED, _path(NOW - timedelta(days=5)), NOW - timedelta(days=4), 1),
        LedgerEvent(CREATED, path, published, 2),
        LedgerEvent(CREATED, path, NOW - timedelta(days=1), 3),
        LedgerEvent(DELETED, path, NOW - timedelta(days=2), 4, verified=False),
    ]
    (one,) = lifetimes(events)
    assert one.published_at == published and one.deleted_at == NOW - timedelta(days=2)
    assert not one.verified, "a lifetime is unverified when any of its lines is"


def test_a_deletion_logged_before_its_creation_after_a_clock_jump_is_held_by_no_snapshot() -> None:
    (entry,) = ledger(_events(NOW - timedelta(days=1), NOW - timedelta(days=3)), PLATFORM, NOW)
    assert entry.holdings == ()


# --------------------------------------------------------------------------------------------------
# Restore --at and restore points


def test_the_platform_copy_for_a_time_is_the_newest_deleted_dump_at_or_before_it() -> None:
    events: list[LedgerEvent] = []
    for day in range(1, 6):
        created = datetime(2026, 11, 25 + day, 23, 30, tzinfo=UTC)
        events += _events(created + timedelta(minutes=2), created + timedelta(days=2, minutes=3), _path(created))
    entries = ledger(events, PLATFORM, NOW)
    found = platform_copy_at(entries, "main", {"shop"}, datetime(2026, 11, 28, 12, tzinfo=UTC))
    assert found is not None and found.lifetime.created_at == datetime(2026, 11, 27, 23, 30, tzinfo=UTC)
    assert platform_copy_at(entries, "main", {"shop"}, datetime(2026, 11, 20, tzinfo=UTC)) is None
    assert platform_copy_at(entries, "main", {"other"}, NOW) is None


def test_each_restore_point_names_the_newest_dump_inside_the_snapshot() -> None:
    events: list[LedgerEvent] = []
    for hour in range(0, 21 * 24, 8):  # a dump every 8 hours, each kept 16 hours
        created = datetime(2026, 11, 13, tzinfo=UTC) + timedelta(hours=hour, minutes=5)
        events += _events(created + timedelta(minutes=1), created + timedelta(hours=16, minutes=2), _path(created))
    points = restore_points(ledger(events, PLATFORM, NOW), PLATFORM, NOW, "main", "shop")
    assert len(points) == 56
    assert all(point.newest is not None for point in points)
    for point in points:
        assert point.newest is not None and point.age is not None
        assert timedelta(0) < point.age <= timedelta(hours=8)
        assert point.newest.created_at == max(
            start
            for start in (datetime(2026, 11, 13, tzinfo=UTC) + timedelta(hours=h, minutes=5) for h in range(0, 504, 8))
            if start + timedelta(minutes=1, seconds=1) <= point.snapshot
        )


# --------------------------------------------------------------------------------------------------
# Retention sized to the platform


def test_the_default_policy_on_the_designed_platform_drops_only_the_daily_rule() -> None:
    sized = platform_sized_policy(RetentionPolicy(), PLATFORM, NOW)
    assert sized == replace(RetentionPolicy(), keep_daily=0)


def test_a_policy_of_dailies_only_becomes_keep_min_alone() -> None:
    policy = RetentionPolicy(keep_daily=10, keep_weekly=None, keep_monthly=None, keep_min=2)
    sized = platform_sized_policy(policy, PLATFORM, NOW)
    assert sized.keep_daily == 0 and sized.keep_last == 1 and sized.keep_min == 2


def test_rules_finer_than_the_snapshots_or_longer_than_their_retention_stay() -> None:
    policy = RetentionPolicy(keep_hourly=24, keep_daily=14, keep_weekly=2, keep_monthly=None)
    sized = platform_sized_policy(policy, PLATFORM, NOW)
    assert (sized.keep_hourly, sized.keep_daily, sized.keep_weekly) == (24, 14, 2)
    once_a_day = Platform((time(3),), "UTC", timedelta(days=14))
    assert platform_sized_policy(RetentionPolicy(keep_daily=7), once_a_day, NOW).keep_daily == 0
    twice_a_week = Platform((time(3),), "UTC", timedelta(days=3))
    assert platform_sized_policy(RetentionPolicy(keep_daily=7), twice_a_week, NOW).keep_daily == 7


def _simulate(policy: RetentionPolicy, every: timedelta, days: int) -> tuple[list[LedgerEvent], datetime, set[str]]:
    """Dumps every `every`, retention applied after each, journaled as the agent does: (events, now, on disk)."""
    start = datetime(2026, 10, 1, 0, 7, tzinfo=UTC)
    on_disk: dict[str, retention.Backup] = {}
    events: list[LedgerEvent] = []
    moment = start
    while moment < start + timedelta(days=days):
        path = _path(moment)
        published = moment + timedelta(minutes=3)
        events.append(LedgerEvent(CREATED, path, published, len(events) + 1))
        on_disk[path] = retention.Backup(path, moment, 1, True)
        series = retention.Series("main/shop", tuple(on_disk.values()), policy)
        plan = retention.plan([series], DiskFigures(1, 1, 0), Budget(0, None), now=published)
        for decision in plan.deletions:
            del on_disk[decision.backup.key]
            events.append(LedgerEvent(DELETED, decision.backup.key, published, len(events) + 1))
        moment += every
    return events, moment, set(on_disk)


@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from([timedelta(hours=h) for h in (1, 3, 6, 8, 24)]),
    st.builds(
        RetentionPolicy,
        keep_daily=st.integers(1, 13),
        keep_weekly=st.one_of(st.none(), st.integers(1, 6)),
        keep_monthly=st.none(),
        keep_min=st.integers(1, 3),
    ),
)
def test_the_platform_sized_policy_leaves_a_restore_point_in_every_day_the_dropped_rule_covered(
    every: timedelta, policy: RetentionPolicy
) -> None:
    sized = platform_sized_policy(policy, PLATFORM, NOW)
    events, now, on_disk = _simulate(sized, every, days=30)
    entries = ledger(events, PLATFORM, now)
    restorable = {entry.lifetime.created_at for entry in entries if entry.holdings or entry.lifetime.path in on_disk}
    newest_day = (now - every).date()
    for back in range(policy.keep_daily or 0):
        day = newest_day - timedelta(days=back)
        assert any(moment.date() == day for moment in restorable), f"no restore point left for {day}"
    assert len(on_disk) <= max(sized.keep_min, len(_simulate(policy, every, days=30)[2])), (
        "the sized policy keeps no more than the policy it replaces"
    )


# --------------------------------------------------------------------------------------------------
# The journal on disk (agent/ledger.py)


def _journal_line(previous: bytes, **fields: object) -> bytes:
    """A line as every version of the agent has written it: sorted keys, ASCII, `prev` the sha256 of the line before."""
    prev = hashlib.sha256(previous.rstrip(b"\n")).hexdigest() if previous else "0" * 64
    return (json.dumps({**fields, "prev": prev}, sort_keys=True, ensure_ascii=True) + "\n").encode()


def test_journal_lines_written_before_the_ledger_existed_are_read_and_a_break_marks_the_rest_unverified(
    tmp_path: Path,
) -> None:
    storage = tmp_path / "storage"
    (storage / ".agent").mkdir(parents=True)
    config = parse_config(
        f'[storage]\npath = "{storage}"\n[snapshots]\ntimes = ["00:00", "06:00", "12:00", "18:00"]\n'
        '[jobs.main]\nengine = "sqlite"\ndatabases = ["/srv/shop.db"]\n',
        tmp_path / "config.toml",
    )
    lines: list[bytes] = []
    for day in (24, 25):
        path = _path(datetime(2026, 11, day, 23, 30, tzinfo=UTC))
        created = {"at": f"2026-11-{day}T23:30:02+00:00", "event": "created", "path": path, "sha256": "0" * 64}
        lines.append(_journal_line(lines[-1] if lines else b"", **created, bytes=100, run_id="r"))
        deleted = {"at": f"2026-11-{day + 2}T23:30:03+00:00", "event": "deleted", "path": path, "rule": "expired"}
        lines.append(_journal_line(lines[-1], **deleted, sha256="0" * 64))
    journal_file = storage / ".agent" / "journal.jsonl"
    journal_file.write_bytes(b"".join(lines))

    loaded = load(config, NOW)
    assert loaded is not None and loaded.first_break is None
    rows = deleted_rows(loaded)
    assert [row["path"] for row in rows] == [
        str(storage / _path(datetime(2026, 11, d, 23, 30, tzinfo=UTC))) for d in (24, 25)
    ]
    assert "held by the snapshot of 2026-11-26 18:00 UTC until 2026-12-10 18:00 UTC" in rows[0]["text"]

    edited = lines[2].replace(b'"bytes": 100', b'"bytes": 999')  # the third line, edited: line 4 breaks
    journal_file.write_bytes(b"".join([*lines[:2], edited, *lines[3:]]))
    loaded = load(config, NOW)
    assert loaded is not None and loaded.first_break == 4
    assert [row["verified"] for row in deleted_rows(loaded)] == [True, False]


def test_a_dump_gone_without_a_deletion_line_is_claimed_by_no_snapshot(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    (storage / ".agent").mkdir(parents=True)
    config = parse_config(
        f'[storage]\npath = "{storage}"\n[snapshots]\ntimes = ["00:00", "06:00", "12:00", "18:00"]\n'
        '[jobs.main]\nengine = "sqlite"\ndatabases = ["/srv/shop.db"]\n',
        tmp_path / "config.toml",
    )
    kept, by_hand = _path(datetime(2026, 11, 30, 23, 30, tzinfo=UTC)), _path(datetime(2026, 12, 1, 23, 30, tzinfo=UTC))
    (storage / kept).parent.mkdir(parents=True)
    (storage / kept).write_bytes(b"dump")
    lines: list[bytes] = []
    for path, at in ((kept, "2026-11-30T23:30:05+00:00"), (by_hand, "2026-12-01T23:30:05+00:00")):
        lines.append(_journal_line(lines[-1] if lines else b"", at=at, event="created", path=path, bytes=4))
    (storage / ".agent" / "journal.jsonl").write_bytes(b"".join(lines))

    loaded = load(config, NOW)
    assert loaded is not None and loaded.vanished == (by_hand,)
    points = restore_points(loaded.files, loaded.platform, NOW, "main", "shop")
    assert {point.newest.path for point in points if point.newest} == {kept}, "no snapshot is claimed for it"


def test_the_sentence_names_snapshots_in_local_time_across_the_spring_jump(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    (storage / ".agent").mkdir(parents=True)
    config = parse_config(
        f'[storage]\npath = "{storage}"\n[snapshots]\ntimes = ["02:30", "14:30"]\ntimezone = "Europe/Berlin"\n'
        '[jobs.main]\nengine = "sqlite"\ndatabases = ["/srv/shop.db"]\n',
        tmp_path / "config.toml",
    )
    path = _path(datetime(2026, 3, 28, 20, 0, tzinfo=UTC))
    created = _journal_line(b"", at="2026-03-28T20:01:00+00:00", event="created", path=path, bytes=4)
    deleted = _journal_line(created, at="2026-03-29T09:00:00+00:00", event="deleted", path=path, rule="expired")
    (storage / ".agent" / "journal.jsonl").write_bytes(created + deleted)

    loaded = load(config, datetime(2026, 3, 30, tzinfo=UTC))
    assert loaded is not None
    (row,) = deleted_rows(loaded)
    # 02:30 does not exist on 2026-03-29 in Berlin: the snapshot is taken at the jump, 03:00 CEST (01:00 UTC)
    assert row["snapshots"] == [{"taken_at": "2026-03-29T01:00:00+00:00", "kept_until": "2026-04-12T01:00:00+00:00"}]
    assert "deleted locally on 2026-03-29 11:00 CEST, held by the snapshot of 2026-03-29 03:00 CEST" in row["text"]
    assert "until 2026-04-12 03:00 CEST: ask for " + str(storage / path) in row["text"]


def test_list_deleted_without_snapshot_times_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[storage]\npath = "{tmp_path / "storage"}"\n[jobs.main]\nengine = "sqlite"\ndatabases = ["/srv/shop.db"]\n'
    )
    config.chmod(0o600)
    assert cli.main(["-c", str(config), "list", "--deleted"]) == 2
    assert "list --deleted needs [snapshots] times" in capsys.readouterr().err


def test_a_skip_unchanged_check_makes_a_snapshot_of_an_old_dump_count_as_current() -> None:
    created = datetime(2026, 12, 1, 23, 30, tzinfo=UTC)
    path = _path(created)
    entries = ledger([LedgerEvent(CREATED, path, created + timedelta(minutes=1), 1)], PLATFORM, NOW)
    skips = {path: [datetime(2026, 12, 2, 23, 30, tzinfo=UTC), datetime(2026, 12, 3, 11, 0, tzinfo=UTC)]}
    points = {p.snapshot: p for p in restore_points(entries, PLATFORM, NOW, "main", "shop", proofs=skips)}
    noon = points[datetime(2026, 12, 3, 12, 0, tzinfo=UTC)]
    assert noon.age == timedelta(hours=36, minutes=30), "the dump itself is as old as it is"
    assert noon.current_age == timedelta(hours=1), "but the 11:00 skip proved the database still as in it"
    six = points[datetime(2026, 12, 3, 6, 0, tzinfo=UTC)]
    assert six.current_age == timedelta(hours=6, minutes=30)
    before_any_skip = points[datetime(2026, 12, 2, 18, 0, tzinfo=UTC)]
    assert before_any_skip.current_age == before_any_skip.age
