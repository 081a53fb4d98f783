"""Timing one command: wall clock, CPU of the command's process tree and of the database server."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int | str) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def group_cpu_seconds(group: int) -> float:
    """CPU seconds of every live process in a process group, plus what its leader reaped.

    A PostgreSQL backend that exits is reaped by the postmaster (the group leader), so its CPU
    moves into the leader's cutime/cstime: the sum stays right across a run.
    """
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat_fields(entry.name)
        except OSError:
            continue
        if int(fields[2]) != group:  # field 5 of /proc/PID/stat: the process group
            continue
        total += int(fields[11]) + int(fields[12])
        if int(entry.name) == group:
            total += int(fields[13]) + int(fields[14])
    return total / CLOCK_TICKS


@dataclass
class Sample:
    """One run of one variant."""

    wall: float
    cpu: float  # the command's process tree: user + system
    server_cpu: float
    stored_bytes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def run_timed(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    server_group: int | None = None,
    stdout: int | None = subprocess.DEVNULL,
) -> Sample:
    """Run to completion; wait4 gives the CPU of the whole tree the command waited for."""
    before = group_cpu_seconds(server_group) if server_group else 0.0
    started = time.perf_counter()
    process = subprocess.Popen(
        list(argv), env=dict(env) if env is not None else None, stdout=stdout, stderr=subprocess.PIPE
    )
    assert process.stderr is not None
    error_output = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({process.returncode}): {error_output.decode()[-2000:]}")
    time.sleep(0.3)  # let the server reap the session's backend before its CPU is read
    after = group_cpu_seconds(server_group) if server_group else 0.0
    return Sample(wall, usage.ru_utime + usage.ru_stime, after - before)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float]) -> tuple[float, float]:
    return (min(values), max(values)) if values else (float("nan"), float("nan"))
