"""Container limits from cgroup files: the parsers over real-looking samples, and the lookup over a
fake /proc and cgroup tree laid out as v2, v1 and a container that sees only part of the hierarchy."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.limits import (
    ContainerLimits,
    parse_cfs_quota,
    parse_cpu_list,
    parse_cpu_max,
    parse_memory_max,
    parse_mountinfo,
    parse_proc_cgroup,
    read_limits,
    usable_cpus,
)

V1_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / {root}/cpu rw,relatime - cgroup cgroup rw,cpu
34 31 0:31 / {root}/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / {root}/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / {root}/unified rw,relatime - cgroup2 cgroup2 rw
"""
V1_CGROUP = """\
9:name=systemd:/
4:memory:/process_api/ca49
3:cpuset:/
1:cpu:/app
0::/
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [("max 100000\n", None), ("150000 100000\n", 1.5), ("50000 100000", 0.5), ("200000", 2.0), ("", None)],
)
def test_cpu_max(text: str, expected: float | None) -> None:
    assert parse_cpu_max(text) == expected


def test_cfs_quota() -> None:
    assert parse_cfs_quota("-1\n", "100000\n") is None
    assert parse_cfs_quota("100000\n", "100000\n") == 1.0
    assert parse_cfs_quota("250000", "100000") == 2.5


@pytest.mark.parametrize(("text", "count"), [("0-1\n", 2), ("0-3,6,8-9", 7), ("5", 1), ("\n", 0)])
def test_cpu_list(text: str, count: int) -> None:
    assert parse_cpu_list(text) == count


def test_memory_max() -> None:
    assert parse_memory_max("max\n") is None
    assert parse_memory_max("536870912\n") == 536870912
    assert parse_memory_max("9223372036854771712\n") is None  # v1's "no limit"


def test_proc_cgroup_and_mountinfo() -> None:
    paths = parse_proc_cgroup(V1_CGROUP + "2:cpu,cpuacct:/both\n")
    assert paths["memory"] == "/process_api/ca49" and paths[""] == "/" and paths["cpuacct"] == "/both"
    mounts = parse_mountinfo(V1_MOUNTINFO.format(root="/sys/fs/cgroup"))
    assert [(mount.mount_point, mount.version) for mount in mounts] == [
        ("/sys/fs/cgroup/cpu", 1),
        ("/sys/fs/cgroup/cpuset", 1),
        ("/sys/fs/cgroup/memory", 1),
        ("/sys/fs/cgroup/unified", 2),
    ]
    assert "cpu" in mounts[0].controllers


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def fake_proc(tmp_path: Path, mountinfo: str, cgroup: str) -> Path:
    proc = tmp_path / "proc"
    write(proc / "mountinfo", mountinfo)
    write(proc / "cgroup", cgroup)
    return proc


def test_v1_quota_cpuset_and_memory_of_the_process_cgroup(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    write(root / "cpu" / "cpu.cfs_quota_us", "-1\n")
    write(root / "cpu" / "cpu.cfs_period_us", "100000\n")
    write(root / "cpu" / "app" / "cpu.cfs_quota_us", "150000\n")
    write(root / "cpu" / "app" / "cpu.cfs_period_us", "100000\n")
    write(root / "cpuset" / "cpuset.effective_cpus", "0-3\n")
    write(root / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")
    write(root / "memory" / "process_api" / "ca49" / "memory.limit_in_bytes", "1073741824\n")
    limits = read_limits(fake_proc(tmp_path, V1_MOUNTINFO.format(root=root), V1_CGROUP))
    assert limits == ContainerLimits(cpu_quota=1.5, cpuset_cpus=4, memory_bytes=1 << 30)
    assert usable_cpus(limits, affinity=8) == 1


def test_v2_takes_the_smallest_limit_along_the_ancestors(tmp_path: Path) -> None:
    root = tmp_path / "unified"
    write(root / "cpu.max", "max 100000\n")  # the root has none; the parent slice has one
    write(root / "machine.slice" / "cpu.max", "100000 100000\n")
    write(root / "machine.slice" / "memory.max", "max\n")
    write(root / "machine.slice" / "app" / "cpu.max", "300000 100000\n")
    write(root / "machine.slice" / "app" / "memory.max", "268435456\n")
    write(root / "machine.slice" / "app" / "cpuset.cpus.effective", "0-5\n")
    mountinfo = f"41 31 0:38 / {root} rw,relatime - cgroup2 cgroup2 rw\n"
    limits = read_limits(fake_proc(tmp_path, mountinfo, "0::/machine.slice/app\n"))
    assert limits == ContainerLimits(cpu_quota=1.0, cpuset_cpus=6, memory_bytes=256 << 20)
    assert usable_cpus(limits, affinity=16) == 1


def test_a_container_that_sees_its_own_cgroup_as_the_mount_root(tmp_path: Path) -> None:
    """In a cgroup namespace the mount's root is the container's cgroup and /proc says "/"."""
    root = tmp_path / "unified"
    write(root / "cpu.max", "200000 100000\n")
    mountinfo = f"41 31 0:38 /docker/abc {root} rw,relatime - cgroup2 cgroup2 rw\n"
    assert read_limits(fake_proc(tmp_path, mountinfo, "0::/docker/abc\n")).cpu_quota == 2.0
    # a mount that shows another part of the hierarchy says nothing about this process
    assert read_limits(fake_proc(tmp_path, mountinfo, "0::/other\n")).cpu_quota is None


def test_no_cgroup_files_means_no_limits(tmp_path: Path) -> None:
    assert read_limits(tmp_path / "missing") == ContainerLimits()
    garbage = tmp_path / "unified"
    write(garbage / "cpu.max", "lots\n")
    mountinfo = f"41 31 0:38 / {garbage} rw,relatime - cgroup2 cgroup2 rw\n"
    assert read_limits(fake_proc(tmp_path, mountinfo, "0::/\n")) == ContainerLimits()


@pytest.mark.parametrize(
    ("limits", "affinity", "expected"),
    [
        (ContainerLimits(), 2, 2),
        (ContainerLimits(cpu_quota=0.5), 8, 1),
        (ContainerLimits(cpu_quota=2.0), 8, 2),
        (ContainerLimits(cpu_quota=2.9, cpuset_cpus=4), 8, 2),
        (ContainerLimits(cpuset_cpus=3), 2, 2),
    ],
)
def test_usable_cpus(limits: ContainerLimits, affinity: int, expected: int) -> None:
    assert usable_cpus(limits, affinity) == expected
