"""Runs `backup-agent ARGS...` in this process and records what only the process itself can see.

Usage: python bench/agent_probe.py RESULT.json -- ARGS...

The CLI's own `main` runs unchanged; around it this records the process's peak RSS
(VmHWM: the agent alone, not its children) and its RSS over time, the CPU of each of its threads
(sampled from /proc/self/task every 0.2 s: the main loop, zstd's workers, the stderr and row-count
threads), and the CPU of its children (the dump tool). Bench-only switches, never config:
BENCH_PG_CHECK=pg_restore puts back the old `pg_restore --file=/dev/null` check, so the bench can
measure what the in-process check saves; BENCH_CHUNK_SIZE=BYTES changes the pipe read size,
BENCH_TRICKLE_PAUSE=SECONDS the pause after a short read (0: none); BENCH_ZSTD_JOB_SIZE=BYTES
the smallest zstd job (8 MiB: zstd's own default at level 3);
BENCH_CPROFILE=PATH profiles the main thread; BENCH_PACING=0 turns the gentle impact's
pressure pacing off and BENCH_SPARE_CORES=N sets the cores it leaves to the application, so the
bench can measure each of its levers alone.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ThreadSampler(threading.Thread):
    """Keeps the last CPU seconds seen for every thread of this process (threads that end keep theirs)."""

    def __init__(self, interval: float = 0.2) -> None:
        super().__init__(daemon=True, name="bench-sampler")
        self.interval = interval
        self.cpu: dict[int, float] = {}
        self.names: dict[int, str] = {}
        self.rss: list[tuple[float, int]] = []  # (seconds since start, resident bytes)
        self._born = time.monotonic()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                self.rss.append((round(time.monotonic() - self._born, 2), int(line.split()[1]) * 1024))
        for thread in threading.enumerate():
            if thread.native_id is not None:
                self.names[thread.native_id] = thread.name
        for task in Path("/proc/self/task").iterdir():
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            self.cpu[int(task.name)] = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.sample()


def _peak_rss() -> int:
    """VmHWM: this process's own peak. (ru_maxrss is not: exec carries over the peak of the memory
    it replaces, which after Python's vfork is the parent's, the bench process.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _use_pg_restore_check() -> None:
    from agent.engines.postgres import engine as postgres

    def new_check(format_name: str, tool: str | None = None) -> object:
        if format_name == postgres.CUSTOM_FORMAT:
            return postgres.PgRestoreCheck(postgres._sibling(tool, "pg_restore"))
        return original(format_name, tool)

    original = postgres.PostgresEngine.new_check
    postgres.PostgresEngine.new_check = staticmethod(new_check)  # type: ignore[assignment,method-assign]


def main() -> int:
    result_path = Path(sys.argv[1])
    argv = sys.argv[sys.argv.index("--") + 1 :]
    import_started = time.perf_counter()
    # what a backup imports, loaded before the clock starts: `warm_seconds` is then the run as the
    # daemon does it, in a process that has its modules already
    import importlib

    import agent.runner
    from agent.cli import main as agent_main

    if os.environ.get("BENCH_ENGINE_MODULE"):
        importlib.import_module(os.environ["BENCH_ENGINE_MODULE"])

    import_seconds = time.perf_counter() - import_started
    started = time.perf_counter()

    if os.environ.get("BENCH_PG_CHECK") == "pg_restore":
        _use_pg_restore_check()
    if os.environ.get("BENCH_CHUNK_SIZE"):
        import agent.process

        agent.process.CHUNK_SIZE = int(os.environ["BENCH_CHUNK_SIZE"])
    if os.environ.get("BENCH_ZSTD_JOB_SIZE"):
        import agent.compression

        agent.compression._MIN_JOB_SIZE = int(os.environ["BENCH_ZSTD_JOB_SIZE"])
    if os.environ.get("BENCH_TRICKLE_PAUSE"):
        import agent.process

        agent.process.TRICKLE_PAUSE = float(os.environ["BENCH_TRICKLE_PAUSE"])
    if os.environ.get("BENCH_PACING") == "0":
        agent.runner.new_pacer = lambda: None  # type: ignore[assignment,return-value]
    if os.environ.get("BENCH_SPARE_CORES"):
        agent.runner.GENTLE_SPARE_CORES = int(os.environ["BENCH_SPARE_CORES"])
    sampler = ThreadSampler()
    sampler.start()
    profile_path = os.environ.get("BENCH_CPROFILE")
    profiler = None
    if profile_path:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        code = agent_main(argv)
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile_path)
        sampler.stop()
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    main_id = threading.main_thread().native_id
    threads: dict[str, float] = {}
    for thread_id, seconds in sampler.cpu.items():
        if thread_id == main_id:
            name = "main thread"
        elif thread_id in sampler.names:
            name = sampler.names[thread_id]
        else:
            continue  # zstd's workers (native threads): counted below as the rest of the process CPU
        threads[name] = round(threads.get(name, 0.0) + seconds, 3)
    total = own.ru_utime + own.ru_stime
    threads["zstd workers"] = round(max(0.0, total - sum(threads.values())), 3)
    result_path.write_text(
        json.dumps(
            {
                "exit_code": code,
                "warm_seconds": round(time.perf_counter() - started, 3),
                "import_seconds": round(import_seconds, 3),
                "maxrss_bytes": _peak_rss(),
                "ru_maxrss_bytes": own.ru_maxrss * 1024,  # not the peak: after exec it keeps the parent's
                "children_maxrss_bytes": children.ru_maxrss * 1024,
                "cpu_seconds": round(own.ru_utime + own.ru_stime, 3),
                "children_cpu_seconds": round(children.ru_utime + children.ru_stime, 3),
                "threads": threads,
                "rss_timeline": sampler.rss,
            }
        )
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
