"""Sizes, durations, rates, cron expressions and time zones as users write them (pure parsing).

Every parser raises `ConfigError` whose message starts with the caller's key path, so a bad value
is reported where it was written.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agent.errors import ConfigError

_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
    "t": 2**40,
}
_BINARY_NAMES = (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))
_SIZE_PATTERN = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*([a-z]*)$")
_PERCENT_PATTERN = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*%$")

_DURATION_UNITS: dict[str, timedelta] = {
    "w": timedelta(weeks=1),
    "d": timedelta(days=1),
    "h": timedelta(hours=1),
    "m": timedelta(minutes=1),
    "s": timedelta(seconds=1),
    "ms": timedelta(milliseconds=1),
}
_DURATION_ORDER = tuple(_DURATION_UNITS)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|w|d|h|m|s)")

_WEEKDAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_CRON_FIELDS = "minute hour day-of-month month day-of-week"


@dataclass(frozen=True)
class SizeSpec:
    """An absolute byte count or a percentage of a filesystem; exactly one is set."""

    bytes: int | None
    percent: float | None

    def resolve(self, total_bytes: int) -> int:
        """Bytes this spec stands for on a filesystem of `total_bytes` (percentages round down)."""
        if self.bytes is not None:
            return self.bytes
        assert self.percent is not None  # one of the two is always set by parse_size
        return int(total_bytes * self.percent / 100)

    def __str__(self) -> str:
        if self.bytes is not None:
            return format_size(self.bytes)
        return f"{self.percent:g}%"


def parse_size(text: str | int, key_path: str, allow_percent: bool) -> SizeSpec:
    """Parse "20GiB", "10MB", "100" or (when allowed) "15%"; integers are bytes; must be positive."""
    example = '"20GiB" or "15%"' if allow_percent else '"20GiB"'
    if isinstance(text, bool) or not isinstance(text, int | str):
        raise ConfigError(f"{key_path}: expected a size like {example}, got {_describe(text)}")
    if isinstance(text, int):
        if text <= 0:
            raise ConfigError(f"{key_path}: must be greater than zero, got {text}")
        return SizeSpec(bytes=text, percent=None)
    cleaned = text.strip().lower()
    percent_match = _PERCENT_PATTERN.match(cleaned)
    if percent_match:
        if not allow_percent:
            raise ConfigError(f"{key_path}: expected a size in bytes like {example}, not a percentage")
        percent = float(percent_match.group(1))
        if not math.isfinite(percent) or percent <= 0 or percent > 100:
            raise ConfigError(f"{key_path}: a percentage must be above 0% and at most 100%, got {_quote(text)}")
        return SizeSpec(bytes=None, percent=percent)
    size_match = _SIZE_PATTERN.match(cleaned)
    if not size_match or size_match.group(2) not in _SIZE_UNITS:
        raise ConfigError(f"{key_path}: expected a size like {example}, got {_quote(text)}")
    try:
        amount = Decimal(size_match.group(1)) * _SIZE_UNITS[size_match.group(2)]
    except InvalidOperation:
        raise ConfigError(f"{key_path}: expected a size like {example}, got {_quote(text)}") from None
    byte_count = int(amount.to_integral_value())
    if byte_count <= 0:
        raise ConfigError(f"{key_path}: must be at least one byte, got {_quote(text)}")
    return SizeSpec(bytes=byte_count, percent=None)


def parse_rate(text: str | int, key_path: str) -> int:
    """Parse a transfer rate such as "50MiB/s" into bytes per second; a bare integer is bytes/s."""
    amount = text
    if isinstance(text, str):
        cleaned = text.strip()
        if not cleaned.lower().endswith("/s"):
            raise ConfigError(f'{key_path}: expected a rate like "50MiB/s", got {_quote(text)}')
        amount = cleaned[:-2]
    try:
        spec = parse_size(amount, key_path, allow_percent=False)
    except ConfigError:
        raise ConfigError(f'{key_path}: expected a rate like "50MiB/s", got {_describe(text)}') from None
    assert spec.bytes is not None  # percentages are refused above
    return spec.bytes


def parse_duration(
    text: str | int,
    key_path: str,
    minimum: timedelta | None = None,
    allow_zero: bool = False,
) -> timedelta:
    """Parse "90s", "1h30m", "500ms", "2d", "1w"; integers are seconds; zero only when allowed."""
    if isinstance(text, bool) or not isinstance(text, int | str):
        raise ConfigError(f'{key_path}: expected a duration like "30m" or "6h", got {_describe(text)}')
    result = _seconds(text, key_path) if isinstance(text, int) else _parse_duration_text(text, key_path)
    if result < timedelta(0):
        raise ConfigError(f"{key_path}: must not be negative, got {_quote(text)}")
    if result == timedelta(0) and not allow_zero:
        raise ConfigError(f"{key_path}: must be greater than zero, got {_quote(text)}")
    if minimum is not None and result < minimum and not (allow_zero and result == timedelta(0)):
        raise ConfigError(f"{key_path}: must be at least {format_duration(minimum)}, got {_quote(text)}")
    return result


def _seconds(value: int, key_path: str) -> timedelta:
    try:
        return timedelta(seconds=value)
    except OverflowError:
        raise ConfigError(f"{key_path}: {value} seconds is too long") from None


def _parse_duration_text(text: str, key_path: str) -> timedelta:
    cleaned = text.strip().lower()
    negative = cleaned.startswith("-")
    body = cleaned.lstrip("+-").strip()
    if body.isdigit():
        result = _seconds(int(body), key_path)
        return -result if negative else result
    problem = f'{key_path}: expected a duration like "30m", "6h" or "1h30m", got {_quote(text)}'
    position = 0
    last_rank = -1
    total = timedelta(0)
    for match in _DURATION_PART.finditer(body):
        if match.start() != position and body[position : match.start()].strip():
            raise ConfigError(problem)
        rank = _DURATION_ORDER.index(match.group(2))
        if rank <= last_rank:
            raise ConfigError(f"{problem} (write the largest unit first, each unit once)")
        last_rank = rank
        try:
            total += _DURATION_UNITS[match.group(2)] * float(match.group(1))
        except OverflowError:
            raise ConfigError(f"{key_path}: {_quote(text)} is too long") from None
        position = match.end()
    if last_rank < 0 or body[position:].strip():
        raise ConfigError(problem)
    return -total if negative else total


def format_size(byte_count: int) -> str:
    """A human size in binary units with at most two decimals, e.g. "1.5 GiB" or "512 B".

    The one size format of every human line; a backup's size is always its data file's length.
    """
    if byte_count < 0:
        return "-" + format_size(-byte_count)
    for name, factor in _BINARY_NAMES:
        if byte_count >= factor:
            value = f"{byte_count / factor:.2f}".rstrip("0").rstrip(".")
            return f"{value} {name}"
    return f"{byte_count} B"


def format_time(moment: datetime | str | None) -> str:
    """A moment for people, always UTC with its `Z`, to the second: "2026-11-26T06:00:00Z" ("?" if unknown).

    Every human line (list, prune, status, restore) uses it, so no time is ever read as local.
    A text that is no ISO 8601 time is returned as it is.
    """
    if moment is None:
        return "?"
    if isinstance(moment, str):
        text = moment
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            return text
    if moment.tzinfo is None:  # the agent writes only aware times; a naive one read back is UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_duration(duration: timedelta) -> str:
    """A compact duration that parse_duration reads back, e.g. "6h", "1h30m", "1m30s", "500ms"."""
    if duration < timedelta(0):
        return "-" + format_duration(-duration)
    remaining = duration // timedelta(milliseconds=1)
    parts: list[str] = []
    for name in _DURATION_ORDER:
        unit = _DURATION_UNITS[name] // timedelta(milliseconds=1)
        count, remaining = divmod(remaining, unit)
        if count:
            parts.append(f"{count}{name}")
    return "".join(parts) or "0s"


def validate_cron(expr: str, key_path: str) -> str:
    """Check a standard 5-field cron expression and return it in the form APScheduler 3 reads correctly.

    Day-of-week numbers are rewritten as names because APScheduler 3 counts 0 as Monday while cron
    counts 0 (and 7) as Sunday; "0 3 * * 1" must mean Monday.
    """
    if not isinstance(expr, str):
        raise ConfigError(f'{key_path}: expected a cron expression like "0 3 * * *", got {_describe(expr)}')
    fields = expr.split()
    if len(fields) != 5:
        hint = " (shortcuts like @daily are not supported)" if expr.strip().startswith("@") else ""
        raise ConfigError(
            f"{key_path}: a cron expression needs exactly 5 fields ({_CRON_FIELDS}), "
            f"got {len(fields)} in {_quote(expr)}{hint}"
        )
    day_of_month, day_of_week = fields[2], fields[4]
    if day_of_month not in ("*", "?") and day_of_week not in ("*", "?"):
        raise ConfigError(
            f"{key_path}: {_quote(expr)} restricts both day-of-month and day-of-week; cron would run on "
            "either but this scheduler needs both to match, so set one of them to *"
        )
    fields[4] = _normalise_weekdays(day_of_week, expr, key_path)
    normalised = " ".join(fields)
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(normalised, timezone="UTC")
    except ValueError as error:
        raise ConfigError(f"{key_path}: invalid cron expression {_quote(expr)}: {error}") from None
    return normalised


def _normalise_weekdays(field: str, expr: str, key_path: str) -> str:
    """Expand a cron day-of-week field (Sunday = 0 or 7) into APScheduler weekday names."""
    if field in ("*", "?"):
        return field
    days: set[int] = set()
    for item in field.lower().split(","):
        base, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise _weekday_error(key_path, expr, item)
            step = int(step_text)
        if base == "*":
            first, last = 0, 6
        elif "-" in base:
            start_text, _, end_text = base.partition("-")
            first, last = _weekday(start_text, key_path, expr), _weekday(end_text, key_path, expr)
            if last == 0 and end_text != "0" and first > 0:
                last = 7  # "fri-sun" ends on Sunday, the end of the cron week
            if first > last:
                raise _weekday_error(key_path, expr, item)
        else:
            first = _weekday(base, key_path, expr)
            last = 6 if step_text else first
        days.update(day % 7 for day in range(first, last + 1, step))
    if len(days) == 7:
        return "*"
    return ",".join(_WEEKDAY_NAMES[day] for day in sorted(days, key=lambda day: (day + 6) % 7))


def _weekday(text: str, key_path: str, expr: str) -> int:
    if text in _WEEKDAY_NAMES:
        return _WEEKDAY_NAMES.index(text)
    if text.isdigit() and int(text) <= 7:
        return int(text)
    raise _weekday_error(key_path, expr, text)


def _weekday_error(key_path: str, expr: str, item: str) -> ConfigError:
    return ConfigError(
        f"{key_path}: invalid day-of-week {_quote(item)} in {_quote(expr)}; "
        "use 0-7 (0 and 7 are Sunday) or names like mon, tue"
    )


def validate_timezone(name: str, key_path: str) -> str:
    """Check that `name` is an IANA time zone this system knows, such as "Europe/Berlin"."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f'{key_path}: expected a time zone like "Europe/Berlin", got {_describe(name)}')
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f'{key_path}: unknown time zone {_quote(name)}; use an IANA name like "Europe/Berlin" or "UTC"'
        ) from None
    return name


def _quote(value: object) -> str:
    """A value as it would appear in TOML, for error messages."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return _quote(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"
