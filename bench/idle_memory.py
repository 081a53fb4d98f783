"""What the daemon holds at rest after its backups: RSS, anonymous and file-backed memory, glibc's
heap, the modules and threads it keeps, optionally tracemalloc's view.

Runs alone against throwaway servers from tests/servers/ with small data (RSS does not depend on
the machine's load, so it may run while others load the machine: `nice -n 19`):

    nice -n 19 .venv/bin/python bench/idle_memory.py [--rows 300000] [--no-mariadb] [--tracemalloc]

The daemon is started as `python bench/idle_memory.py --probe CONFIG FIFO`: the agent's own CLI
(`run`) in the main thread, plus one thread blocked reading FIFO that answers each request with a
JSON picture of the process. It never wakes on its own, so the idle figures stay the daemon's.

Measured (2026-12-03, 2 cores, load 1-3, 300,000 rows per database, both engines, 3 rounds):
glibc's default arenas left 98 MB resident (70 MiB anonymous, 10 MB of the heap in use, 60 MiB
free but kept in the worker threads' arenas, which `malloc_trim` does not shrink); with one arena
(agent/memory.py) 58 MB after every round (33 MiB anonymous), against 39 MB before any backup.
What stays is imports: 118 more modules (psycopg, pymysql, ...) and their libraries (file-backed
memory 13 -> 23 MB). The catch-up's CPU was the same either way (1.24 and 1.08 s against 1.18 and
1.06 s for two rounds of 800,000 rows).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PYTHON = sys.executable

# --- inside the daemon ------------------------------------------------------------------------


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _heap() -> dict[str, int]:
    """glibc's mallinfo2 over every arena: in use, free but kept, mmapped."""
    try:
        function = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return {}
    function.restype = _Mallinfo2
    info = function()
    return {"heap_in_use": info.uordblks, "heap_free_kept": info.fordblks, "mmapped": info.hblkhd, "arena": info.arena}


def _picture() -> dict[str, Any]:
    import tracemalloc

    modules = sorted(name for name in sys.modules if "." not in name)
    picture: dict[str, Any] = {
        "modules": len(sys.modules),
        "top_level": modules,
        "threads": sorted(thread.name for thread in threading.enumerate()),
        "gc_objects": len(gc.get_objects()),
        **_heap(),
    }
    if tracemalloc.is_tracing():
        snapshot = tracemalloc.take_snapshot()
        by_package: dict[str, int] = {}
        for statistic in snapshot.statistics("filename"):
            filename = statistic.traceback[0].filename
            match = re.search(r"(site-packages|python3\.\d+|agent)/([^/]+)", filename)
            key = match[2] if match else filename
            by_package[key] = by_package.get(key, 0) + statistic.size
        picture["traced_total"] = sum(by_package.values())
        picture["traced_by_package"] = dict(sorted(by_package.items(), key=lambda item: -item[1])[:15])
    return picture


def _answer(fifo: Path, answers: Path) -> None:
    while True:
        with fifo.open() as requests:  # blocks until the bench opens it: no wakeups at rest
            for request in requests:
                if request.strip() == "trim":  # what a full collection and malloc_trim would give back
                    gc.collect()
                    ctypes.CDLL(None).malloc_trim(0)
                answers.write_text(json.dumps(_picture()))


def probe(config: str, fifo: str) -> int:
    from agent import memory

    # what `run` does first, before this thread's first allocation fixes glibc's arena limit
    memory.use_one_arena()
    threading.Thread(target=_answer, args=(Path(fifo), Path(fifo + ".json")), name="memory-probe", daemon=True).start()
    from agent.cli import main

    return main(["-c", config, "run"])


# --- the bench side -------------------------------------------------------------------------------


def _status(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "Threads"):
            fields[key] = int(value.split()[0]) * (1 if key == "Threads" else 1024)
    return fields


def _anonymous_mappings(pid: int) -> dict[str, int]:
    """The largest anonymous RSS by mapping kind: the main heap, thread stacks (8 MiB), and
    mappings by size (glibc's thread arenas, Python's 1 MiB object arenas, libraries' buffers)."""
    kinds: dict[str, int] = {}
    kind = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            start, end = (int(part, 16) for part in head[0].split("-"))
            name = head[5] if len(head) > 5 else ""
            size = end - start
            if name == "[heap]":
                kind = "main heap"
            elif name.startswith("[stack"):
                kind = "main stack"
            elif name:
                kind = ""  # a file, [vdso], [vvar]
            elif (8 << 20) <= size <= (8 << 20) + (64 << 10):
                kind = "thread stacks"
            else:
                kind = f"{size >> 10} KiB mappings"
        elif kind and head[0] == "Anonymous:":
            kinds[kind] = kinds.get(kind, 0) + int(head[1]) * 1024
    return dict(sorted(kinds.items(), key=lambda item: -item[1])[:8])


