"""What one run produced, for every layer above the engines: runner, records, status, CLI, daemon.

The values are `StrEnum`s, so they compare equal to, and are written to JSON as, the same words as
before ("ok", "failed", ...): the files on disk and the log lines do not change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from agent.naming import TargetKind

if TYPE_CHECKING:
    from agent.manifest import Manifest

__all__ = ["Reason", "RunOutcome", "Status", "TargetKind", "TargetOutcome"]  # TargetKind: from naming


class Status(StrEnum):
    """How a run, or one of its targets, ended."""

    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"  # another run of the job held its lock
    REFUSED = "refused"  # the dump would not fit the disk budget (see agent/prune.py)
    INTERRUPTED = "interrupted"  # a planned stop (SIGTERM/SIGINT): not a failure, rerun at the next start


class Reason(StrEnum):
    """The reason words the runner and observer give themselves; engines add their own (`DumpError.reason`)."""

    CONNECTION_FAILED = "connection_failed"  # the server could not be reached; the daemon retries
    UNTRUSTED_SERVER = "untrusted_server"  # not the server's socket or port, or it asked for clear text (no retry)
    INTERNAL_ERROR = "internal_error"  # a bug or an unexpected library error; the traceback is in the log
    HOOK_FAILED = "hook_failed"
    LOCKED = "locked"
    INTERRUPTED = "interrupted"
    SHUTDOWN = "shutdown"  # the agent was told to stop while a dump ran
    NOT_FOUND = "not_found"  # the database asked for does not exist on the server: no series is made
    NO_SPACE = "no_space"
    IO_ERROR = "io_error"
    PERMISSION = "permission"  # a file or folder the agent may not open, create or delete (the message names it)


@dataclass(slots=True)
class TargetOutcome:
    """One target of a run; a good one carries the manifest it published (never read back from disk)."""

    database: str
    kind: TargetKind
    status: Status
    path: Path | None = None
    reason: str = ""
    message: str = ""
    manifest: Manifest | None = None
    unchanged: bool = False  # skip_unchanged: no new dump; `path` and `manifest` are the backup relied on


@dataclass(slots=True)
class RunOutcome:
    job: str
    run_id: str
    status: Status = Status.OK
    reason: str = ""
    message: str = ""
    targets: list[TargetOutcome] = field(default_factory=list)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    duration_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == Status.OK and all(target.status == Status.OK for target in self.targets)

    @property
    def interrupted(self) -> bool:
        """A planned stop ended the run: nothing failed, but something was left undone."""
        if self.status == Status.INTERRUPTED:
            return True
        unfinished = [target for target in self.targets if target.status != Status.OK]
        return (
            self.status == Status.OK
            and bool(unfinished)
            and all(target.status == Status.INTERRUPTED for target in unfinished)
        )

    @property
    def finished_at(self) -> datetime:
        return self.started_at + timedelta(seconds=self.duration_seconds)

    def failure(self) -> tuple[str, str]:
        """The reason word and message of a failed run: the run's own, else its first failed target's."""
        if self.reason:
            return self.reason, self.message
        for target in self.targets:
            if target.status != Status.OK:
                return target.reason or Status.FAILED, target.message
        return Status.FAILED, self.message
