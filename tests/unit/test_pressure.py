"""Pacing by pressure stall information: the parser, the controller's bounds, and the gauge over
pressure files that change under a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.pressure import (
    Pacer,
    PacingSettings,
    StallGauge,
    next_share,
    parse_stall_total,
    pause_for,
    pressure_files,
)

SAMPLE = "some avg10=99.60 avg60=74.58 avg300=25.64 total=94269718\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write_stall(path: Path, total_microseconds: int) -> None:
    path.write_text(f"some avg10=0.00 avg60=0.00 avg300=0.00 total={total_microseconds}\nfull total=0\n")


def test_parse_stall_total() -> None:
    assert parse_stall_total(SAMPLE) == 94269718
    assert parse_stall_total("full avg10=0.00 total=5\n") is None


def test_the_share_rises_under_pressure_falls_without_and_stays_in_bounds() -> None:
    settings = PacingSettings(high=0.3, low=0.1, step=0.1, max_share=0.6)
    share = 0.0
    for _ in range(20):
        share = next_share(share, 0.9, settings)
    assert share == pytest.approx(0.6)
    assert next_share(0.4, 0.2, settings) == pytest.approx(0.4)  # between the thresholds: held
    for _ in range(20):
        share = next_share(share, 0.0, settings)
    assert share == 0.0
    assert next_share(0.5, None, settings) == settings.min_share  # no PSI: no pacing


def test_pause_for_makes_the_share_of_wall_time() -> None:
    assert pause_for(0.0, 1.0) == 0.0
    pause = pause_for(0.6, 1.0)
    assert pause / (pause + 1.0) == pytest.approx(0.6)


def test_gauge_reads_the_stall_share_between_samples(tmp_path: Path) -> None:
    cpu, io = tmp_path / "cpu", tmp_path / "io"
    write_stall(cpu, 0)
    write_stall(io, 0)
    clock = Clock()
    gauge = StallGauge([cpu, io], clock)
    clock.now += 2.0
    write_stall(cpu, 500_000)  # 0.5 s stalled in 2 s
    write_stall(io, 1_200_000)
    assert gauge.sample() == pytest.approx(0.6)  # the larger of the two
    assert not StallGauge([tmp_path / "none"], clock).available
    assert StallGauge([tmp_path / "none"], clock).sample() is None


def test_a_paced_dump_never_pauses_more_than_its_max_share(tmp_path: Path) -> None:
    """Saturated pressure throughout: the pauses reach, and never pass, max_share of the wall time."""
    cpu = tmp_path / "cpu"
    stalled = 0
    write_stall(cpu, stalled)
    clock = Clock()
    settings = PacingSettings(max_share=0.6, interval=0.5)
    pacer = Pacer(StallGauge([cpu], clock), settings, clock)
    started, active = clock.now, 0.0
    for _ in range(2000):
        clock.now += 0.01  # 10 ms to read and compress a chunk
        active += 0.01
        stalled += 20_000  # the machine is fully contended
        write_stall(cpu, stalled)
        clock.now += pacer.pause()
    wall = clock.now - started
    assert pacer.share == pytest.approx(0.6)
    assert pacer.paused_seconds / wall <= 0.6 + 1e-9
    assert wall <= active / (1 - 0.6) + 1e-6
    assert pacer.paused_seconds / wall > 0.5  # it did slow down


def test_quiet_machine_no_pauses(tmp_path: Path) -> None:
    cpu = tmp_path / "cpu"
    write_stall(cpu, 0)
    clock = Clock()
    pacer = Pacer(StallGauge([cpu], clock), PacingSettings(), clock)
    for _ in range(500):
        clock.now += 0.01
        assert pacer.pause() == 0.0


def test_pressure_files_prefer_the_cgroup_v2_files(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    unified = tmp_path / "unified"
    (unified / "app").mkdir(parents=True)
    (proc / "self" / "mountinfo").write_text(f"41 31 0:38 / {unified} rw,relatime - cgroup2 cgroup2 rw\n")
    (proc / "self" / "cgroup").write_text("0::/app\n")
    assert pressure_files(proc) == [proc / "pressure" / "cpu", proc / "pressure" / "io"]  # no cpu.pressure there
    (unified / "app" / "cpu.pressure").write_text(SAMPLE)
    assert pressure_files(proc) == [unified / "app" / "cpu.pressure", unified / "app" / "io.pressure"]