def _cpu(pid: int) -> float:
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0]) / 1e9
    return total


class Probe:
    def __init__(self, work: Path, config: Path, tracemalloc: bool, extra: dict[str, str]) -> None:
        self.fifo = work / "probe.fifo"
        os.mkfifo(self.fifo)
        environment = dict(os.environ, PYTHONPATH=str(ROOT), **extra)
        if tracemalloc:
            environment["PYTHONTRACEMALLOC"] = "1"
        self.process = subprocess.Popen(
            [PYTHON, str(Path(__file__).resolve()), "--probe", str(config), str(self.fifo)],
            cwd=ROOT,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def picture(self, request: str = "picture") -> dict[str, Any]:
        answers = Path(str(self.fifo) + ".json")
        answers.unlink(missing_ok=True)
        with self.fifo.open("w") as requests:
            requests.write(request + "\n")
        for _ in range(200):
            if answers.exists() and answers.stat().st_size:
                time.sleep(0.05)
                status = _status(self.process.pid)
                mappings = _anonymous_mappings(self.process.pid)
                return {**status, "mappings": mappings, **json.loads(answers.read_text())}
            time.sleep(0.05)
        raise RuntimeError("the probe did not answer")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _config(storage: Path, servers: dict[str, Any], suffixes: tuple[str, ...]) -> str:
    lines = [
        "[storage]",
        f'path = "{storage}"',
        'compression = "zstd"',
        "level = 3",
        "threads = -1",
        'max_usage = "95%"',
        'reserve = "1GiB"',
        "[log]",
        f'file = "{storage}.log"',
        "[retention]",
        "keep_last = 30",
        "keep_min = 1",
    ]
    common = ['databases = ["bench"]', 'schedule = "0 3 1 1 *"', 'jitter = "0s"']
    for suffix in suffixes:
        for name, server in servers.items():
            engine, extra = (
                ("postgresql", "include_globals = false") if name == "pg" else ("mysql", "include_grants = false")
            )
            lines += [
                f"[jobs.{name}{suffix}]",
                f'engine = "{engine}"',
                f'host = "{server.host}"',
                f"port = {server.port}",
                f'user = "{server.user}"',
                f'password = "{server.password}"',
                extra,
                *common,
            ]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def _servers(rows: int, mariadb: bool) -> Iterator[dict[str, Any]]:
    sys.path.insert(0, str(ROOT / "tests"))
    from servers.mariadb import running_mariadb
    from servers.postgres import running_postgres

    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(running_postgres())
        with pg.connect() as connection:
            connection.execute("CREATE DATABASE bench")
        with pg.connect("bench") as connection:
            connection.execute(
                "CREATE TABLE rows AS SELECT g AS id, md5(g::text) || repeat(md5((g * 7)::text), 4) AS payload"
                f" FROM generate_series(1, {rows}) AS g"
            )
        servers: dict[str, Any] = {"pg": pg}
        if mariadb:
            my = stack.enter_context(running_mariadb())
            with my.connect() as connection, connection.cursor() as cursor:
                cursor.execute("CREATE DATABASE bench")
                cursor.execute("CREATE TABLE bench.rows (id INT PRIMARY KEY, payload TEXT)")
                cursor.execute(
                    "INSERT INTO bench.rows SELECT seq, CONCAT(MD5(seq), REPEAT(MD5(seq * 7), 4))"
                    f" FROM bench.seq_1_to_{rows}"
                )
            servers["mariadb"] = my
        yield servers


def _megabytes(value: int) -> str:
    return f"{value / 1e6:.0f} MB ({value / 2**20:.0f} MiB)"


def measure(
    rows: int, mariadb: bool, tracemalloc: bool, rounds: int, trim: bool, extra: dict[str, str]
) -> dict[str, Any]:
    results: dict[str, Any] = {"rows": rows}
    with (
        tempfile.TemporaryDirectory(prefix="backup-agent-idle-", dir="/var/tmp") as folder,
        _servers(rows, mariadb) as servers,
    ):
        work = Path(folder)
        storage = work / "storage"
        config = work / "config.toml"
        config.touch(0o600)
        config.write_text(_config(storage, servers, ("",)))
        environment = dict(os.environ, PYTHONPATH=str(ROOT))
        for name in servers:  # a good backup on disk: nothing is due at start
            done = subprocess.run(
                [PYTHON, "-m", "agent", "-c", str(config), "backup", "--job", name],
                env=environment,
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode:
                raise RuntimeError(f"backup --job {name} exited {done.returncode}: {done.stderr}")
        probe = Probe(work, config, tracemalloc, extra)
        try:
            time.sleep(8)
            results["start"] = probe.picture()
            suffixes: tuple[str, ...] = ("",)
            for round_ in range(1, rounds + 1):
                suffixes += (f"_again{round_}",)
                config.write_text(_config(storage, servers, suffixes))
                started, cpu_before = time.monotonic(), _cpu(probe.process.pid)
                probe.process.send_signal(signal.SIGHUP)
                new = [f"{name}{suffixes[-1]}" for name in servers]
                while not all(list((storage / job).glob("*/*.json")) for job in new):
                    if probe.process.poll() is not None or time.monotonic() - started > 600:
                        raise RuntimeError(f"the daemon did not catch up; see {storage}.log")
                    time.sleep(0.5)
                time.sleep(5)  # retention and state after the last backup
                results[f"after_round_{round_}"] = {
                    **probe.picture(),
                    "catch_up_seconds": round(time.monotonic() - started, 1),
                    "catch_up_cpu": round(_cpu(probe.process.pid) - cpu_before, 2),
                }
            if trim:
                results["after_trim"] = probe.picture("trim")
            cpu_start = _cpu(probe.process.pid)
            time.sleep(30)
            results["idle_cpu_per_hour"] = (_cpu(probe.process.pid) - cpu_start) / 30 * 3600
            results["stored_bytes"] = sum(path.stat().st_size for path in storage.rglob("*.zst"))
        finally:
            probe.stop()
    return results


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--probe":
        return probe(sys.argv[2], sys.argv[3])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300_000, help="rows per database (about 170 bytes each)")
    parser.add_argument("--rounds", type=int, default=3, help="SIGHUPs, each adding never-backed-up copies of the jobs")
    parser.add_argument("--no-mariadb", action="store_true")
    parser.add_argument("--tracemalloc", action="store_true", help="trace Python allocations (inflates RSS)")
    parser.add_argument("--trim", action="store_true", help="at the end, gc.collect and malloc_trim inside the daemon")
    parser.add_argument(
        "--environment", action="append", default=[], help="KEY=VALUE for the daemon (MALLOC_ARENA_MAX=1)"
    )
    parser.add_argument("--modules", action="store_true", help="list the top-level modules imported")
    parser.add_argument("--output", type=Path, help="the figures as JSON")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.environment)
    results = measure(args.rows, not args.no_mariadb, args.tracemalloc, args.rounds, args.trim, extra)
    for phase, picture in results.items():
        if isinstance(picture, dict):
            print(
                f"{phase}: VmRSS {_megabytes(picture['VmRSS'])}, anonymous {_megabytes(picture['RssAnon'])},"
                f" files {_megabytes(picture['RssFile'])}, heap in use {_megabytes(picture.get('heap_in_use', 0))},"
                f" heap free kept {_megabytes(picture.get('heap_free_kept', 0))},"
                f" mmapped {_megabytes(picture.get('mmapped', 0))},"
                f" threads {picture['Threads']}, modules {picture['modules']}"
            )
            if args.modules:
                print(f"  top-level modules: {' '.join(picture['top_level'])}")
            print(f"  threads: {' '.join(picture['threads'])}; gc objects {picture['gc_objects']}")
            mappings = ", ".join(f"{kind} {_megabytes(size)}" for kind, size in picture["mappings"].items())
            print(f"  anonymous by mapping: {mappings}")
            if "traced_by_package" in picture:
                print(f"  traced {_megabytes(picture['traced_total'])}: {picture['traced_by_package']}")
    print(
        f"idle CPU after: {results['idle_cpu_per_hour']:.2f} s per hour; stored {_megabytes(results['stored_bytes'])}"
    )
    if args.output:
        args.output.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
