"""The config file: what a user writes, what the agent makes of it, and how it says what is wrong."""

from __future__ import annotations

import json
import os
from datetime import time, timedelta
from pathlib import Path

import pytest

from agent.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    HooksConfig,
    RetentionPolicy,
    ScheduleSpec,
    config_path_from,
    find_key_lines,
    load_config,
    parse_config,
)
from agent.engines.mongo.options import MongoOptions
from agent.engines.mysql.options import MysqlOptions
from agent.engines.postgres.options import PostgresOptions
from agent.errors import ConfigError
from agent.secrets import Secret, SecretSource
from agent.units import SizeSpec

SOURCE = Path("/etc/backup-agent/config.toml")
PASSWORD = "Tr0ub4dor-unique-7731"

STORAGE = '[storage]\npath = "/var/backups/db"\n'
MINIMAL = STORAGE + '\n[jobs.main]\nengine = "postgresql"\ndatabases = "*"\n'


def parse(text: str, file_mode: int | None = None) -> Config:
    return parse_config(text, SOURCE, file_mode=file_mode)


def problems_of(text: str, file_mode: int | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(text, file_mode)
    return caught.value.problems


def job(body: str, engine: str = "postgresql", databases: str = '"*"') -> str:
    """A valid config with one job `main` whose table also holds `body`."""
    return STORAGE + f'\n[jobs.main]\nengine = "{engine}"\ndatabases = {databases}\n{body}\n'


# ------------------------------------------------------------------------------------------------
# A minimal config and its defaults


def test_a_minimal_config_gets_every_default() -> None:
    config = parse(MINIMAL)
    storage = config.storage
    assert storage.path == Path("/var/backups/db")
    assert (storage.compression, storage.level, storage.threads) == ("zstd", 3, -1)
    assert storage.max_usage is None
    assert storage.reserve == SizeSpec(bytes=None, percent=10.0)
    assert storage.quota is None
    assert storage.immutable is False
    assert storage.max_write_rate is None
    assert (config.log.file, config.log.level, config.log.format) == (None, "info", "json")
    assert (config.log.rotate, config.log.keep) == (True, 5)
    assert config.log.max_size == SizeSpec(bytes=10 * 2**20, percent=None)
    assert config.retention == RetentionPolicy(
        keep_last=None, keep_hourly=None, keep_daily=7, keep_weekly=4, keep_monthly=3, keep_yearly=None,
        max_age=None, keep_min=2,
    )  # fmt: skip
    assert config.snapshots is None
    assert config.daemon.max_concurrent_dumps == 1
    assert config.daemon.shutdown_timeout == timedelta(seconds=30)
    assert config.daemon.misfire_grace_time == timedelta(hours=1)
    assert config.metrics.textfile is None
    assert (config.notify.healthchecks_url, config.notify.webhooks) == (None, ())
    assert (config.notify.timeout, config.notify.retries) == (timedelta(seconds=5), 2)
    assert config.source == SOURCE


def test_a_minimal_job_gets_every_default() -> None:
    main = parse(MINIMAL).jobs["main"]
    assert main.name == "main"
    assert main.databases is None
    assert (main.host, main.port, main.socket, main.user) == (None, None, None, None)
    assert main.password == SecretSource("none")
    assert main.exclude == ()
    assert main.schedule == ScheduleSpec("manual")
    assert main.timezone == "UTC"
    assert main.jitter is None
    assert main.timeout == timedelta(hours=6)
    assert main.stall_timeout == timedelta(minutes=30)
    assert main.connect_timeout == timedelta(seconds=10)
    assert main.lock_wait_timeout == timedelta(minutes=5)
    assert (main.nice, main.ionice, main.tool, main.extra_args) == (10, "best-effort", None, ())
    assert main.max_backup_age is None
    assert main.retention == parse(MINIMAL).retention
    assert main.options == PostgresOptions(include_globals=True)
    assert (MysqlOptions().include_grants, MysqlOptions().include_system) == (False, False)
    assert (MysqlOptions().lock_for_consistency, MysqlOptions().ssl_ca, MysqlOptions().ssl_mode) == (False, None, None)
    assert (MongoOptions().uri, MongoOptions().auth_source) == (None, None)
    assert (MongoOptions().tls, MongoOptions().point_in_time) == (False, False)
    assert main.hooks == HooksConfig(before=None, after=None, on_failure=None, timeout=timedelta(seconds=60))
    assert main.drill is None


def test_gzip_defaults_to_level_6_and_no_compression_has_no_level() -> None:
    assert parse(MINIMAL.replace('/db"\n', '/db"\ncompression = "gzip"\n')).storage.level == 6
    assert parse(MINIMAL.replace('/db"\n', '/db"\ncompression = "none"\n')).storage.level is None


def test_the_config_cannot_be_changed_after_loading() -> None:
    config = parse(MINIMAL)
    with pytest.raises(AttributeError):
        config.storage.path = Path("/elsewhere")  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.jobs["other"] = config.jobs["main"]  # type: ignore[index]


# ------------------------------------------------------------------------------------------------
# A full config


FULL = f"""
[storage]
path = "/srv/dumps"
compression = "gzip"
level = 9
threads = 0
max_usage = "80%"
reserve = "20GiB"
quota = "1TiB"
immutable = true
max_write_rate = "50MiB/s"

[log]
file = "/var/log/backup-agent.log"
level = "debug"
format = "text"
max_size = "1MiB"
keep = 2

[retention]
keep_daily = 14
max_age = "90d"

[snapshots]
times = ["14:00", "02:00"]
timezone = "Europe/Berlin"
margin = "45m"

[daemon]
max_concurrent_dumps = 2
shutdown_timeout = "2m"

[metrics]
textfile = "/var/lib/node_exporter/backup.prom"

[notify]
healthchecks_url = "https://hc-ping.com/0f9a-secret-uuid"
webhooks = ["https://hooks.example.com/T0/abc"]
retries = 0

[jobs.warehouse]
engine = "postgres"
host = "db.internal"
port = 5433
user = "backup"
password_env = "WAREHOUSE_PASSWORD"
databases = "*"
exclude = ["template*", "scratch_*"]
schedule = "before-snapshots"
timezone = "Europe/Berlin"
jitter = "0s"
include_globals = false
extra_args = ["--no-comments"]

[jobs.warehouse.retention]
keep_last = 5

[jobs.warehouse.hooks]
before = ["/usr/local/bin/pause-etl"]
after = ["/usr/local/bin/resume-etl", "--now"]
timeout = "5m"

[jobs.warehouse.drill]
schedule = "0 5 * * sun"

[jobs."shop.eu"]
engine = "mariadb"
socket = "/run/mysqld/mysqld.sock"
password = "{PASSWORD}"
databases = ["shop", "auth"]
every = "6h"
include_grants = true
ssl_mode = "verify_ca"

[jobs.events]
engine = "mongo"
uri = "mongodb://backup@mongo1,mongo2/?replicaSet=rs0"
password_file = "/etc/backup-agent/mongo.pw"
databases = ["events"]
tool = "builtin"
point_in_time = true

[jobs.local]
engine = "sqlite"
databases = ["/var/lib/app/app.db"]
every = "4s"
"""


def test_a_full_config_is_read_into_typed_values() -> None:
    config = parse(FULL, file_mode=0o100600)
    assert config.storage.level == 9
    assert config.storage.max_usage == SizeSpec(bytes=None, percent=80.0)
    assert config.storage.reserve == SizeSpec(bytes=20 * 2**30, percent=None)
    assert config.storage.max_write_rate == 50 * 2**20
    assert config.snapshots is not None
    assert config.snapshots.times == (time(2, 0), time(14, 0))
    assert config.snapshots.margin == timedelta(minutes=45)
    warehouse = config.jobs["warehouse"]
    assert warehouse.schedule == ScheduleSpec("before-snapshots")
    assert warehouse.jitter == timedelta(0)
    assert warehouse.password == SecretSource(
        "env", "WAREHOUSE_PASSWORD", key_path="jobs.warehouse.password_env (line 46)"
    )  # the key path carries its line
    assert warehouse.hooks.after == ("/usr/local/bin/resume-etl", "--now")
    assert warehouse.drill is not None
    assert warehouse.drill.schedule == ScheduleSpec("cron", cron="0 5 * * sun")
    assert warehouse.drill.timezone == "Europe/Berlin"
    shop = config.jobs["shop.eu"]
    assert shop.databases == ("shop", "auth")
    assert shop.schedule == ScheduleSpec("interval", every=timedelta(hours=6))
    assert shop.password.read() == Secret(PASSWORD)
    assert isinstance(shop.options, MysqlOptions) and shop.options.ssl_mode == "VERIFY_CA"
    assert config.jobs["events"].tool == "builtin"
    assert config.jobs["local"].schedule.every == timedelta(seconds=4)


@pytest.mark.parametrize(
    ("written", "engine"), [("postgres", "postgresql"), ("mariadb", "mysql"), ("mongo", "mongodb")]
)
def test_engine_aliases_are_normalised(written: str, engine: str) -> None:
    assert parse(job("", engine=written, databases='["a"]')).jobs["main"].engine == engine


def test_a_job_retention_overrides_only_the_rules_it_sets() -> None:
    config = parse(FULL, file_mode=0o100600)
    assert config.retention == RetentionPolicy(
        keep_daily=14, keep_weekly=None, keep_monthly=None, max_age=timedelta(days=90)
    )
    assert config.jobs["warehouse"].retention == RetentionPolicy(
        keep_last=5, keep_daily=14, keep_weekly=None, keep_monthly=None, max_age=timedelta(days=90)
    )
    assert config.jobs["shop.eu"].retention == config.retention


def test_a_job_retention_merges_over_the_defaults_when_nothing_is_set_globally() -> None:
    main = parse(job("[jobs.main.retention]\nkeep_daily = 30\nkeep_weekly = 0\n")).jobs["main"]
    assert main.retention == RetentionPolicy(keep_daily=30, keep_weekly=0, keep_monthly=3)


def test_describe_is_json_and_never_shows_a_secret() -> None:
    described = parse(FULL, file_mode=0o100600).describe()
    text = json.dumps(described)
    assert PASSWORD not in text
    assert "secret-uuid" not in text
    assert "/T0/abc" not in text
    assert described["jobs"]["shop.eu"]["password"] == "inline (hidden)"
    assert described["jobs"]["warehouse"]["password"] == "env WAREHOUSE_PASSWORD"
    assert described["storage"]["reserve"] == "20 GiB"
    assert described["jobs"]["shop.eu"]["schedule"]["every"] == "6h"


# ------------------------------------------------------------------------------------------------
# Broken configs: every one is refused, naming the key to fix

BROKEN: list[tuple[str, str, str]] = [
    ("no storage table", '[jobs.main]\nengine = "sqlite"\ndatabases = ["/a.db"]\n', "storage"),
    ("no storage path", '[storage]\n[jobs.main]\nengine = "sqlite"\ndatabases = ["/a.db"]\n', "storage.path"),
    ("relative storage path", MINIMAL.replace('"/var/backups/db"', '"backups"'), "storage.path"),
    ("unknown compression", MINIMAL.replace('/db"\n', '/db"\ncompression = "lz4"\n'), "storage.compression"),
    ("zstd level too high", MINIMAL.replace('/db"\n', '/db"\nlevel = 22\n'), "storage.level"),
    (
        "gzip level too high",
        MINIMAL.replace('/db"\n', '/db"\ncompression = "gzip"\nlevel = 12\n'),
        "storage.level",
    ),
    (
        "level without compression",
        MINIMAL.replace('/db"\n', '/db"\ncompression = "none"\nlevel = 1\n'),
        "storage.level",
    ),
    ("percent quota", MINIMAL.replace('/db"\n', '/db"\nquota = "50%"\n'), "storage.quota"),
    ("max_usage over 100%", MINIMAL.replace('/db"\n', '/db"\nmax_usage = "150%"\n'), "storage.max_usage"),
    (
        "rate without per second",
        MINIMAL.replace('/db"\n', '/db"\nmax_write_rate = "5MB"\n'),
        "storage.max_write_rate",
    ),
    ("immutable as a string", MINIMAL.replace('/db"\n', '/db"\nimmutable = "yes"\n'), "storage.immutable"),
    ("unknown top-level table", MINIMAL + "[storag]\n", "storag"),
    ("log level unknown", MINIMAL + '[log]\nlevel = "verbose"\n', "log.level"),
    ("log keep zero", MINIMAL + "[log]\nkeep = 0\n", "log.keep"),
    ("negative retention", MINIMAL + "[retention]\nkeep_daily = -1\n", "retention.keep_daily"),
    ("keep_min zero", MINIMAL + "[retention]\nkeep_min = 0\n", "retention.keep_min"),
    ("snapshot time not a time", MINIMAL + '[snapshots]\ntimes = ["25:00"]\n', "snapshots.times"),
    ("snapshot times empty", MINIMAL + "[snapshots]\ntimes = []\n", "snapshots.times"),
    (
        "snapshot timezone unknown",
        MINIMAL + '[snapshots]\ntimes = ["02:00"]\ntimezone = "Mars/Base"\n',
        "snapshots.timezone",
    ),
    ("no concurrency", MINIMAL + "[daemon]\nmax_concurrent_dumps = 0\n", "daemon.max_concurrent_dumps"),
    (
        "healthchecks not http",
        MINIMAL + '[notify]\nhealthchecks_url = "ftp://x/y"\n',
        "notify.healthchecks_url",
    ),
    ("no jobs", STORAGE, "jobs"),
    ("bad job name", STORAGE + '[jobs."my job"]\nengine = "postgresql"\ndatabases = "*"\n', 'jobs."my job"'),
    (
        "job name with underscore first",
        STORAGE + '[jobs._x]\nengine = "postgresql"\ndatabases = "*"\n',
        "jobs._x",
    ),
    ("engine missing", STORAGE + '[jobs.main]\ndatabases = "*"\n', "jobs.main.engine"),
    ("engine unknown", job("").replace('"postgresql"', '"oracle"'), "jobs.main.engine"),
    ("databases missing", STORAGE + '[jobs.main]\nengine = "postgresql"\n', "jobs.main.databases"),
    ("databases empty", job("", databases="[]"), "jobs.main.databases"),
    ("databases not a list", job("", databases='"shop"'), "jobs.main.databases"),
    ("sqlite with star", job("", engine="sqlite"), "jobs.main.databases"),
    ("sqlite relative path", job("", engine="sqlite", databases='["app.db"]'), "jobs.main.databases"),
    ("sqlite with host", job('host = "db"', engine="sqlite", databases='["/a.db"]'), "jobs.main.host"),
    ("port as string", job('port = "abc"'), "jobs.main.port"),
    ("port out of range", job("port = 70000"), "jobs.main.port"),
    ("host and socket", job('host = "db"\nsocket = "/run/pg.sock"'), "jobs.main.socket"),
    ("typo in a key", job("prot = 5432"), "jobs.main.prot"),
    ("key of another engine", job("include_grants = true"), "jobs.main.include_grants"),
    ("exclude with a list", job('exclude = ["x*"]', databases='["a"]'), "jobs.main.exclude"),
    ("schedule and every", job('schedule = "0 3 * * *"\nevery = "6h"'), "jobs.main.every"),
    ("broken cron", job('schedule = "0 3 * *"'), "jobs.main.schedule"),
    ("before-snapshots without snapshots", job('schedule = "before-snapshots"'), "jobs.main.schedule"),
    ("every zero", job('every = "0s"'), "jobs.main.every"),
    ("unknown timezone", job('timezone = "Moon/Base"'), "jobs.main.timezone"),
    ("negative jitter", job('jitter = "-5s"'), "jobs.main.jitter"),
    ("nice too high", job("nice = 20"), "jobs.main.nice"),
    ("ionice unknown", job('ionice = "realtime"'), "jobs.main.ionice"),
    ("extra_args as a string", job('extra_args = "--no-owner --clean"'), "jobs.main.extra_args"),
    ("postgres custom format", job('extra_args = ["-Fc"]'), "jobs.main.extra_args"),
    ("postgres output file", job('extra_args = ["--file=/tmp/x"]'), "jobs.main.extra_args"),
    ("mysql compact", job('extra_args = ["--compact"]', engine="mysql"), "jobs.main.extra_args"),
    ("mysql all databases", job('extra_args = ["-A"]', engine="mysql"), "jobs.main.extra_args"),
    ("hook as a string", job('[jobs.main.hooks]\nbefore = "systemctl stop etl"'), "jobs.main.hooks.before"),
    ("hook empty", job("[jobs.main.hooks]\nafter = []"), "jobs.main.hooks.after"),
    ("drill without a schedule", job('[jobs.main.drill]\ntimezone = "UTC"'), "jobs.main.drill.schedule"),
    ("mongo tool unknown", job('tool = "mongodmp"', engine="mongodb"), "jobs.main.tool"),
    ("job retention typo", job("[jobs.main.retention]\nkeep_dialy = 3"), "jobs.main.retention.keep_dialy"),
]

SECRET_LEAKS: list[tuple[str, str, str]] = [
    ("password as a number", job("password = 77310042"), "jobs.main.password"),
    (
        "password and password_file",
        job(f'password = "{PASSWORD}"\npassword_file = "/etc/pw"'),
        "jobs.main.password",
    ),
    (
        "password on the mysql command line",
        job(f'extra_args = ["--password={PASSWORD}"]', engine="mysql"),
        "jobs.main.extra_args",
    ),
    (
        "short password on the mysql command line",
        job(f'extra_args = ["-p{PASSWORD}"]', engine="mysql"),
        "jobs.main.extra_args",
    ),
    (
        "connection string with a password as the postgres database",
        job(f'extra_args = ["-dpostgresql://u:{PASSWORD}@h/db"]'),
        "jobs.main.extra_args",
    ),
    ("abbreviated password option", job(f'extra_args = ["--pass={PASSWORD}"]'), "jobs.main.extra_args"),
    (
        "password in a mongodb uri",
        job(f'uri = "mongodb://backup:{PASSWORD}@mongo1/"', engine="mongodb"),
        "jobs.main.uri",
    ),
    (
        "mongodb uri with a wrong scheme",
        job(f'uri = "mysql://u:{PASSWORD}@h/"', engine="mongodb"),
        "jobs.main.uri",
    ),
    (
        "inline password on sqlite",
        job(f'password = "{PASSWORD}"', engine="sqlite", databases='["/a.db"]'),
        "jobs.main.password",
    ),
]


@pytest.mark.parametrize(("text", "key_path"), [case[1:] for case in BROKEN], ids=[case[0] for case in BROKEN])
def test_a_broken_config_is_refused_naming_the_key_to_fix(text: str, key_path: str) -> None:
    problems = problems_of(text)
    assert any(problem.startswith((f"{key_path}:", f"{key_path} (line")) for problem in problems), problems


@pytest.mark.parametrize(
    ("text", "key_path"), [case[1:] for case in SECRET_LEAKS], ids=[case[0] for case in SECRET_LEAKS]
)
def test_a_refused_password_is_never_echoed(text: str, key_path: str) -> None:
    problems = problems_of(text, file_mode=0o100600)
    assert any(problem.startswith((f"{key_path}:", f"{key_path} (line")) for problem in problems), problems
    assert not any(PASSWORD in problem or "77310042" in problem for problem in problems)


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of(job('port = "abc"\nnice = 99\nionice = "fast"\nprot = 1'))
    assert len(problems) == 4


def test_problems_carry_the_line_they_were_written_on() -> None:
    text = job('user = "backup"\nport = "abc"\nprot = 1')
    problems = problems_of(text)
    assert 'jobs.main.port (line 8): expected an integer, got "abc"' in problems
    assert 'jobs.main.prot (line 9): unknown key; did you mean "port"?' in problems


def test_a_wrong_engine_key_says_which_engine_it_belongs_to() -> None:
    problems = problems_of(job("include_grants = true"))
    assert problems == ["jobs.main.include_grants (line 7): not a setting of engine postgresql (it is for mysql)"]


def test_a_missing_key_is_named_with_the_line_of_its_table() -> None:
    problems = problems_of(STORAGE + '[jobs.x]\nengine = "mysql"\n')
    line = (STORAGE + "[jobs.x]").count("\n") + 1
    assert problems == [f'jobs.x.databases (line {line}): missing from [jobs.x]; say "*" or list the databases']


def test_a_quoted_job_name_gets_its_lines_too() -> None:
    text = STORAGE + '\n[jobs."shop.eu"]\nengine = "mysql"\ndatabases = "*"\nnice = 40\n'
    assert problems_of(text) == ['jobs."shop.eu".nice (line 7): must be between 0 and 19, got 40']


def test_line_numbers_come_from_headers_and_assignments() -> None:
    lines = find_key_lines('# c\n[a]\nx = 1\n[a."b c".d]\n"y" = 2\nz.w = """\nq = 1\n"""\n')
    assert lines == {("a",): 2, ("a", "x"): 3, ("a", "b c", "d"): 4, ("a", "b c", "d", "y"): 5,
                     ("a", "b c", "d", "z", "w"): 6}  # fmt: skip


def test_a_toml_syntax_error_names_the_file_and_line() -> None:
    problems = problems_of(MINIMAL + "nice = \n")
    assert len(problems) == 1
    assert problems[0].startswith(f"{SOURCE} line 7: ")


def test_a_mysql_password_option_is_named_without_its_value() -> None:
    problems = problems_of(job(f'extra_args = ["--password={PASSWORD}"]', engine="mysql"))
    assert problems[0].startswith('jobs.main.extra_args (line 7): "--password" is not allowed')


def test_a_postgres_format_option_is_named_by_its_flag() -> None:
    problems = problems_of(job('extra_args = ["-Fc"]'))
    assert problems == ['jobs.main.extra_args (line 7): "-F…" is not allowed: the agent chooses the dump format']


# ------------------------------------------------------------------------------------------------
# Inline passwords and file permissions


def test_an_inline_password_is_refused_in_a_config_others_can_read() -> None:
    problems = problems_of(job(f'password = "{PASSWORD}"'), file_mode=0o100644)
    assert problems == [
        "jobs.main.password (line 7): an inline password needs the config file to be private "
        f"(chmod 600 {SOURCE}); it is readable by group/others"
    ]


def test_an_inline_password_is_accepted_in_a_private_config() -> None:
    password = parse(job(f'password = "{PASSWORD}"'), file_mode=0o100600).jobs["main"].password
    assert password.kind == "inline"
    assert password.key_path == "jobs.main.password (line 7)"
    assert password.read() == Secret(PASSWORD)


def test_a_password_file_is_remembered_with_its_key_path() -> None:
    password = parse(job('password_file = "/etc/backup-agent/pg.pw"')).jobs["main"].password
    assert password == SecretSource("file", "/etc/backup-agent/pg.pw", key_path="jobs.main.password_file (line 7)")


def write_config(directory: Path, storage: Path, mode: int = 0o600) -> Path:
    path = directory / "config.toml"
    path.write_text(MINIMAL.replace("/var/backups/db", str(storage)), encoding="utf-8")
    path.chmod(mode)
    return path


def test_load_config_checks_the_permissions_of_the_file_it_read(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(job(f'password = "{PASSWORD}"').replace("/var/backups/db", str(tmp_path)), encoding="utf-8")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by group/others"):
        load_config(path)
    path.chmod(0o600)
    assert load_config(path).jobs["main"].password.kind == "inline"


def test_a_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.toml")


def test_a_symlinked_storage_path_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(ConfigError, match=r"storage\.path \(line 2\): .*symbolic link"):
        load_config(write_config(tmp_path, tmp_path / "link"))


def test_a_storage_path_writable_by_others_is_refused(tmp_path: Path) -> None:
    storage = tmp_path / "dumps"
    storage.mkdir()
    storage.chmod(0o777)
    with pytest.raises(ConfigError, match=rf"writable by others; chmod o-w {storage}"):
        load_config(write_config(tmp_path, storage))


def test_a_missing_storage_path_is_judged_by_its_parent_and_not_created(tmp_path: Path) -> None:
    parent = tmp_path / "open"
    parent.mkdir()
    parent.chmod(0o777)
    with pytest.raises(ConfigError, match=rf"{parent} is writable by others"):
        load_config(write_config(tmp_path, parent / "dumps"))
    assert not (parent / "dumps").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can make a root-owned sticky directory")
def test_a_sticky_root_owned_parent_like_tmp_is_accepted(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    config = load_config(write_config(tmp_path, shared / "dumps"))
    assert config.storage.path == shared / "dumps"


def test_permission_checks_can_be_turned_off(tmp_path: Path) -> None:
    storage = tmp_path / "dumps"
    storage.mkdir()
    storage.chmod(0o777)
    assert load_config(write_config(tmp_path, storage), check_permissions=False).storage.path == storage


# ------------------------------------------------------------------------------------------------
# Where the config file is


def test_the_config_path_comes_from_argv_then_environment_then_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BACKUP_AGENT_CONFIG", "/from/env.toml")
    assert config_path_from("/from/argv.toml") == Path("/from/argv.toml")
    assert config_path_from(None) == Path("/from/env.toml")
    monkeypatch.delenv("BACKUP_AGENT_CONFIG")
    assert config_path_from(None) == DEFAULT_CONFIG_PATH == Path("/etc/backup-agent/config.toml")


# ------------------------------------------------------------------------------------------------
# impact: how much a dump may take from the application


def test_impact_is_gentle_by_default_and_a_job_may_choose_its_own() -> None:
    from agent.runner import impact_of

    config = parse(MINIMAL)
    assert config.storage.impact == "gentle" and config.jobs["main"].impact is None
    assert impact_of(config, config.jobs["main"]) == "gentle"
    config = parse(STORAGE.replace("[storage]", '[storage]\nimpact = "fastest"') + MINIMAL[len(STORAGE) :])
    assert impact_of(config, config.jobs["main"]) == "fastest"
    config = parse(job('impact = "fastest"'))
    assert config.storage.impact == "gentle" and impact_of(config, config.jobs["main"]) == "fastest"


def test_an_unknown_impact_is_refused_with_the_choices() -> None:
    problems = problems_of(job('impact = "slow"'))
    assert any(p.startswith("jobs.main.impact") and '"gentle", "fastest"' in p for p in problems), problems
    problems = problems_of(STORAGE + "impact = 1\n" + MINIMAL[len(STORAGE) :])
    assert any(p.startswith("storage.impact") for p in problems), problems
