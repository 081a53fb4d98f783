"""Sizes, durations, rates, cron expressions and time zones as a user writes them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import ConfigError
from agent.units import (
    SizeSpec,
    format_duration,
    format_size,
    parse_duration,
    parse_rate,
    parse_size,
    validate_cron,
    validate_timezone,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20GiB", 20 * 2**30),
        ("512MiB", 512 * 2**20),
        ("10MB", 10 * 10**6),
        ("1.5GB", 1_500_000_000),
        ("100", 100),
        (100, 100),
        ("2TiB", 2 * 2**40),
        ("4k", 4096),
        ("1G", 2**30),
        ("3 gib", 3 * 2**30),
        ("7b", 7),
        ("1KB", 1000),
    ],
)
def test_sizes_are_read_in_the_unit_the_user_wrote(text: str | int, expected: int) -> None:
    assert parse_size(text, "storage.quota", allow_percent=False) == SizeSpec(bytes=expected, percent=None)


def test_a_percentage_is_kept_as_a_share_of_the_filesystem() -> None:
    spec = parse_size("15%", "storage.max_usage", allow_percent=True)
    assert spec == SizeSpec(bytes=None, percent=15.0)
    assert spec.resolve(1000) == 150
    assert str(spec) == "15%"


def test_a_byte_size_resolves_to_itself_whatever_the_filesystem() -> None:
    assert parse_size("1GiB", "k", allow_percent=True).resolve(10) == 2**30


@pytest.mark.parametrize("text", ["abc", "0", 0, -5, "-1GiB", "NaN", "nan%", "0%", "101%", "5XB", True, 1.5, ""])
def test_a_broken_size_is_refused_with_its_key_path(text: object) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_size(text, "storage.max_usage", allow_percent=True)  # type: ignore[arg-type]
    assert str(caught.value).startswith("storage.max_usage: ")


def test_a_size_error_shows_the_expected_form_and_the_value_given() -> None:
    with pytest.raises(ConfigError, match=r'storage.max_usage: expected a size like "20GiB" or "15%", got "abc"'):
        parse_size("abc", "storage.max_usage", allow_percent=True)


def test_a_percentage_is_refused_where_only_bytes_make_sense() -> None:
    with pytest.raises(ConfigError, match=r"storage\.quota: .*not a percentage"):
        parse_size("15%", "storage.quota", allow_percent=False)


@pytest.mark.parametrize(
    ("byte_count", "text"),
    [(0, "0 B"), (512, "512 B"), (1024, "1 KiB"), (1536 * 2**20, "1.5 GiB"), (10 * 2**20, "10 MiB")],
)
def test_sizes_are_shown_in_binary_units(byte_count: int, text: str) -> None:
    assert format_size(byte_count) == text


@settings(max_examples=50)
@given(st.integers(min_value=1, max_value=1023), st.sampled_from([1, 2**10, 2**20, 2**30, 2**40]))
def test_a_whole_number_of_units_round_trips_exactly(count: int, unit: int) -> None:
    assert parse_size(format_size(count * unit), "k", allow_percent=False).bytes == count * unit


@settings(max_examples=50)
@given(st.integers(min_value=1, max_value=2**50))
def test_any_byte_count_round_trips_within_display_rounding(byte_count: int) -> None:
    read_back = parse_size(format_size(byte_count), "k", allow_percent=False).bytes
    assert read_back is not None
    assert abs(read_back - byte_count) <= byte_count * 0.005


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("6h", timedelta(hours=6)),
        ("30m", timedelta(minutes=30)),
        ("2d", timedelta(days=2)),
        ("1w", timedelta(weeks=1)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1h 30m", timedelta(hours=1, minutes=30)),
        ("500ms", timedelta(milliseconds=500)),
        ("1.5h", timedelta(hours=1, minutes=30)),
        (45, timedelta(seconds=45)),
        ("45", timedelta(seconds=45)),
    ],
)
def test_durations_are_read_as_written(text: str | int, expected: timedelta) -> None:
    assert parse_duration(text, "jobs.main.timeout") == expected


@pytest.mark.parametrize("text", ["0s", 0, "-5m", -3, "abc", "5x", "30m1h", "1h1h", "", "h", True])
def test_a_broken_or_empty_duration_is_refused_with_its_key_path(text: object) -> None:
    with pytest.raises(ConfigError, match=r"^jobs\.main\.timeout: "):
        parse_duration(text, "jobs.main.timeout")  # type: ignore[arg-type]


def test_zero_is_accepted_only_where_it_is_allowed() -> None:
    assert parse_duration("0s", "jobs.main.jitter", allow_zero=True) == timedelta(0)


def test_a_duration_below_the_minimum_is_refused_naming_the_minimum() -> None:
    with pytest.raises(ConfigError, match="at least 1m"):
        parse_duration("10s", "k", minimum=timedelta(minutes=1))


@pytest.mark.parametrize(
    ("duration", "text"),
    [
        (timedelta(hours=6), "6h"),
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(milliseconds=500), "500ms"),
        (timedelta(days=8), "1w1d"),
        (timedelta(0), "0s"),
    ],
)
def test_durations_are_shown_compactly(duration: timedelta, text: str) -> None:
    assert format_duration(duration) == text


@settings(max_examples=50)
@given(st.integers(min_value=1, max_value=10**12))
def test_a_shown_duration_reads_back_the_same(milliseconds: int) -> None:
    duration = timedelta(milliseconds=milliseconds)
    assert parse_duration(format_duration(duration), "k") == duration


def test_rates_are_bytes_per_second() -> None:
    assert parse_rate("50MiB/s", "storage.max_write_rate") == 50 * 2**20
    assert parse_rate("10MB/s", "storage.max_write_rate") == 10 * 10**6


@pytest.mark.parametrize("text", ["50MiB", "fast", "0MB/s", "10%/s"])
def test_a_rate_without_per_second_or_with_a_bad_size_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match=r'^storage\.max_write_rate: expected a rate like "50MiB/s"'):
        parse_rate(text, "storage.max_write_rate")


@pytest.mark.parametrize(
    "expression",
    ["0 3 * * *", "*/15 * * * *", "0 2-4 * * mon-fri", "30 1 1,15 * *", "0 0 1 jan *", "5 4 * * sun"],
)
def test_standard_cron_expressions_are_accepted(expression: str) -> None:
    validate_cron(expression, "jobs.main.schedule")


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("* * * *", "exactly 5 fields"),
        ("0 3 * * * *", "exactly 5 fields"),
        ("@daily", "@daily"),
        ("61 * * * *", "invalid cron expression"),
        ("0 25 * * *", "invalid cron expression"),
        ("0 3 * foo *", "invalid cron expression"),
        ("0 3 * * 8", "day-of-week"),
        ("0 3 1 * mon", "both day-of-month and day-of-week"),
    ],
)
def test_a_broken_cron_expression_is_refused_saying_what_is_wrong(expression: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_cron(expression, "jobs.main.schedule")
    assert str(caught.value).startswith("jobs.main.schedule: ")
    assert problem in str(caught.value)


def _next_run(expression: str, after: datetime) -> datetime:
    from apscheduler.triggers.cron import CronTrigger

    trigger = CronTrigger.from_crontab(validate_cron(expression, "k"), timezone="UTC")
    fire_time = trigger.get_next_fire_time(None, after)
    assert fire_time is not None
    return fire_time  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("expression", "weekday"),
    [("0 3 * * 1", "Monday"), ("0 3 * * 0", "Sunday"), ("0 3 * * 7", "Sunday"), ("0 3 * * 6", "Saturday")],
)
def test_weekday_numbers_mean_what_they_mean_in_cron(expression: str, weekday: str) -> None:
    wednesday = datetime(2024, 1, 3, tzinfo=UTC)
    assert _next_run(expression, wednesday).strftime("%A") == weekday


def test_a_weekday_range_ending_on_sunday_includes_sunday() -> None:
    assert validate_cron("0 3 * * 5-7", "k") == "0 3 * * fri,sat,sun"
    assert validate_cron("0 3 * * 0-6", "k") == "0 3 * * *"


def test_known_time_zones_are_accepted_and_unknown_ones_refused() -> None:
    assert validate_timezone("Europe/Berlin", "jobs.main.timezone") == "Europe/Berlin"
    with pytest.raises(ConfigError, match=r"^jobs\.main\.timezone: unknown time zone \"Mars/Olympus\""):
        validate_timezone("Mars/Olympus", "jobs.main.timezone")
