"""The agent's memory between runs: `<storage>/.agent/state.json`, one entry per job.

Written after every run (scheduled or manual) and whenever the daemon plans the next one, each
time as a whole new file renamed over the old (never half-written). Readers get a consistent
picture; writers from several threads and processes take turns under a short `flock`. The state
is informational (status, metrics, the before-snapshots estimate): backups on disk stay the truth.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.log import get_logger
from agent.schedule import RECENT_DURATIONS_KEPT
from agent.storage import StorageLayout, waiting_lock
from agent.writer import replace_file_atomically

if TYPE_CHECKING:
    from agent.runner import RunOutcome

STATE_VERSION = 1


@dataclass(slots=True)
class JobState:
    """What the agent remembers about one job; times are ISO 8601 UTC strings."""

    last_start: str | None = None
    last_status: str | None = None  # ok | failed | skipped
    last_reason: str | None = None
    last_duration: float | None = None
    last_success: str | None = None
    last_failure: str | None = None
    last_failure_reason: str | None = None
    last_failure_message: str | None = None
    next_run: str | None = None
    recent_durations: list[float] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobState:
        known = {item.name for item in fields(cls)}
        state = cls(**{key: value for key, value in data.items() if key in known})
        state.recent_durations = [float(value) for value in state.recent_durations if _is_number(value)]
        return state


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment is not None else None


def read_state(storage: Path) -> dict[str, JobState]:
    """Every job's state; an absent or unreadable file reads as empty (and is logged)."""
    path = StorageLayout(storage).state_file
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        jobs = document["jobs"]
        return {str(name): JobState.from_json(entry) for name, entry in jobs.items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        get_logger().warning("state.unreadable", path=str(path), error=str(error))
        return {}


def recent_durations(storage: Path, job: str) -> list[float]:
    """Seconds taken by the job's recent successful runs, oldest first."""
    state = read_state(storage).get(job)
    return list(state.recent_durations) if state else []


def _locked(layout: StorageLayout) -> contextlib.AbstractContextManager[None]:
    """Held only for one read-modify-write of the file."""
    return waiting_lock(layout.lock_file("state"))


def _write(layout: StorageLayout, jobs: Mapping[str, JobState]) -> None:
    document = {
        "version": STATE_VERSION,
        "updated_at": datetime.now(UTC).isoformat(),
        "jobs": {name: asdict(state) for name, state in sorted(jobs.items())},
    }
    replace_file_atomically(layout.state_file, (json.dumps(document, indent=2) + "\n").encode())


def apply_outcome(state: JobState, outcome: RunOutcome, next_run: datetime | None) -> JobState:
    """The job's state after `outcome` (pure): a skipped run changes only the last status."""
    finished = outcome.started_at + timedelta(seconds=outcome.duration_seconds)
    if next_run is not None:
        state.next_run = _iso(next_run)
    if outcome.status == "skipped":
        state.last_status, state.last_reason = "skipped", outcome.reason or None
        return state
    state.last_start = _iso(outcome.started_at)
    state.last_duration = outcome.duration_seconds
    if outcome.ok:
        state.last_status, state.last_reason = "ok", None
        state.last_success = _iso(finished)
        state.recent_durations = [*state.recent_durations, outcome.duration_seconds][-RECENT_DURATIONS_KEPT:]
        return state
    reason, message = failure_of(outcome)
    state.last_status, state.last_reason = "failed", reason
    state.last_failure = _iso(finished)
    state.last_failure_reason, state.last_failure_message = reason, message
    return state


def failure_of(outcome: RunOutcome) -> tuple[str, str]:
    """The reason word and message of a failed run: the run's own, else its first failed target's."""
    if outcome.reason:
        return outcome.reason, outcome.message
    for target in outcome.targets:
        if target.status != "ok":
            return target.reason or "failed", target.message
    return "failed", outcome.message


def record_run(storage: Path, outcome: RunOutcome, next_run: datetime | None = None) -> None:
    """Remember one run's outcome; a state file that cannot be written is logged, never fatal."""
    layout = StorageLayout(storage)
    try:
        layout.prepare()
        with _locked(layout):
            jobs = read_state(storage)
            jobs[outcome.job] = apply_outcome(jobs.get(outcome.job, JobState()), outcome, next_run)
            _write(layout, jobs)
    except OSError as error:
        get_logger(job=outcome.job).error("state.write_failed", path=str(layout.state_file), error=str(error))


def record_next_runs(storage: Path, next_runs: Mapping[str, datetime | None]) -> None:
    """Remember when each job runs next (None: not scheduled); jobs not named are left alone."""
    layout = StorageLayout(storage)
    try:
        layout.prepare()
        with _locked(layout):
            jobs = read_state(storage)
            for name, moment in next_runs.items():
                jobs.setdefault(name, JobState()).next_run = _iso(moment)
            _write(layout, jobs)
    except OSError as error:
        get_logger().error("state.write_failed", path=str(layout.state_file), error=str(error))
