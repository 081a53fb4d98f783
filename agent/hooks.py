"""Per-job hook commands (`before`, `after`, `on_failure`): argv lists run without a shell.

Each hook gets the backup's facts in `BACKUP_AGENT_*` environment variables, never a password,
and runs in its own process group, which is killed when `hooks.timeout` passes. A hook's result
is a value; what a failure means (a failed run, or only a log line) is the caller's decision.
"""

from __future__ import annotations

import collections
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

from structlog.stdlib import BoundLogger

from agent import process
from agent.errors import AgentError

BEFORE = "before"
AFTER = "after"
ON_FAILURE = "on_failure"
_OUTPUT_TAIL_BYTES = 4096


@dataclass(frozen=True, slots=True)
class HookResult:
    ok: bool
    message: str = ""


def hook_environment(**facts: object) -> dict[str, str]:
    """`BACKUP_AGENT_<NAME>` variables from keyword facts; None becomes "" and NUL bytes are escaped."""
    environment: dict[str, str] = {}
    for name, value in facts.items():
        text = "" if value is None else str(value)
        environment[f"BACKUP_AGENT_{name.upper()}"] = text.replace("\x00", "\\x00")
    return environment


class _Tail:
    """The last few KiB of a hook's stdout, for the log when it fails."""

    def __init__(self) -> None:
        self.chunks: collections.deque[bytes] = collections.deque()
        self.size = 0

    def __call__(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        while self.size - len(self.chunks[0]) >= _OUTPUT_TAIL_BYTES:
            self.size -= len(self.chunks.popleft())

    def text(self) -> str:
        return b"".join(self.chunks)[-_OUTPUT_TAIL_BYTES:].decode("utf-8", "replace").strip()


def run_hook(
    hook: str,
    argv: Sequence[str],
    *,
    timeout: timedelta,
    environment: Mapping[str, str],
    log: BoundLogger,
) -> HookResult:
    """Run one hook to completion (or its timeout); logs `hook.finished` or `hook.failed`."""
    started = time.monotonic()
    if shutil.which(argv[0]) is None:
        message = f"the {hook} hook's command {argv[0]!r} was not found (use an absolute path or one on PATH)"
        log.error("hook.failed", hook=hook, argv=list(argv), reason="not_found", error=message)
        return HookResult(False, message)
    output = _Tail()
    limits = process.StreamLimits(timeout=timeout.total_seconds())
    child: process.Child | None = None
    try:
        child = process.start(process.Command(tuple(argv), env=dict(environment)))
        process.stream_stdout(child, output, limits, f"the {hook} hook")
    except (AgentError, OSError) as error:
        reason = getattr(error, "reason", "io_error")
        stderr_tail = child.stderr.text() if child is not None else ""
        log.error(
            "hook.failed",
            hook=hook,
            argv=list(argv),
            reason=reason,
            error=str(error),
            duration=round(time.monotonic() - started, 3),
            stdout_tail=output.text()[-2000:],
            stderr_tail=stderr_tail[-2000:],
        )
        return HookResult(False, str(error))
    log.info("hook.finished", hook=hook, argv=list(argv), duration=round(time.monotonic() - started, 3))
    return HookResult(True)
