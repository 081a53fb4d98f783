"""The CPU and memory a container may use, from its cgroup (v2 and v1), not the host's.

On a 1-CPU quota a zstd worker per host core only adds throttling, so "every core" means the
cores this process may run on: the smallest of the CPU quota (`cpu.max`, or v1's
`cpu.cfs_quota_us` / `cpu.cfs_period_us`) along the cgroup's ancestors, the cpuset and the
scheduler affinity. The parsers are pure functions over file text; `read_limits` finds the files.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# cgroup v1 reports "no limit" as a page-rounded LONG_MAX; anything this large is no limit
_UNLIMITED_MEMORY = 1 << 62


@dataclass(frozen=True, slots=True)
class ContainerLimits:
    """What the cgroup allows; None where nothing limits it."""

    cpu_quota: float | None = None  # CPUs' worth of time per period (1.5 = one and a half cores)
    cpuset_cpus: int | None = None  # CPUs in the cpuset
    memory_bytes: int | None = None


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 `cpu.max`: "max 100000" (no limit) or "QUOTA PERIOD" in microseconds."""
    fields = text.split()
    if not fields or fields[0] == "max":
        return None
    period = int(fields[1]) if len(fields) > 1 else 100_000
    return int(fields[0]) / period if period > 0 else None


def parse_cfs_quota(quota_text: str, period_text: str) -> float | None:
    """cgroup v1 `cpu.cfs_quota_us` (-1: no limit) over `cpu.cfs_period_us`."""
    quota, period = int(quota_text.strip()), int(period_text.strip())
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def parse_cpu_list(text: str) -> int:
    """How many CPUs a list like "0-3,6,8-9" names (`cpuset.cpus.effective`); 0 for an empty list."""
    count = 0
    for part in text.strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        count += int(last or first) - int(first) + 1
    return count


def parse_memory_max(text: str) -> int | None:
    """v2 `memory.max` ("max" or bytes) or v1 `memory.limit_in_bytes` (a huge number: no limit)."""
    value = text.strip()
    if value == "max" or not value:
        return None
    number = int(value)
    return number if number < _UNLIMITED_MEMORY else None


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """/proc/self/cgroup: controller -> the process's cgroup path; "" is the v2 unified hierarchy."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


@dataclass(frozen=True, slots=True)
class CgroupMount:
    root: str  # the path inside the hierarchy that is mounted (a container often sees "/")
    mount_point: str
    version: int  # 1 or 2
    controllers: frozenset[str]  # v1 only: the controllers of this hierarchy


def parse_mountinfo(text: str) -> list[CgroupMount]:
    """The cgroup file systems in /proc/self/mountinfo."""
    mounts: list[CgroupMount] = []
    for line in text.splitlines():
        before, separator, after = line.partition(" - ")
        if not separator:
            continue
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        kind = tail[0]
        if kind == "cgroup2":
            mounts.append(CgroupMount(fields[3], fields[4], 2, frozenset()))
        elif kind == "cgroup":
            options = frozenset(tail[2].split(","))
            mounts.append(CgroupMount(fields[3], fields[4], 1, options))
    return mounts


def cgroup_directories(mount: CgroupMount, path: str) -> list[Path]:
    """The process's cgroup folder under `mount` and each ancestor up to the mount, innermost first.

    A limit anywhere above the process applies to it, so the caller takes the smallest.
    """
    root = mount.root.rstrip("/")
    if root and path != root and not path.startswith(root + "/"):
        return []  # this mount shows another part of the hierarchy
    relative = path[len(root) :].strip("/")
    parts = relative.split("/") if relative else []
    return [Path(mount.mount_point, *parts[:depth]) for depth in range(len(parts), -1, -1)]


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, ValueError):
        return None


def _smallest(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return min(present) if present else None


def read_limits(proc: Path = Path("/proc/self")) -> ContainerLimits:
    """The limits of this process's cgroup; unreadable or missing files count as no limit."""
    mountinfo, cgroup = _read(proc / "mountinfo"), _read(proc / "cgroup")
    if mountinfo is None or cgroup is None:
        return ContainerLimits()
    paths = parse_proc_cgroup(cgroup)
    quotas: list[float | None] = []
    cpusets: list[float | None] = []
    memories: list[float | None] = []
    for mount in parse_mountinfo(mountinfo):
        if mount.version == 2:
            if "" not in paths:
                continue
            for folder in cgroup_directories(mount, paths[""]):
                quotas.append(_parsed(folder / "cpu.max", parse_cpu_max))
                memories.append(_parsed(folder / "memory.max", parse_memory_max))
            inner = cgroup_directories(mount, paths[""])[:1]
            cpusets += [_parsed(folder / "cpuset.cpus.effective", _cpu_count) for folder in inner]
            continue
        for controller in ("cpu", "cpuset", "memory"):
            if controller not in mount.controllers or controller not in paths:
                continue
            folders = cgroup_directories(mount, paths[controller])
            if controller == "cpu":
                quotas += [_v1_quota(folder) for folder in folders]
            elif controller == "cpuset":
                cpusets += [_parsed(folder / "cpuset.effective_cpus", _cpu_count) for folder in folders[:1]]
            else:
                memories += [_parsed(folder / "memory.limit_in_bytes", parse_memory_max) for folder in folders]
    cpuset = _smallest(cpusets)
    memory = _smallest(memories)
    return ContainerLimits(
        cpu_quota=_smallest(quotas),
        cpuset_cpus=int(cpuset) if cpuset is not None else None,
        memory_bytes=int(memory) if memory is not None else None,
    )


def _cpu_count(text: str) -> int | None:
    return parse_cpu_list(text) or None


def _parsed(path: Path, parse: Callable[[str], float | None]) -> float | None:
    text = _read(path)
    if text is None:
        return None
    try:
        value = parse(text)
    except (ValueError, IndexError):
        return None
    return float(value) if value is not None else None


def _v1_quota(folder: Path) -> float | None:
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    if quota is None or period is None:
        return None
    try:
        return parse_cfs_quota(quota, period)
    except ValueError:
        return None


def usable_cpus(limits: ContainerLimits, affinity: int) -> int:
    """Whole cores this process may keep busy: the quota rounded down (a second thread on a
    1.5-CPU quota mostly waits for its turn), the cpuset and the affinity; at least 1."""
    candidates = [affinity]
    if limits.cpu_quota is not None:
        candidates.append(int(limits.cpu_quota + 1e-9))
    if limits.cpuset_cpus is not None:
        candidates.append(limits.cpuset_cpus)
    return max(1, min(candidates))


def current_usable_cpus() -> int:
    """`usable_cpus` for this process now: its cgroup and its scheduler affinity."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return usable_cpus(read_limits(), affinity)


def current_memory_limit() -> int | None:
    """The container's memory limit in bytes (cgroup v2 `memory.max`, v1 `memory.limit_in_bytes`)."""
    return read_limits().memory_bytes
