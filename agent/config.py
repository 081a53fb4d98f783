"""One TOML file -> validated, frozen dataclasses.

Every problem is collected and reported at once, each naming its dotted key path and (when it can
be found) its line, so a user fixes a config in one pass instead of one error per restart.
"""

from __future__ import annotations

import difflib
import os
import pwd
import re
import shutil
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from datetime import time, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from agent import engines, trust
from agent.compression import COMPRESSIONS, Compression
from agent.engines.base import EngineFamily, EngineOptions, refused_password_argument
from agent.errors import ConfigError
from agent.scope import JobScope, read_scope
from agent.secrets import Secret, SecretSource
from agent.units import (
    SizeSpec,
    format_duration,
    parse_duration,
    parse_rate,
    parse_size,
    validate_cron,
    validate_timezone,
)

DEFAULT_CONFIG_PATH = Path("/etc/backup-agent/config.toml")  # a system install (scripts/install.sh)
USER_CONFIG_NAME = Path("backup-agent") / "config.toml"  # under ~/.config: a user install (install.sh --user)
CONFIG_ENV_VARIABLE = "BACKUP_AGENT_CONFIG"

COMPRESSION_LEVELS = {"zstd": (3, 1, 19), "gzip": (6, 1, 9)}  # default, lowest, highest
JOB_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ENV_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
IMPACTS = ("gentle", "fastest")  # agent/runner.py: what each one changes
RETENTION_COUNTS = ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")

_KeyPath = tuple[str, ...]
_DEFAULT_RESERVE = SizeSpec(bytes=None, percent=10.0)
_DEFAULT_LOG_MAX_SIZE = SizeSpec(bytes=10 * 2**20, percent=None)
_NO_PASSWORD = SecretSource("none")
_Default = TypeVar("_Default")
_Choice = TypeVar("_Choice", bound=str)


# --------------------------------------------------------------------------------------------------
# The schema


@dataclass(frozen=True, slots=True)
class StorageConfig:
    path: Path
    compression: Compression = "zstd"
    level: int | None = 3
    threads: int = -1
    max_usage: SizeSpec | None = None
    reserve: SizeSpec = _DEFAULT_RESERVE
    quota: SizeSpec | None = None
    immutable: bool = False
    max_write_rate: int | None = None
    impact: str = "gentle"  # gentle | fastest: how much a dump may take from the application


@dataclass(frozen=True, slots=True)
class LogConfig:
    file: Path | None = None
    level: str = "info"
    format: str = "json"
    rotate: bool = True
    max_size: SizeSpec = _DEFAULT_LOG_MAX_SIZE
    keep: int = 5
    progress_every: timedelta = timedelta(minutes=5)  # a `backup.progress` event this often during a dump


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """Which dumps to keep; a count of 0 turns a rule off, None means the rule is not used."""

    keep_last: int | None = None
    keep_hourly: int | None = None
    keep_daily: int | None = 7
    keep_weekly: int | None = 4
    keep_monthly: int | None = 3
    keep_yearly: int | None = None
    max_age: timedelta | None = None
    keep_min: int = 2


@dataclass(frozen=True, slots=True)
class SnapshotsConfig:
    """Filesystem snapshot times; "before-snapshots" jobs finish `margin` before each; the platform
    keeps each snapshot `keep` (the snapshot ledger, agent/snapshots.py)."""

    times: tuple[time, ...]
    timezone: str = "UTC"
    margin: timedelta = timedelta(minutes=30)
    keep: timedelta = timedelta(days=14)


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    max_concurrent_dumps: int = 1
    shutdown_timeout: timedelta = timedelta(seconds=30)
    misfire_grace_time: timedelta = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    textfile: Path | None = None


@dataclass(frozen=True, slots=True)
class NotifyConfig:
    healthchecks_url: str | None = None
    webhooks: tuple[str, ...] = ()
    timeout: timedelta = timedelta(seconds=5)
    retries: int = 2


ScheduleKind = Literal["cron", "interval", "before-snapshots", "manual"]


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """When a job runs."""

    kind: ScheduleKind
    cron: str | None = None
    every: timedelta | None = None


@dataclass(frozen=True, slots=True)
class HooksConfig:
    """Commands (argv lists, never shell strings) run around a dump."""

    before: tuple[str, ...] | None = None
    after: tuple[str, ...] | None = None
    on_failure: tuple[str, ...] | None = None
    timeout: timedelta = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class DrillConfig:
    """When to test-restore the newest dump; schedule.kind is "cron" or "interval"."""

    schedule: ScheduleSpec
    timezone: str = "UTC"


@dataclass(frozen=True, slots=True)
class RestoreAccount:
    """The account `restore --into`, `drill` and `--target-url` use instead of the job's backup account."""

    user: str | None = None
    password: SecretSource = _NO_PASSWORD


