"""The Prometheus textfile: node_exporter's textfile collector reads it; no port, no dependency.

Rendered from the same picture as `status` (agent/status.py) and replaced atomically (0644)
after every run, scheduled or manual, so a scrape never sees half a file. Per job and database:
last success, duration, size, failures, bytes used, predicted next size, last drilled success;
for the storage: used, budget, free, reserve, total.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from agent import trust
from agent.config import Config
from agent.log import get_logger
from agent.status import collect
from agent.writer import replace_file_atomically

PREFIX = "backup_agent"
TEXTFILE_MODE = 0o644

# name, type, help; per-database series carry the labels job, database, kind
_DATABASE_METRICS = (
    ("last_success_timestamp_seconds", "gauge", "Start time of the newest good backup (Unix seconds)."),
    ("last_duration_seconds", "gauge", "How long the newest good backup took."),
    ("last_size_bytes", "gauge", "Stored size of the newest good backup."),
    ("backups", "gauge", "Good backups on disk."),
    ("used_bytes", "gauge", "Bytes the good backups of this database occupy."),
    ("predicted_next_size_bytes", "gauge", "Predicted stored size of the next backup."),
    ("failures_total", "counter", "Failed or refused backups since the agent's records began."),
    ("last_run_success", "gauge", "1 if the last attempt succeeded, 0 if it failed or was refused."),
    ("last_drill_success_timestamp_seconds", "gauge", "When the last passing restore drill ran (Unix seconds)."),
    ("fresh", "gauge", "1 if the newest good backup is within max_backup_age (what status --check tests)."),
    (
        "last_unchanged_timestamp_seconds",
        "gauge",
        "When a run last found the database unchanged since a good backup (skip_unchanged; Unix seconds).",
    ),
)
_STORAGE_METRICS = (
    ("storage_used_bytes", "gauge", "Bytes used by everything under the storage path."),
    ("storage_budget_bytes", "gauge", "storage.max_usage in bytes (absent when not set)."),
    ("storage_free_bytes", "gauge", "Free bytes on the storage filesystem (or quota)."),
    ("storage_reserve_bytes", "gauge", "Free space that must remain (storage.reserve) in bytes."),
    ("storage_total_bytes", "gauge", "Size of the storage filesystem (or quota)."),
)


def escape_label(value: str) -> str:
    """A label value in the text exposition format: backslash, quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{name}="{escape_label(value)}"' for name, value in pairs)
    return "{" + inner + "}" if inner else ""


def _number(value: float | int) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def _timestamp(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text).timestamp()


def _database_values(database: dict[str, Any]) -> dict[str, float | int | None]:
    good = database["last_good"]
    drill = database["last_drill"]
    drilled = database["newest_drilled_backup"]
    last_drill_success = None
    if drill is not None and drill["result"] == "passed":
        last_drill_success = _timestamp(drill["at"])
    elif drilled is not None:
        last_drill_success = _timestamp(drilled["drilled_at"])
    last_status = database["last_status"]
    return {
        "last_success_timestamp_seconds": _timestamp(good["created_at"]) if good else None,
        "last_duration_seconds": database["last_duration_seconds"],
        "last_size_bytes": good["stored_bytes"] if good else None,
        "backups": database["backups"],
        "used_bytes": database["used_bytes"],
        "predicted_next_size_bytes": database["predicted_next_bytes"],
        "failures_total": database["failures_total"],
        # an interrupted attempt (a planned stop) is neither: no metric, so no alert on every deploy
        "last_run_success": None if last_status in (None, "interrupted") else int(last_status == "ok"),
        "last_drill_success_timestamp_seconds": last_drill_success,
        "fresh": int(database["problem"] is None) if database["checked"] else None,
        "last_unchanged_timestamp_seconds": _timestamp(skipped["at"])
        if (skipped := database.get("last_unchanged"))
        else None,
    }


def render(status: dict[str, Any]) -> str:
    """The exposition text for a status picture (see agent/status.py: collect)."""
    lines: list[str] = []
    rows = [
        (
            (("job", job["job"]), ("database", database["database"]), ("kind", database["kind"])),
            _database_values(database),
        )
        for job in status["jobs"]
        for database in job["databases"]
    ]
    for name, kind, help_text in _DATABASE_METRICS:
        samples = [(labels, value) for labels, values in rows if (value := values[name]) is not None]
        if not samples:
            continue
        lines += [f"# HELP {PREFIX}_{name} {help_text}", f"# TYPE {PREFIX}_{name} {kind}"]
        lines += [f"{PREFIX}_{name}{_labels(labels)} {_number(value)}" for labels, value in samples]
    storage = status["storage"]
    storage_values = {
        "storage_used_bytes": storage["used_bytes"],
        "storage_budget_bytes": storage["max_usage_bytes"],
        "storage_free_bytes": storage["free_bytes"],
        "storage_reserve_bytes": storage["reserve_bytes"],
        "storage_total_bytes": storage["total_bytes"],
    }
    storage_labels = _labels([("storage", storage["path"])])
    for name, kind, help_text in _STORAGE_METRICS:
        value = storage_values[name]
        if value is None:
            continue
        lines += [f"# HELP {PREFIX}_{name} {help_text}", f"# TYPE {PREFIX}_{name} {kind}"]
        lines.append(f"{PREFIX}_{name}{storage_labels} {_number(value)}")
    lines += [
        f"# HELP {PREFIX}_status_ok 1 when status --check would pass.",
        f"# TYPE {PREFIX}_status_ok gauge",
        f"{PREFIX}_status_ok {int(bool(status['ok']))}",
        f"# HELP {PREFIX}_info The agent's version and host.",
        f"# TYPE {PREFIX}_info gauge",
        f"{PREFIX}_info{_labels([('version', status['version']), ('host', status['host'])])} 1",
    ]
    return "\n".join(lines) + "\n"


def write_textfile(config: Config) -> bool:
    """Replace the metrics file with the current picture; a failure is logged, never raised."""
    path = config.metrics.textfile
    if path is None:
        return False
    try:
        trust.require_safe(trust.check_written_file(path, "the metrics file"))
        text = render(collect(config, platform=False))
        replace_file_atomically(path, text.encode("utf-8", "backslashreplace"), mode=TEXTFILE_MODE)
    except (OSError, ValueError, trust.UnsafePath) as error:
        get_logger().error("metrics.write_failed", path=str(path), error=str(error))
        return False
    return True
