"""`check-config`: the resolved plan (jobs, the databases each would dump, target paths), no secrets."""

from __future__ import annotations

from typing import Any

from agent import engines
from agent.config import Config
from agent.engines import engine_class
from agent.engines.base import Engine, EngineContext
from agent.errors import AgentError, UntrustedServer
from agent.process import StreamLimits
from agent.runner import folder_for
from agent.storage import StorageLayout


def describe_plan(config: Config, *, discover: bool) -> dict[str, Any]:
    layout = StorageLayout(config.storage.path)
    plan: dict[str, Any] = {"config": config.describe(), "jobs": {}}
    for name, job in config.jobs.items():
        entry: dict[str, Any] = {"engine": job.engine, "targets": [], "error": None}
        engine = engine_class(job.engine)(job, EngineContext(layout.root, layout.scratch(name), StreamLimits()))
        try:
            engine.check_server()  # local facts only (socket and port owners): also offline
            if discover and job.databases is not None and engines.family(job.engine).connects:
                engine.discover()  # a listed job connects too: a server that asks for clear text is named
            targets = engine.targets() if discover or job.databases is not None else engine.extra_targets()
        except UntrustedServer as error:
            targets = []
            entry["error"] = str(error)
            entry["untrusted_server"] = True
        except AgentError as error:
            targets = []
            entry["error"] = f"cannot list databases: {error}"
        for target in targets:
            folder = folder_for(target, job.engine)
            entry["targets"].append(
                {
                    "database": target.database,
                    "kind": target.kind,
                    "folder": str(layout.job_directory(name) / folder),
                }
            )
        if discover and entry["error"] is None and not job.scope.is_everything:
            entry["warnings"] = _scope_warnings(
                engine, [target.database for target in targets if target.kind == "database"]
            )
        plan["jobs"][name] = entry
    return plan


def _scope_warnings(engine: Engine, databases: list[str]) -> list[str]:
    """The table scope resolved against each database's tables now: patterns that match nothing,
    and what a restore of that scope would trip on (agent/scope.py, the engine's scope_warnings)."""
    warnings = [
        f"scope.{database!r}: no database of that name is dumped (the server has none, or exclude leaves it out)"
        for database in sorted(set(engine.job.scope.databases) - set(databases))
    ]
    for database in databases:
        try:
            resolved = engine.resolve_scope(database)
            if resolved is not None:
                warnings += engine.scope_warnings(database, resolved)
        except AgentError as error:
            warnings.append(f"database {database!r}: cannot list its tables: {error}")
    return warnings


def render_plan(plan: dict[str, Any]) -> list[str]:
    """`check-config` for a terminal, one line per item; the CLI escapes what it prints."""
    lines = ["config is valid"]
    storage = plan["config"].get("storage", {})
    lines.append(f"storage: {storage.get('path')} (compression {storage.get('compression')})")
    for name, entry in plan["jobs"].items():
        job = plan["config"]["jobs"][name]
        lines.append(f"job {name}: engine {entry['engine']}, schedule {_schedule_text(job)}")
        if entry["error"]:
            lines.append(f"  ! {entry['error']}")
        lines.extend(f"  ! warning: {warning}" for warning in entry.get("warnings", []))
        for target in entry["targets"]:
            label = target["database"] or f"({target['kind']})"
            lines.append(f"  - {label!r} -> {target['folder']}/")
    return lines


def _schedule_text(job: dict[str, Any]) -> str:
    schedule = job.get("schedule") or {}
    kind = schedule.get("kind") if isinstance(schedule, dict) else str(schedule)
    if kind == "cron":
        return f"cron {schedule.get('cron')!r} ({job.get('timezone', 'UTC')})"
    if kind == "interval":
        return f"every {schedule.get('every')}"
    return str(kind)