@dataclass(frozen=True, slots=True)
class JobConfig:
    name: str
    engine: str
    databases: tuple[str, ...] | None  # None means every database ("*")
    host: str | None = None
    port: int | None = None
    socket: str | None = None
    server_user: str | None = None  # who owns the server's socket or loopback port, if not its usual account
    user: str | None = None
    password: SecretSource = _NO_PASSWORD
    exclude: tuple[str, ...] = ()
    schedule: ScheduleSpec = ScheduleSpec("manual")
    timezone: str = "UTC"
    jitter: timedelta | None = None
    timeout: timedelta = timedelta(hours=6)
    stall_timeout: timedelta = timedelta(minutes=30)
    connect_timeout: timedelta = timedelta(seconds=10)
    lock_wait_timeout: timedelta = timedelta(minutes=5)
    nice: int = 10
    ionice: str = "best-effort"
    impact: str | None = None  # None: storage.impact
    tool: str | None = None
    extra_args: tuple[str, ...] = ()
    max_backup_age: timedelta | None = None
    retention: RetentionPolicy = RetentionPolicy()
    hooks: HooksConfig = HooksConfig()
    drill: DrillConfig | None = None
    skip_unchanged: bool = False  # no new dump when the engine proves nothing changed since the last one
    restore: RestoreAccount | None = None  # None: restores and drills use the backup account
    options: EngineOptions = field(default_factory=EngineOptions)  # the engine's own keys, typed by the engine
    scope: JobScope = field(default_factory=JobScope)  # which tables of each database (agent/scope.py)


@dataclass(frozen=True, slots=True)
class Config:
    storage: StorageConfig
    log: LogConfig
    retention: RetentionPolicy
    snapshots: SnapshotsConfig | None
    daemon: DaemonConfig
    metrics: MetricsConfig
    notify: NotifyConfig
    jobs: Mapping[str, JobConfig]
    source: Path

    def describe(self) -> dict[str, Any]:
        """The resolved configuration as JSON-able data for `check-config`; secrets never appear."""
        described = {item.name: _describe(getattr(self, item.name)) for item in fields(self)}
        described["jobs"] = {name: _describe_job(job) for name, job in self.jobs.items()}
        described["source"] = str(self.source)
        return described


def _describe_job(job: JobConfig) -> dict[str, Any]:
    """A job's keys as written: the engine's options sit beside the common keys, as in the file."""
    described = {item.name: _describe(getattr(job, item.name)) for item in fields(job) if item.name != "options"}
    described.update(_describe(job.options))
    return described


def _describe(value: object) -> Any:
    if isinstance(value, NotifyConfig):
        return {
            "healthchecks_url": _mask_url(value.healthchecks_url) if value.healthchecks_url else None,
            "webhooks": [_mask_url(url) for url in value.webhooks],
            "timeout": format_duration(value.timeout),
            "retries": value.retries,
        }
    if is_dataclass(value) and not isinstance(value, type | SizeSpec | SecretSource):
        return {item.name: _describe(getattr(value, item.name)) for item in fields(value)}
    if isinstance(value, tuple):
        return [_describe(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _describe(item) for key, item in value.items()}
    return _describe_scalar(value)


def _describe_scalar(value: object) -> Any:
    if isinstance(value, SecretSource):
        return value.describe()
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, time):
        return value.strftime("%H:%M")
    if isinstance(value, SizeSpec | Path):
        return str(value)
    return value


