"""`backup-agent doctor`: everything a first run needs, checked, with one line per problem saying what to fix.

Config, storage (exists or can be created, owner, who else can write it, filesystem, budget), each
job's tool and its version against the server's, each server's credentials and the privileges a
dump needs, the log file, time zones. Read-only apart from a probe file it creates and removes
in the storage folder; run it as the user the agent runs as (`sudo -u backup-agent backup-agent doctor`).
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agent import engines
from agent.budget import headroom, measure, resolve_budget
from agent.config import Config, JobConfig, load_config, render_key_path, unsafe_paths
from agent.engines.base import MISSING, Engine, EngineContext
from agent.errors import AgentError, ConfigError, ConnectionFailed, ToolError, UntrustedServer
from agent.log import register_secret
from agent.process import StreamLimits
from agent.storage import StorageLayout, foreign_owner_problem
from agent.units import format_size


@dataclass(frozen=True, slots=True)
class Finding:
    ok: bool
    topic: str  # config, storage, log, timezone, jobs.NAME
    message: str
    warning: bool = False  # ok, but worth changing; not a problem


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
    findings += check_planted_paths(config)
    findings += check_time_zones(config)
    findings += check_platform(config)
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
            # root on a service user's storage: run as its owner (what the writing verbs say), never chown it
            foreign = foreign_owner_problem(path)
            owned = f"{path} is owned by uid {status.st_uid}, not by the agent's user (uid {uid}); chown {uid} {path}"
            findings.append(Finding(False, "storage", foreign or owned))
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


def check_planted_paths(config: Config) -> list[Finding]:
    """What the agent opens, runs or writes outside storage, judged by the rule a run enforces."""
    findings = [
        Finding(False, ".".join(key[:2]) if key[0] == "jobs" else key[0], f"{render_key_path(key)}: {problem}")
        for key, problem in unsafe_paths(config)
    ]
    if not findings:
        findings.append(
            Finding(True, "paths", "log, metrics, password files, hooks and tools: nobody else can plant or swap them")
        )
    return findings


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
    engine = engines.engine_class(job.engine)(job, EngineContext(layout.root, layout.scratch(job.name), StreamLimits()))
    try:
        secret = job.password.read()
    except AgentError as error:
        return [Finding(False, topic, str(error))]
    if secret is not None:
        register_secret(secret.reveal())
    if not engines.family(job.engine).connects:  # local files: nothing to probe, the files are the check
        return [Finding(item.ok, topic, item.message) for item in engine.check_privileges()]
    if not connect:
        return []
    findings: list[Finding] = []
    try:
        engine.check_server()  # before the tool: an impostor matters more than a missing pg_dump
        info = engine.probe()
    except ToolError as error:
        findings.append(Finding(False, topic, f"tool: {error}"))
    except ConnectionFailed as error:
        advice = "" if isinstance(error, UntrustedServer) else "; check host, port, user and password"
        return [Finding(False, topic, f"server: {error}{advice}")]
    except AgentError as error:
        return [Finding(False, topic, str(error))]
    else:
        findings.append(
            Finding(True, topic, f"{_first_line(info.tool_version)} for {info.server_version} at {info.server}")
        )
    try:
        findings += [Finding(item.ok, topic, item.message, item.warning) for item in engine.check_privileges()]
    except ConnectionFailed as error:
        findings.append(Finding(False, topic, f"server: {error}; check host, port, user and password"))
    except AgentError as error:
        findings.append(Finding(False, topic, f"privileges: {error}"))
    except Exception as error:  # a driver's own error type is a finding too, never a doctor crash
        findings.append(Finding(False, topic, f"privileges: could not be checked: {_first_line(str(error))}"))
    if job.drill is not None or job.restore is not None:
        findings += check_restore_account(config, job, engine)
    findings += check_skip_unchanged(job, engine)
    return findings


def check_skip_unchanged(job: JobConfig, engine: Engine) -> list[Finding]:
    """With skip_unchanged: whether the server can prove a database unchanged now (a warning when not:
    every run then dumps, which is safe but not what the key was set for)."""
    if not job.skip_unchanged:
        return []
    topic = f"jobs.{job.name}"
    try:
        names = engine.selected_databases()
        token = engine.change_token(engine.database_target(names[0])) if names else None
    except (AgentError, OSError) as error:
        return [Finding(True, topic, f"skip_unchanged: cannot be checked: {_first_line(str(error))}", True)]
    if not names:
        return []
    if token is not None:
        return [Finding(True, topic, f"skip_unchanged: the server can prove {names[0]!r} unchanged now")]
    return [
        Finding(
            True,
            topic,
            f"skip_unchanged: the server cannot prove {names[0]!r} unchanged now (no binary log, no replica set, "
            "a busy or invisible session, a missing privilege: see the README), so such runs dump it",
            True,
        )
    ]


def check_restore_account(config: Config, job: JobConfig, backup_engine: Engine) -> list[Finding]:
    """The account restores and drills use: it logs in, and with drills configured, it may create, load
    and drop each database's scratch copy (`<db>__drill_<time>`); each gap named with its GRANT."""
    from agent.drill import scratch_name
    from agent.restore import restoring_job

    topic = f"jobs.{job.name}"
    restorer = restoring_job(job)
    who = f"restore account {restorer.user}" if job.restore is not None else f"the job's account {job.user or ''}"
    layout = StorageLayout(config.storage.path)
    engine = engines.engine_class(job.engine)(
        restorer, EngineContext(layout.root, layout.scratch(job.name), StreamLimits())
    )
    try:
        secret = restorer.password.read()
        if secret is not None:
            register_secret(secret.reveal())
        engine.check_server()
        databases, _ = backup_engine.databases_on_server()  # a missing one is the backup check's finding
        now = datetime.now(UTC)
        gaps = {
            database: engine.missing_restore_privileges(scratch_name(database, now), MISSING) for database in databases
        }  # connecting proves the login; the scratch names are what drills create
        if job.drill is None:
            return [
                Finding(True, topic, f"restore: {who} logs in; `restore --dry-run` checks its privileges for --into")
            ]
        if any(items is None for items in gaps.values()):
            return [
                Finding(True, topic, f"drills: {who} logs in; its privileges cannot be checked ahead on {job.engine}")
            ]
        findings = [
            Finding(False, topic, f"drills: {who} lacks {item}") for items in gaps.values() for item in items or []
        ]
    except ConnectionFailed as error:
        return [Finding(False, topic, f"restore: {who}: {error}; check [jobs.{job.name}.restore] user and password")]
    except AgentError as error:
        return [Finding(False, topic, f"restore: {who}: {error}")]
    except Exception as error:  # a driver's own error type is a finding too, never a doctor crash
        return [Finding(False, topic, f"restore: {who}: privileges could not be checked: {_first_line(str(error))}")]
    if not findings:
        done = f"may create, load and drop the scratch copies of {len(databases)} database(s)"
        findings.append(Finding(True, topic, f"drills: {who} {done}"))
    return findings


def check_platform(config: Config) -> list[Finding]:
    """With `[snapshots]`: the platform's restore points and the local retention they make unnecessary."""
    from agent import ledger

    loaded = ledger.load(config)
    if loaded is None:
        return []
    findings = [
        Finding(True, "platform", line.removeprefix("platform: "))
        for line in ledger.sizing_lines(ledger.sizing(config, loaded))
    ]
    warning = ledger.break_text(loaded)
    if warning:
        findings.append(Finding(False, "platform", f"{warning}; run `backup-agent verify`"))
    vanished = ledger.vanished_text(loaded)
    if vanished:
        findings.append(Finding(True, "platform", vanished))
    return findings


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text
