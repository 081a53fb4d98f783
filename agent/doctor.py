"""`backup-agent doctor`: everything a first run needs, checked, with one line per problem saying what to fix.

Config, storage (exists or can be created, owner, who else can write it, filesystem, budget), each
job's tool and its version against the server's, each server's credentials and the privileges a
dump needs, the log file, time zones. Read-only apart from a probe file it creates and removes
in the storage folder; run it as the user the agent runs as (`sudo -u backup-agent backup-agent doctor`).
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agent.budget import headroom, measure, resolve_budget
from agent.config import Config, JobConfig, load_config
from agent.engines import engine_class
from agent.engines.base import Engine, EngineContext, select_databases
from agent.errors import AgentError, ConfigError, ConnectionFailed, ToolError
from agent.log import register_secret
from agent.process import StreamLimits
from agent.storage import StorageLayout
from agent.units import format_size

MYSQL_NEEDED = ("SELECT", "SHOW VIEW", "TRIGGER", "LOCK TABLES", "EVENT")
_GRANT = re.compile(r"^GRANT (?P<privileges>.+?) ON (?P<scope>\S+) TO ", re.IGNORECASE)
_SQLITE_MAGIC = b"SQLite format 3\x00"
_SHOWN_OBJECTS = 5


@dataclass(frozen=True, slots=True)
class Finding:
    ok: bool
    topic: str  # config, storage, log, timezone, jobs.NAME
    message: str


@dataclass(frozen=True, slots=True)
class Diagnosis:
    findings: list[Finding]
    config_valid: bool

    @property
    def ok(self) -> bool:
        return all(finding.ok for finding in self.findings)


def diagnose(config_path: Path, *, connect: bool = True) -> Diagnosis:
    """Run every check; an invalid config stops there (nothing else can be judged without it)."""
    try:
        config = load_config(config_path, check_permissions=False)
    except ConfigError as error:
        return Diagnosis([Finding(False, "config", problem) for problem in error.problems], False)
    findings = [Finding(True, "config", f"{config_path} is valid ({len(config.jobs)} job(s))")]
    findings += check_config_file(config_path)
    findings += check_storage(config)
    findings += check_log(config)
    findings += check_time_zones(config)
    for job in config.jobs.values():
        findings += check_job(config, job, connect=connect)
    return Diagnosis(findings, True)


# --------------------------------------------------------------------------------------------------
# Files and folders


def _writable_by_others(status: os.stat_result) -> str | None:
    """ "group" or "others" when someone besides the owner may write, else None (root's sticky /tmp is fine)."""
    if status.st_mode & stat.S_ISVTX and status.st_uid == 0:
        return None
    if status.st_mode & stat.S_IWOTH:
        return "others"
    if status.st_mode & stat.S_IWGRP:
        return "group"
    return None


def check_config_file(path: Path) -> list[Finding]:
    """Hook commands come from the config: whoever can change it can run commands as the agent."""
    findings: list[Finding] = []
    for target in (path, path.parent):
        with contextlib.suppress(OSError):
            who = _writable_by_others(target.stat())
            if who is not None:
                letter = "g" if who == "group" else "o"
                findings.append(
                    Finding(
                        False,
                        "config",
                        f"{target} is writable by {who}, who could then run commands as the agent; "
                        f"chmod {letter}-w {target}",
                    )
                )
    return findings


def _nearest_existing(path: Path) -> Path:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def check_storage(config: Config) -> list[Finding]:
    from agent.status import filesystem_of

    path = config.storage.path
    findings: list[Finding] = []
    uid = os.geteuid()
    if path.is_symlink():
        return [Finding(False, "storage", f"{path} is a symbolic link; point storage.path at the real directory")]
    if path.exists() and not path.is_dir():
        return [Finding(False, "storage", f"{path} exists but is not a directory")]
    if not path.exists():
        existing = _nearest_existing(path)
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            findings.append(
                Finding(
                    False,
                    "storage",
                    f"{path} does not exist and cannot be created: {existing} is not writable for uid {uid}; "
                    f"create it: install -d -m 0750 -o $(id -un) {path}",
                )
            )
        else:
            findings.append(Finding(True, "storage", f"{path} does not exist yet; the first run creates it"))
        parent_status = existing.stat()
    else:
        status = path.stat()
        if status.st_uid != uid:
            findings.append(
                Finding(
                    False,
                    "storage",
                    f"{path} is owned by uid {status.st_uid}, not by the agent's user (uid {uid}); chown {uid} {path}",
                )
            )
        who = _writable_by_others(status)
        if who is not None:
            findings.append(
                Finding(False, "storage", f"{path} is writable by {who}; chmod go-w {path} (the agent uses 0750)")
            )
        findings.append(_probe_write(path))
        parent_status = path.parent.stat()
    parent = path.parent if path.exists() else _nearest_existing(path)
    who = _writable_by_others(parent_status)
    if who is not None:
        findings.append(
            Finding(
                False,
                "storage",
                f"{parent} (the folder holding the storage) is writable by {who}, who could swap the storage "
                f"folder; chmod go-w {parent}",
            )
        )
    elif parent_status.st_uid not in (0, uid):
        findings.append(
            Finding(
                False,
                "storage",
                f"{parent} (the folder holding the storage) belongs to uid {parent_status.st_uid}, who could swap "
                f"the storage folder; use a folder owned by root or the agent's user",
            )
        )
    findings.append(_budget_finding(config, filesystem_of(path)))
    return findings


def _probe_write(path: Path) -> Finding:
    probe = path / f".doctor-{os.getpid()}.tmp"
    try:
        descriptor = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        os.close(descriptor)
        probe.unlink()
    except OSError as error:
        return Finding(
            False,
            "storage",
            f"cannot write in {path}: {error.strerror}; make it writable for the agent's user (uid {os.geteuid()})",
        )
    return Finding(True, "storage", f"{path} is writable")


def _budget_finding(config: Config, filesystem: Any) -> Finding:
    figures = measure(config.storage)
    budget = resolve_budget(config.storage, figures.total_bytes)
    on = f"{filesystem.type} ({filesystem.source}, mounted at {filesystem.mount_point})" if filesystem else "unknown"
    limit = f"max_usage {format_size(budget.max_usage_bytes)}" if budget.max_usage_bytes is not None else "no max_usage"
    text = (
        f"on {on}: {format_size(figures.total_bytes)} in all, {format_size(figures.free_bytes)} free, "
        f"reserve {format_size(budget.reserve_bytes)}, {limit}, agent uses {format_size(figures.usage_bytes)}"
    )
    room = headroom(figures, budget)
    if room <= 0:
        return Finding(False, "storage", f"{text}: already over budget, no dump fits; free space or raise the budget")
    return Finding(True, "storage", f"{text}; room for {format_size(room)} more")


def check_log(config: Config) -> list[Finding]:
    file = config.log.file
    if file is None:
        return [Finding(True, "log", "no log.file: events go to stderr (the journal under systemd)")]
    if file.exists():
        if not os.access(file, os.W_OK):
            return [Finding(False, "log", f"{file} is not writable for uid {os.geteuid()}; chown or chmod it")]
        return [Finding(True, "log", f"{file} is writable" + (" (rotated by the agent)" if config.log.rotate else ""))]
    existing = _nearest_existing(file.parent)
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return [
            Finding(
                False,
                "log",
                f"{file} cannot be created: {existing} is not writable for uid {os.geteuid()}; "
                f"create it: install -d -m 0750 -o $(id -un) {file.parent}",
            )
        ]
    return [Finding(True, "log", f"{file} will be created")]


def check_time_zones(config: Config) -> list[Finding]:
    zones: dict[str, str] = {}
    for job in config.jobs.values():
        zones.setdefault(job.timezone, f"jobs.{job.name}.timezone")
        if job.drill is not None:
            zones.setdefault(job.drill.timezone, f"jobs.{job.name}.drill.timezone")
    if config.snapshots is not None:
        zones.setdefault(config.snapshots.timezone, "snapshots.timezone")
    environment = os.environ.get("TZ")
    if environment:
        zones.setdefault(environment.removeprefix(":"), "the TZ environment variable")
    findings: list[Finding] = []
    for zone, where in zones.items():
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            findings.append(
                Finding(
                    False,
                    "timezone",
                    f"{where}: unknown time zone {zone!r}; use an IANA name such as Europe/Berlin (and install tzdata)",
                )
            )
    if not findings:
        findings.append(Finding(True, "timezone", "time zones known: " + ", ".join(sorted(zones))))
    return findings


# --------------------------------------------------------------------------------------------------
# Jobs: tool, server, privileges


def check_job(config: Config, job: JobConfig, *, connect: bool = True) -> list[Finding]:
    topic = f"jobs.{job.name}"
    layout = StorageLayout(config.storage.path)
    engine = engine_class(job.engine)(job, EngineContext(layout.root, layout.scratch(job.name), StreamLimits()))
    try:
        secret = job.password.read()
    except AgentError as error:
        return [Finding(False, topic, str(error))]
    if secret is not None:
        register_secret(secret.reveal())
    if job.engine == "sqlite":
        return _check_sqlite(job, topic)
    if not connect:
        return []
    findings: list[Finding] = []
    try:
        info = engine.probe()
    except ToolError as error:
        findings.append(Finding(False, topic, f"tool: {error}"))
    except ConnectionFailed as error:
        return [Finding(False, topic, f"server: {error}; check host, port, user and password")]
    except AgentError as error:
        return [Finding(False, topic, str(error))]
    else:
        findings.append(
            Finding(True, topic, f"{_first_line(info.tool_version)} for {info.server_version} at {info.server}")
        )
    try:
        findings += _check_privileges(engine, job, topic)
    except ConnectionFailed as error:
        findings.append(Finding(False, topic, f"server: {error}; check host, port, user and password"))
    except AgentError as error:
        findings.append(Finding(False, topic, f"privileges: {error}"))
    except Exception as error:  # a driver's own error type is a finding too, never a doctor crash
        findings.append(Finding(False, topic, f"privileges: could not be checked: {_first_line(str(error))}"))
    return findings


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def _databases(engine: Engine, job: JobConfig) -> list[str]:
    if job.databases is not None:
        return list(job.databases)
    return select_databases(engine.discover(), job.exclude)


def _check_privileges(engine: Engine, job: JobConfig, topic: str) -> list[Finding]:
    if job.engine == "postgresql":
        return _postgres_privileges(engine, job, topic)
    if job.engine == "mysql":
        return _mysql_privileges(engine, job, topic)
    names = _databases(engine, job)
    return [Finding(True, topic, f"connected; {len(names)} database(s) to dump: {', '.join(names)}")]


_PG_UNREADABLE = r"""
    SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'S')
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp%'
      AND (NOT has_schema_privilege(n.oid, 'USAGE') OR NOT has_table_privilege(c.oid, 'SELECT'))
    ORDER BY 1
"""


def _postgres_privileges(engine: Any, job: JobConfig, topic: str) -> list[Finding]:
    with engine.connect() as connection:
        row = connection.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        user, superuser = (str(row[0]), bool(row[1])) if row else ("?", False)
        exists = connection.execute("SELECT 1 FROM pg_roles WHERE rolname = 'pg_read_all_data'").fetchone()
        read_all = False
        if exists and not superuser:
            member = connection.execute("SELECT pg_has_role(current_user, 'pg_read_all_data', 'USAGE')").fetchone()
            read_all = bool(member and member[0])
    findings: list[Finding] = []
    names = _databases(engine, job)
    for name in names:
        try:
            with engine.connect(name) as connection:
                rows = [] if superuser or read_all else connection.execute(_PG_UNREADABLE).fetchall()
        except ConnectionFailed as error:
            findings.append(Finding(False, topic, f"database {name!r}: {error}; GRANT CONNECT ON DATABASE to {user}"))
            continue
        if rows:
            shown = ", ".join(str(item[0]) for item in rows[:_SHOWN_OBJECTS])
            more = f" and {len(rows) - _SHOWN_OBJECTS} more" if len(rows) > _SHOWN_OBJECTS else ""
            findings.append(
                Finding(
                    False,
                    topic,
                    f"database {name!r}: role {user} cannot read {len(rows)} table(s)/sequence(s): {shown}{more}; "
                    f"GRANT pg_read_all_data TO {user} (PostgreSQL 14+) or grant SELECT (and schema USAGE)",
                )
            )
    if not findings:
        how = "superuser" if superuser else "pg_read_all_data" if read_all else "SELECT on every table"
        findings.append(Finding(True, topic, f"role {user} can read all {len(names)} database(s) ({how})"))
    return findings


def mysql_privileges(grants: list[str]) -> dict[str, set[str]]:
    """Privileges by scope (`*.*`, `` `db`.* ``, `` `db`.`table` ``) from SHOW GRANTS lines (pure)."""
    scopes: dict[str, set[str]] = {}
    for line in grants:
        match = _GRANT.match(line.strip())
        if match is None:
            continue
        privileges = {part.strip().upper() for part in match["privileges"].split(",")}
        if "ALL" in privileges or "ALL PRIVILEGES" in privileges:
            privileges = {"ALL"}
        scopes.setdefault(match["scope"].replace("`", ""), set()).update(privileges)
    return scopes


def mysql_missing(scopes: dict[str, set[str]], database: str) -> list[str]:
    """The privileges a dump of `database` needs that the grants do not give (pure)."""
    have = scopes.get("*.*", set()) | scopes.get(f"{database}.*", set())
    if "ALL" in have:
        missing: list[str] = []
    else:
        missing = [privilege for privilege in MYSQL_NEEDED if privilege not in have]
    global_privileges = scopes.get("*.*", set())
    routine_ok = {"ALL", "SELECT", "SHOW_ROUTINE"} & global_privileges or "SELECT" in scopes.get(
        "mysql.*", set()
    ) | scopes.get("mysql.proc", set())
    if not routine_ok:
        missing.append("routines (global SELECT, SHOW_ROUTINE, or SELECT on mysql.proc)")
    return missing


def _mysql_privileges(engine: Any, job: JobConfig, topic: str) -> list[Finding]:
    with engine.connect() as connection, connection.cursor() as cursor:
        cursor.execute("SELECT CURRENT_USER()")
        user = str(cursor.fetchone()[0])
        cursor.execute("SHOW GRANTS")
        grants = [str(row[0]) for row in cursor.fetchall()]
    scopes = mysql_privileges(grants)
    findings: list[Finding] = []
    names = _databases(engine, job)
    for name in names:
        missing = mysql_missing(scopes, name)
        if missing:
            findings.append(
                Finding(
                    False,
                    topic,
                    f"database {name!r}: {user} lacks {', '.join(missing)}; e.g. "
                    f"GRANT {', '.join(MYSQL_NEEDED)} ON *.* TO {user} (a global SELECT also covers routines)",
                )
            )
    if not findings:
        findings.append(Finding(True, topic, f"{user} has the privileges to dump all {len(names)} database(s)"))
    return findings


def _check_sqlite(job: JobConfig, topic: str) -> list[Finding]:
    findings: list[Finding] = []
    for name in job.databases or ():
        try:
            with open(name, "rb") as handle:
                header = handle.read(16)
        except OSError as error:
            findings.append(Finding(False, topic, f"cannot read {name}: {error.strerror}"))
            continue
        if header and header != _SQLITE_MAGIC:
            findings.append(Finding(False, topic, f"{name} is not an SQLite database file"))
    if not findings:
        findings.append(
            Finding(
                True, topic, f"{len(job.databases or ())} SQLite file(s) readable (SQLite {sqlite3.sqlite_version})"
            )
        )
    return findings