def _mask_url(url: str) -> str:
    """Ping and webhook URLs often carry a token in the path; show only where they point."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}/…"


# --------------------------------------------------------------------------------------------------
# Entry points


def user_config_path(environment: Mapping[str, str]) -> Path | None:
    """Where a user install keeps its config: $XDG_CONFIG_HOME/backup-agent/config.toml, else
    ~/.config/backup-agent/config.toml; None without an absolute home (a service account may have none)."""
    for variable, below in (("XDG_CONFIG_HOME", Path()), ("HOME", Path(".config"))):
        base = environment.get(variable, "")
        if base and os.path.isabs(base):
            return Path(base) / below / USER_CONFIG_NAME
    return None


def config_path_from(argv_value: str | None, environment: Mapping[str, str] | None = None) -> Path:
    """The config file to read: --config, else $BACKUP_AGENT_CONFIG, else the user's own config when
    it exists (a user install, no root needed), else the system one in /etc."""
    environment = os.environ if environment is None else environment
    if argv_value:
        return Path(argv_value)
    from_environment = environment.get(CONFIG_ENV_VARIABLE)
    if from_environment:
        return Path(from_environment)
    user_path = user_config_path(environment)
    if user_path is not None and user_path.exists():
        return user_path
    return DEFAULT_CONFIG_PATH


def _not_found(path: Path) -> str:
    """The missing-config message; for the default path it names both places looked in."""
    user_path = user_config_path(os.environ) if path == DEFAULT_CONFIG_PATH else None
    if user_path is None:
        return f"{path}: config file not found; create it, pass --config or set {CONFIG_ENV_VARIABLE}"
    return (
        f"no config file: neither {user_path} (a user install: scripts/install.sh --user) nor {path} "
        f"(a system install) exists; create one, pass --config or set {CONFIG_ENV_VARIABLE}"
    )


def load_config(path: Path, *, check_permissions: bool = True, check_programs: bool = True) -> Config:
    """Read and validate the config file; with check_permissions, also refuse unsafe storage paths,
    and paths outside storage someone else may have planted (hooks and tools only with check_programs:
    commands that run none, such as `status`, need not refuse them)."""
    try:
        with path.open("rb") as handle:
            file_mode = os.fstat(handle.fileno()).st_mode
            raw = handle.read()
    except FileNotFoundError:
        raise ConfigError(_not_found(path)) from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config file: {error.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start})") from None
    return _parse(text, path, file_mode=file_mode, check_storage=check_permissions, check_programs=check_programs)


def parse_config(text: str, source: Path, *, file_mode: int | None = None) -> Config:
    """Validate config text without touching the disk; file_mode enables the inline-password check."""
    return _parse(text, source, file_mode=file_mode, check_storage=False)


def _parse(
    text: str, source: Path, *, file_mode: int | None, check_storage: bool, check_programs: bool = True
) -> Config:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(_syntax_problem(source, str(error), text)) from None
    problems = _Problems(find_key_lines(text))
    config = _ConfigReader(document, source, file_mode, problems).read()
    if check_storage and config is not None:
        _check_storage_path(config.storage.path, problems)
        for key, problem in unsafe_paths(config, programs=check_programs):
            problems.add(key, problem)
    if problems.messages or config is None:
        raise ConfigError(problems.messages)
    return config


def _syntax_problem(source: Path, message: str, text: str) -> str:
    position = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
    if position:
        return f"{source} line {position.group(1)}: {message[: position.start()]} (column {position.group(2)})"
    end = re.search(r"\s*\(at end of document\)$", message)
    if end:
        return f"{source} line {_unclosed_from(text)}: {message[: end.start()]}: it is never closed"
    return f"{source}: {message}"


def _unclosed_from(text: str) -> int:
    """The line where an array or string that is never closed begins: the one after the longest
    run of leading lines that still parses (every longer run fails, for it holds the opening)."""
    lines = text.splitlines(keepends=True)
    parsed = 0
    for count in range(1, len(lines)):
        try:
            tomllib.loads("".join(lines[:count]))
        except tomllib.TOMLDecodeError:
            continue
        parsed = count
    return min(parsed + 1, max(len(lines), 1))


def _check_storage_path(path: Path, problems: _Problems) -> None:
    """Refuse a storage path others could redirect or tamper with; never creates anything.

    Every existing folder on the way counts, not only the nearest: whoever may write a parent
    may rename the storage folder away and put their own in its place.
    """
    problem = trust.check_place(path)
    if problem is not None:
        problems.add(("storage", "path"), problem.replace("point the setting", "point storage.path"))


def unsafe_paths(config: Config, *, programs: bool = True) -> list[tuple[_KeyPath, str]]:
    """Everything the agent opens, runs or writes outside storage that someone else may have planted.

    The log and metrics files, password files, hooks and tools, each by the key that names it;
    used when the config is loaded (refused) and by `doctor` (reported).
    """
    found: list[tuple[_KeyPath, str | None]] = []
    if config.log.file is not None:
        found.append((("log", "file"), trust.check_written_file(config.log.file, "the log file")))
    if config.metrics.textfile is not None:
        found.append((("metrics", "textfile"), trust.check_written_file(config.metrics.textfile, "the metrics file")))
    for name, job in config.jobs.items():
        key = ("jobs", name)
        if job.password.kind == "file":
            found.append(((*key, "password_file"), trust.check_secret_file(job.password.reference)))
        if job.restore is not None and job.restore.password.kind == "file":
            found.append(((*key, "restore", "password_file"), trust.check_secret_file(job.restore.password.reference)))
        if not programs:
            continue
        for hook in ("before", "after", "on_failure"):
            argv = getattr(job.hooks, hook)
            program = shutil.which(argv[0]) if argv and argv[0] else None
            if program is not None:
                found.append(((*key, "hooks", hook), trust.check_program(program)))
        program = shutil.which(job.tool) if job.tool and job.tool not in ("auto", "builtin") else None
        if program is not None:
            found.append(((*key, "tool"), trust.check_program(program)))
    return [(key, problem) for key, problem in found if problem is not None]


def unreadable_passwords(config: Config) -> list[str]:
    """Each job's password read as a run reads it (file or environment), so `check-config` finds a
    missing or unreadable one now, not the first scheduled run; the secret itself is dropped at once."""
    problems: list[str] = []
    for job in config.jobs.values():
        try:
            job.password.read()
        except ConfigError as error:
            problems.extend(error.problems)
    return problems


# --------------------------------------------------------------------------------------------------
# Line numbers (best effort)

_KEY_PART = re.compile(r"""\s*(?:"((?:[^"\\]|\\.)*)"|'([^']*)'|([A-Za-z0-9_-]+))\s*""")


def find_key_lines(text: str) -> dict[_KeyPath, int]:
    """Map key paths to the line that defines them, from table headers and `key =` lines.

    A scan of the raw text, not a TOML parser: keys inside inline tables and multi-line values
    are not found, and callers fall back to the enclosing key.
    """
    lines: dict[_KeyPath, int] = {}
    table: _KeyPath = ()
    in_multiline_string: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if in_multiline_string:
            if stripped.count(in_multiline_string) % 2 == 1:
                in_multiline_string = None
            continue
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("["):
            header = stripped.strip("[").split("]", 1)[0]
            segments = _split_dotted_key(header)
            if segments:
                table = segments
                lines.setdefault(table, number)
            continue
        key_text, equals, value = stripped.partition("=")
        segments = _split_dotted_key(key_text) if equals else None
        if segments:
            lines.setdefault(table + segments, number)
            for quotes in ('"""', "'''"):
                if value.count(quotes) % 2 == 1:
                    in_multiline_string = quotes
    return lines


def _split_dotted_key(text: str) -> _KeyPath | None:
    segments: list[str] = []
    position = 0
    while True:
        match = _KEY_PART.match(text, position)
        if not match or match.end() == position:
            return None
        segments.append(next(group for group in match.groups() if group is not None))
        position = match.end()
        if position == len(text):
            return tuple(segments)
        if text[position] != ".":
            return None
        position += 1


def render_key_path(path: _KeyPath) -> str:
    """Dotted key path as written in TOML; segments that are not bare keys are quoted."""
    return ".".join(part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else f'"{part}"' for part in path)


class _Problems:
    """Every problem found, each prefixed with its key path and line."""

    def __init__(self, lines: dict[_KeyPath, int]) -> None:
        self.lines = lines
        self.messages: list[str] = []

    def label(self, path: _KeyPath, *, exact: bool = False) -> str:
        """`jobs.main.port (line 12)`; without exact, a key in an inline table gets its parent's line."""
        candidates = [path] if exact else [path[:length] for length in range(len(path), 0, -1)]
        for candidate in candidates:
            if candidate in self.lines:
                return f"{render_key_path(path)} (line {self.lines[candidate]})"
        return render_key_path(path)

    def add(self, path: _KeyPath, message: str, *, exact: bool = False) -> None:
        self.messages.append(f"{self.label(path, exact=exact)}: {message}")

    def add_error(self, error: ConfigError) -> None:
        self.messages.extend(error.problems)


# --------------------------------------------------------------------------------------------------
# Typed reading of one table


def _show(value: object, *, secret: bool = False) -> str:
    """A value for an error message; secrets are described by type only."""
    if isinstance(value, bool):
        kind, shown = "a boolean", "true" if value else "false"
    elif isinstance(value, int):
        kind, shown = "an integer", str(value)
    elif isinstance(value, float):
        kind, shown = "a number", repr(value)
    elif isinstance(value, str):
        kind, shown = "a string", '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    elif isinstance(value, list):
        return "a list"
    elif isinstance(value, dict):
        return "a table"
    else:
        return f"a {type(value).__name__}"
    return kind if secret else shown


class _Table:
    """A TOML table being validated: getters record problems instead of raising, and return the
    default for a missing or invalid value so reading can go on and find the next problem."""

    def __init__(self, data: Mapping[str, Any], path: _KeyPath, problems: _Problems) -> None:
        self.data = data
        self.path = path
        self.problems = problems

    def key(self, key: str) -> _KeyPath:
        return (*self.path, key)

    def label(self, key: str) -> str:
        return self.problems.label(self.key(key))

    def add(self, key: str, message: str) -> None:
        self.problems.add(self.key(key), message)

    def missing(self, key: str, message: str) -> None:
        """A required key is absent: named with the line of the table it belongs in."""
        line = self.problems.lines.get(self.path)
        where = f" (line {line})" if line is not None else ""
        table = f" from [{render_key_path(self.path)}]" if self.path else ""
        self.problems.messages.append(f"{render_key_path(self.key(key))}{where}: missing{table}; {message}")

    def has(self, key: str) -> bool:
        return key in self.data

    @staticmethod
    def show(value: object, *, secret: bool = False) -> str:
        """A value as a problem message quotes it (only its kind when secret)."""
        return _show(value, secret=secret)

    def wrong_type(self, key: str, expected: str, *, secret: bool = False) -> None:
        self.add(key, f"expected {expected}, got {_show(self.data[key], secret=secret)}")

    def text(self, key: str, default: _Default, *, secret: bool = False) -> str | _Default:
        if key not in self.data:
            return default
        value = self.data[key]
        if not isinstance(value, str):
            self.wrong_type(key, "a string", secret=secret)
            return default
        if not value.strip():
            self.add(key, "must not be empty")
            return default
        return value

    def integer(
        self, key: str, default: _Default, *, minimum: int | None = None, maximum: int | None = None
    ) -> int | _Default:
        if key not in self.data:
            return default
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, int):
            self.wrong_type(key, "an integer")
            return default
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            if maximum is None:
                self.add(key, f"must be at least {minimum}, got {value}")
            else:
                self.add(key, f"must be between {minimum} and {maximum}, got {value}")
            return default
        return value

    def flag(self, key: str, default: bool) -> bool:
        if key not in self.data:
            return default
        value = self.data[key]
        if not isinstance(value, bool):
            self.wrong_type(key, "true or false")
            return default
        return value

    def choice(self, key: str, choices: tuple[_Choice, ...], default: _Default) -> _Choice | _Default:
        value = self.text(key, None)
        if value is None:
            return default
        for choice in choices:
            if value == choice:
                return choice
        listed = ", ".join(f'"{choice}"' for choice in choices)
        self.add(key, f"expected one of {listed}, got {_show(value)}")
        return default

    def duration(
        self, key: str, default: _Default, *, allow_zero: bool = False, minimum: timedelta | None = None
    ) -> timedelta | _Default:
        if key not in self.data:
            return default
        try:
            return parse_duration(self.data[key], self.label(key), minimum=minimum, allow_zero=allow_zero)
        except ConfigError as error:
            self.problems.add_error(error)
            return default

    def size(self, key: str, default: _Default, *, allow_percent: bool) -> SizeSpec | _Default:
        if key not in self.data:
            return default
        try:
            return parse_size(self.data[key], self.label(key), allow_percent)
        except ConfigError as error:
            self.problems.add_error(error)
            return default

    def rate(self, key: str) -> int | None:
        if key not in self.data:
            return None
        try:
            return parse_rate(self.data[key], self.label(key))
        except ConfigError as error:
            self.problems.add_error(error)
            return None

    def path_value(self, key: str, default: _Default) -> Path | _Default:
        value = self.text(key, None)
        if value is None:
            return default
        if not value.startswith("/"):
            self.add(key, f"must be an absolute path, got {_show(value)}")
            return default
        return Path(value)

    def strings(self, key: str, *, argv: bool = False, required: bool = False) -> tuple[str, ...] | None:
        """A list of strings; an argv given as one shell string is refused, other lists need no blanks."""
        if key not in self.data:
            return None
        value = self.data[key]
        if isinstance(value, str) and argv:
            self.add(key, "expected a list of strings (argv), not a shell string")
            return None
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            self.wrong_type(key, "a list of strings")
            return None
        if required and not value:
            self.add(key, "must not be an empty list")
            return None
        if not all(item for item in value) and not argv:
            self.add(key, "must not contain empty strings")
            return None
        return tuple(value)

    def table(self, key: str) -> _Table | None:
        if key not in self.data:
            return None
        value = self.data[key]
        if not isinstance(value, dict):
            self.wrong_type(key, f"a table [{render_key_path(self.key(key))}]")
            return None
        return _Table(value, self.key(key), self.problems)

    def reject_unknown(self, known: tuple[str, ...] | set[str], hints: Mapping[str, str] | None = None) -> None:
        """Report keys the schema does not know, suggesting the nearest known one."""
        for key in self.data:
            if key in known:
                continue
            if hints and key in hints:
                self.add(key, hints[key])
                continue
            close = difflib.get_close_matches(key, sorted(known), n=1)
            suggestion = f'; did you mean "{close[0]}"?' if close else ""
            self.add(key, f"unknown key{suggestion}")


ConfigTable = _Table  # the reader each engine gets for its own keys (agent/engines/*/options.py)


def _empty_table(path: _KeyPath, problems: _Problems) -> _Table:
    return _Table({}, path, problems)


# --------------------------------------------------------------------------------------------------
# Sections

_TOP_LEVEL_KEYS = ("storage", "log", "retention", "snapshots", "daemon", "metrics", "notify", "jobs")
_STORAGE_KEYS = (
    "path", "compression", "level", "threads", "max_usage", "reserve", "quota", "immutable", "max_write_rate",
    "impact",
)  # fmt: skip
_LOG_KEYS = ("file", "level", "format", "rotate", "max_size", "keep", "progress_every")
_RETENTION_KEYS = (*RETENTION_COUNTS, "max_age", "keep_min")
_COMMON_JOB_KEYS = (
    "engine", "host", "port", "socket", "server_user", "user", "password", "password_file", "password_env",
    "databases", "exclude", "schedule", "every", "timezone", "jitter", "timeout", "stall_timeout",
    "connect_timeout", "lock_wait_timeout", "nice", "ionice", "impact", "tool", "extra_args", "max_backup_age",
    "retention", "hooks", "drill", "restore",
    "skip_unchanged", "tables", "exclude_tables", "schema_only_tables", "scope",
)  # fmt: skip
_CONNECTION_KEYS = ("host", "port", "socket", "server_user", "user", "password", "password_file", "password_env")
_PASSWORD_KEYS = {"password": "inline", "password_file": "file", "password_env": "env"}


class _ConfigReader:
    """Reads the whole document; each section reader records its problems and returns a value."""

    def __init__(self, document: dict[str, Any], source: Path, file_mode: int | None, problems: _Problems) -> None:
        self.root = _Table(document, (), problems)
        self.source = source
        self.file_mode = file_mode
        self.problems = problems

    def section(self, key: str) -> _Table:
        return self.root.table(key) or _empty_table((key,), self.problems)

    def read(self) -> Config | None:
        self.root.reject_unknown(_TOP_LEVEL_KEYS)
        storage = self.read_storage()
        log = self.read_log()
        retention_table = self.root.table("retention")
        global_rules = self.read_retention_rules(retention_table) if retention_table else {}
        retention = _resolve_global_retention(global_rules)
        snapshots = self.read_snapshots()
        daemon = self.read_daemon()
        metrics = self.read_metrics()
        notify = self.read_notify()
        jobs = self.read_jobs(retention, snapshots is not None)
        if storage is None:
            return None
        return Config(
            storage=storage,
            log=log,
            retention=retention,
            snapshots=snapshots,
            daemon=daemon,
            metrics=metrics,
            notify=notify,
            jobs=MappingProxyType(jobs),
            source=self.source,
        )

    def read_storage(self) -> StorageConfig | None:
        if not self.root.has("storage"):
            self.problems.add(("storage",), 'missing; add a [storage] table with path = "/var/backups/db"')
            return None
        table = self.section("storage")
        table.reject_unknown(_STORAGE_KEYS)
        path = table.path_value("path", None)
        if not table.has("path"):
            table.missing("path", 'say where dumps are kept, e.g. path = "/var/backups/db"')
        compression: Compression = table.choice("compression", COMPRESSIONS, "zstd")
        level: int | None = None
        if compression in COMPRESSION_LEVELS:
            default, lowest, highest = COMPRESSION_LEVELS[compression]
            level = table.integer("level", default, minimum=lowest, maximum=highest)
        elif table.has("level"):
            table.add("level", 'must not be set when compression = "none"')
        storage = StorageConfig(
            path=path or Path("/"),
            compression=compression,
            level=level,
            threads=table.integer("threads", -1, minimum=-1),
            max_usage=table.size("max_usage", None, allow_percent=True),
            reserve=table.size("reserve", _DEFAULT_RESERVE, allow_percent=True),
            quota=table.size("quota", None, allow_percent=False),
            immutable=table.flag("immutable", False),
            max_write_rate=table.rate("max_write_rate"),
            impact=table.choice("impact", IMPACTS, "gentle"),
        )
        return storage if path is not None else None

    def read_log(self) -> LogConfig:
        table = self.section("log")
        table.reject_unknown(_LOG_KEYS)
        return LogConfig(
            file=table.path_value("file", None),
            level=table.choice("level", ("debug", "info", "warning", "error"), "info"),
            format=table.choice("format", ("json", "text"), "json"),
            rotate=table.flag("rotate", True),
            max_size=table.size("max_size", _DEFAULT_LOG_MAX_SIZE, allow_percent=False),
            keep=table.integer("keep", 5, minimum=1),
            progress_every=table.duration("progress_every", timedelta(minutes=5), minimum=timedelta(seconds=1)),
        )

    def read_retention_rules(self, table: _Table) -> dict[str, Any]:
        """Only the rules this table sets, so a job's table can be merged over the global policy."""
        table.reject_unknown(_RETENTION_KEYS)
        rules: dict[str, Any] = {}
        for key in RETENTION_COUNTS:
            count = table.integer(key, None, minimum=0)
            if count is not None:
                rules[key] = count
        max_age = table.duration("max_age", None)
        if max_age is not None:
            rules["max_age"] = max_age
        keep_min = table.integer("keep_min", None, minimum=1)
        if keep_min is not None:
            rules["keep_min"] = keep_min
        return rules

    def read_snapshots(self) -> SnapshotsConfig | None:
        table = self.root.table("snapshots")
        if table is None:
            return None
        table.reject_unknown(("times", "timezone", "margin", "keep"))
        times = self.read_times(table)
        return SnapshotsConfig(
            times=times,
            timezone=self.timezone(table, "UTC"),
            margin=table.duration("margin", timedelta(minutes=30)),
            keep=table.duration("keep", timedelta(days=14)),
        )

    def read_times(self, table: _Table) -> tuple[time, ...]:
        if not table.has("times"):
            table.missing("times", 'list the snapshot times, e.g. times = ["02:00"]')
            return ()
        value = table.data["times"]
        if not isinstance(value, list) or not value:
            table.add("times", f'expected a non-empty list of "HH:MM" times, got {_show(value)}')
            return ()
        times: list[time] = []
        for item in value:
            parsed = _parse_clock_time(item)
            if parsed is None:
                table.add("times", f'expected "HH:MM" times, got {_show(item)}')
            elif parsed in times:
                table.add("times", f"{parsed:%H:%M} is listed twice")
            else:
                times.append(parsed)
        return tuple(sorted(times))

    def read_daemon(self) -> DaemonConfig:
        table = self.section("daemon")
        table.reject_unknown(("max_concurrent_dumps", "shutdown_timeout", "misfire_grace_time"))
        return DaemonConfig(
            max_concurrent_dumps=table.integer("max_concurrent_dumps", 1, minimum=1),
            shutdown_timeout=table.duration("shutdown_timeout", timedelta(seconds=30)),
            misfire_grace_time=table.duration("misfire_grace_time", timedelta(hours=1)),
        )

    def read_metrics(self) -> MetricsConfig:
        table = self.section("metrics")
        table.reject_unknown(("textfile",))
        return MetricsConfig(textfile=table.path_value("textfile", None))

    def read_notify(self) -> NotifyConfig:
        table = self.section("notify")
        table.reject_unknown(("healthchecks_url", "webhooks", "timeout", "retries"))
        healthchecks_url = table.text("healthchecks_url", None)
        if healthchecks_url is not None and not _is_http_url(healthchecks_url):
            table.add("healthchecks_url", "expected an http:// or https:// URL")
            healthchecks_url = None
        webhooks = table.strings("webhooks") or ()
        for index, url in enumerate(webhooks):
            if not _is_http_url(url):
                self.problems.add((*table.path, "webhooks", str(index)), "expected an http:// or https:// URL")
        return NotifyConfig(
            healthchecks_url=healthchecks_url,
            webhooks=webhooks,
            timeout=table.duration("timeout", timedelta(seconds=5)),
            retries=table.integer("retries", 2, minimum=0),
        )

    def read_jobs(self, retention: RetentionPolicy, have_snapshots: bool) -> dict[str, JobConfig]:
        table = self.root.table("jobs")
        if table is None or not table.data:
            self.problems.add(("jobs",), "no jobs; add at least one [jobs.NAME] table")
            return {}
        jobs: dict[str, JobConfig] = {}
        for name in table.data:
            if not JOB_NAME_PATTERN.match(name):
                self.problems.add(
                    ("jobs", name),
                    "a job name must start with a letter or digit and use only letters, digits, "
                    "'_', '.' and '-' (at most 64 characters)",
                    exact=True,
                )
                continue
            job_table = table.table(name)
            if job_table is not None:
                job = _JobReader(self, job_table, name, retention, have_snapshots).read()
                if job is not None:
                    jobs[name] = job
        return jobs

    def timezone(self, table: _Table, default: str) -> str:
        value = table.text("timezone", None)
        if value is None:
            return default
        try:
            return validate_timezone(value, table.label("timezone"))
        except ConfigError as error:
            self.problems.add_error(error)
            return default


class _JobReader:
    """Reads one [jobs.NAME] table, including the checks that depend on its engine."""

    def __init__(
        self,
        config: _ConfigReader,
        table: _Table,
        name: str,
        retention: RetentionPolicy,
        have_snapshots: bool,
    ) -> None:
        self.config = config
        self.table = table
        self.name = name
        self.retention = retention
        self.have_snapshots = have_snapshots

    def read(self) -> JobConfig | None:
        table = self.table
        engine = self.read_engine()
        family = engines.family(engine) if engine is not None else None
        self.reject_keys_of_other_engines(engine)
        host = table.text("host", None)
        socket = table.text("socket", None)
        if host is not None and socket is not None:
            table.add("socket", "set either host or socket, not both")
        if socket is not None and not socket.startswith("/"):
            table.add("socket", f"must be an absolute path, got {_show(socket)}")
        databases = self.read_databases(family)
        exclude = self.read_exclude(databases)
        timezone = self.config.timezone(table, "UTC")
        tool = table.text("tool", None)
        extra_args = table.strings("extra_args", argv=True) or ()
        self.check_extra_args(family, extra_args)
        if engine is None or family is None:
            return None
        options = family.read_options(table)
        scope = read_scope(table, databases, engine, family.table_scope, extra_args)
        return JobConfig(
            name=self.name,
            engine=engine,
            databases=databases,
            host=host,
            port=table.integer("port", None, minimum=1, maximum=65535),
            socket=socket,
            server_user=self.read_server_user(),
            user=table.text("user", None),
            password=self.read_password(),
            exclude=exclude,
            schedule=self.read_schedule(table, allow_snapshots=True),
            timezone=timezone,
            jitter=table.duration("jitter", None, allow_zero=True),
            timeout=table.duration("timeout", timedelta(hours=6)),
            stall_timeout=table.duration("stall_timeout", timedelta(minutes=30)),
            connect_timeout=table.duration("connect_timeout", timedelta(seconds=10)),
            lock_wait_timeout=table.duration("lock_wait_timeout", timedelta(minutes=5)),
            nice=table.integer("nice", 10, minimum=0, maximum=19),
            ionice=table.choice("ionice", ("idle", "best-effort", "none"), "best-effort"),
            impact=table.choice("impact", IMPACTS, None),
            tool=tool,
            extra_args=extra_args,
            max_backup_age=table.duration("max_backup_age", None),
            retention=self.read_retention(),
            hooks=self.read_hooks(),
            drill=self.read_drill(timezone),
            skip_unchanged=table.flag("skip_unchanged", False),
            restore=self.read_restore_account(family),
            options=options,
            scope=scope,
        )

    def read_engine(self) -> str | None:
        table = self.table
        if not table.has("engine"):
            table.missing("engine", f"say one of {', '.join(engines.engine_names())}")
            return None
        value = table.text("engine", None)
        if value is None:
            return None
        engine = engines.canonical_name(value)
        if engine is None:
            names = ", ".join(f'"{name}"' for name in (*engines.engine_names(), *engines.alias_names()))
            table.add("engine", f"expected one of {names}, got {_show(value)}")
        return engine

    def reject_keys_of_other_engines(self, engine: str | None) -> None:
        owners: dict[str, list[str]] = {}
        for owner in engines.engine_names():
            for key in engines.family(owner).option_keys:
                owners.setdefault(key, []).append(owner)
        if engine is None:
            self.table.reject_unknown({*_COMMON_JOB_KEYS, *owners})
            return
        family = engines.family(engine)
        known = {*_COMMON_JOB_KEYS, *family.option_keys}
        hints = {
            key: f"not a setting of engine {engine} (it is for {' and '.join(names)})"
            for key, names in owners.items()
            if key not in known
        }
        if not family.connects:
            known -= set(_CONNECTION_KEYS)
            hints.update(
                (key, f"not a setting of engine {engine} (a {engine} job reads database files directly)")
                for key in _CONNECTION_KEYS
            )
        self.table.reject_unknown(known, hints)

    def read_server_user(self) -> str | None:
        """The account the server runs as when it is not the engine's usual one (postgres, mysql...)."""
        name = self.table.text("server_user", None)
        if name is None:
            return None
        try:
            pwd.getpwnam(name)
        except KeyError:
            self.table.add("server_user", f"no account named {_show(name)} on this machine")
            return None
        return name

    def read_databases(self, family: EngineFamily | None) -> tuple[str, ...] | None:
        table = self.table
        if not table.has("databases"):
            table.missing("databases", 'say "*" or list the databases')
            return None
        value = table.data["databases"]
        if value == "*":
            if family is not None:
                family.check_databases(table, None)
            return None
        if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
            table.add("databases", f'expected "*" or a non-empty list of names, got {_show(value)}')
            return None
        names: list[str] = []
        for item in value:
            if not item.strip():
                table.add("databases", "database names must not be empty")
            elif item in names:
                table.add("databases", f"{_show(item)} is listed twice")
            else:
                names.append(item)
        if family is not None:
            family.check_databases(table, tuple(names))
        return tuple(names)

    def read_exclude(self, databases: tuple[str, ...] | None) -> tuple[str, ...]:
        exclude = self.table.strings("exclude") or ()
        if exclude and databases is not None:
            self.table.add("exclude", 'only applies when databases = "*"')
        return exclude

    def check_extra_args(self, family: EngineFamily | None, arguments: tuple[str, ...]) -> None:
        for argument in arguments:
            problem = family.refused_argument(argument) if family else refused_password_argument(argument)
            if problem:
                self.table.add("extra_args", problem)

    def read_password(self, table: _Table | None = None) -> SecretSource:
        """The password source of a job (or of its [restore] table): at most one of the three keys."""
        table = table or self.table
        given = [key for key in _PASSWORD_KEYS if table.has(key)]
        if len(given) > 1:
            table.add("password", f"set only one of {', '.join(given)}")
            return _NO_PASSWORD
        if not given:
            return _NO_PASSWORD
        key_path = table.label(given[0])  # with its line: a run that cannot read it says where it is set
        if given[0] == "password":
            return self.read_inline_password(table, key_path)
        if given[0] == "password_file":
            path = table.path_value("password_file", None)
            return SecretSource("file", str(path), key_path=key_path) if path else _NO_PASSWORD
        variable = table.text("password_env", None)
        if variable is not None and not ENV_NAME_PATTERN.match(variable):
            table.add("password_env", f"expected an environment variable name, got {_show(variable)}")
            return _NO_PASSWORD
        return SecretSource("env", variable, key_path=key_path) if variable else _NO_PASSWORD

    def read_inline_password(self, table: _Table, key_path: str) -> SecretSource:
        """An inline password is accepted only from a config file nobody else can read."""
        value = table.text("password", None, secret=True)
        if value is None:
            return _NO_PASSWORD
        mode = self.config.file_mode
        if mode is not None and mode & 0o077:
            table.add(
                "password",
                f"an inline password needs the config file to be private "
                f"(chmod 600 {self.config.source}); it is readable by group/others",
            )
        return SecretSource("inline", inline=Secret(value), key_path=key_path)

    def read_schedule(self, table: _Table, *, allow_snapshots: bool) -> ScheduleSpec:
        if table.has("schedule") and table.has("every"):
            table.add("every", "set either schedule or every, not both")
            return ScheduleSpec("manual")
        every = table.duration("every", None, minimum=timedelta(seconds=1))
        if every is not None:
            return ScheduleSpec("interval", every=every)
        expression = table.text("schedule", None)
        if expression is None:
            return ScheduleSpec("manual")
        if expression == "before-snapshots" and allow_snapshots:
            if not self.have_snapshots:
                table.add("schedule", '"before-snapshots" needs a [snapshots] table with the snapshot times')
            return ScheduleSpec("before-snapshots")
        try:
            return ScheduleSpec("cron", cron=validate_cron(expression, table.label("schedule")))
        except ConfigError as error:
            self.config.problems.add_error(error)
            return ScheduleSpec("manual")

    def read_retention(self) -> RetentionPolicy:
        table = self.table.table("retention")
        if table is None:
            return self.retention
        return replace(self.retention, **self.config.read_retention_rules(table))

    def read_hooks(self) -> HooksConfig:
        table = self.table.table("hooks")
        if table is None:
            return HooksConfig()
        table.reject_unknown(("before", "after", "on_failure", "timeout"))
        return HooksConfig(
            before=table.strings("before", argv=True, required=True),
            after=table.strings("after", argv=True, required=True),
            on_failure=table.strings("on_failure", argv=True, required=True),
            timeout=table.duration("timeout", timedelta(seconds=60)),
        )

    def read_drill(self, job_timezone: str) -> DrillConfig | None:
        table = self.table.table("drill")
        if table is None:
            return None
        table.reject_unknown(("schedule", "every", "timezone"))
        schedule = self.read_schedule(table, allow_snapshots=False)
        if not table.has("schedule") and not table.has("every"):
            table.missing("schedule", 'a drill needs schedule = "<cron>" or every = "<duration>"')
        return DrillConfig(schedule=schedule, timezone=self.config.timezone(table, job_timezone))

    def read_restore_account(self, family: EngineFamily | None) -> RestoreAccount | None:
        """[jobs.NAME.restore]: a user and its password source, read exactly as the job's own."""
        table = self.table.table("restore")
        if table is None:
            return None
        table.reject_unknown(("user", *_PASSWORD_KEYS))
        if family is not None and not family.connects:
            table.add("user", "a job that reads database files directly has no restore account")
        user = table.text("user", None)
        if user is not None and not user.strip():
            table.add("user", "must not be empty")
        if not table.has("user"):
            table.missing("user", 'a restore account needs user = "..." (and password_file, password_env or password)')
        return RestoreAccount(user=user, password=self.read_password(table))


def _resolve_global_retention(rules: dict[str, Any]) -> RetentionPolicy:
    """The defaults apply only while no keep/max_age rule is set; set rules replace them entirely."""
    if any(key != "keep_min" for key in rules):
        cleared = RetentionPolicy(keep_daily=None, keep_weekly=None, keep_monthly=None)
        return replace(cleared, **rules)
    return replace(RetentionPolicy(), **rules)


def _parse_clock_time(value: object) -> time | None:
    if isinstance(value, time):
        return value
    if not isinstance(value, str) or not re.fullmatch(r"\d{1,2}:\d{2}", value.strip()):
        return None
    hour, minute = (int(part) for part in value.strip().split(":"))
    if hour > 23 or minute > 59:
        return None
    return time(hour, minute)


def _is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)
