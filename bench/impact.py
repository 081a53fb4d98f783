"""What the application feels during a backup (bench/run.py's "impact" section).

PostgreSQL: pgbench's TPC-B on its own database (`app`, `pgbench -i`) of the bench's server, first
flat out to find its maximum, then at a fixed rate of half that (`-R`) for the whole section,
logging every transaction (`-l`: completion time and latency from its scheduled start, so a
backlog counts). Meanwhile windows run in rotation: nothing (the application alone), the agent at
its defaults, the agent at each impact setting and with each gentle lever alone, and the bare
pipe `pg_dump | zstd -T0`. Each window's TPS counts the transactions that completed in it; its
p50/p95/p99 are over the same transactions. The CPU pressure (/proc/pressure/cpu) and the load
average are recorded per window, since other work on the machine moves every figure.

The agent's windows run with the database-busy signal on (its default, busy_threshold = 4 active
client backends besides the dump's); one window turns it off and one sets it to 1. pgbench at half
its maximum rarely has more than 4 of its 8 clients active at once (a --quick run on a shared
machine logged no episode at 4), so the threshold-1 window is the one where the signal engages.

MariaDB: a hot set (point lookups by primary key on a 40 MB table) with the buffer pool smaller
than hot set + dumped data: lookup latency and the buffer-pool hit ratio (Innodb_buffer_pool_reads
over Innodb_buffer_pool_read_requests) before and after a dump by the agent (with and without
protect_buffer_pool) and by the pipe.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import measure

if TYPE_CHECKING:
    from run import Bench

PGBENCH_CLIENTS = 8
PGBENCH_THREADS = 2
SETTLE_SECONDS = 3.0  # after each window: the backlog drains before the next one starts


@dataclass
class Window:
    key: str
    label: str
    run: Callable[[], dict[str, Any]]  # returns {"backup_seconds": ...} or {}


def percentile(ordered: list[float], share: float) -> float:
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))
    return ordered[index]


def cpu_stall_total() -> float | None:
    try:
        text = Path("/proc/pressure/cpu").read_text()
    except OSError:
        return None
    match = re.search(r"^some .*total=(\d+)", text, re.MULTILINE)
    return int(match[1]) / 1e6 if match else None


class PgbenchLoad:
    """pgbench at a fixed rate for `seconds`, every transaction logged."""

    def __init__(self, bench: Bench, database: str, rate: float, seconds: float) -> None:
        self.bench = bench
        self.prefix = bench.work / "pgbench-log" / "tx"
        self.prefix.parent.mkdir(exist_ok=True)
        self.rate = rate
        self.seconds = seconds
        self.database = database
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PgbenchLoad:
        self.process = subprocess.Popen(
            [
                *pgbench_argv(self.bench, self.database),
                f"--rate={self.rate:.0f}",
                f"--time={self.seconds:.0f}",
                "--log",
                f"--log-prefix={self.prefix}",
            ],
            env=self.bench.pg_env(),
            cwd=self.prefix.parent,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        if exc[0] is not None:
            self.process.terminate()
        self.process.wait()

    def transactions(self) -> list[tuple[float, float]]:
        """(completion time as epoch seconds, latency from the scheduled start in seconds), sorted."""
        rows: list[tuple[float, float]] = []
        for path in self.prefix.parent.glob(self.prefix.name + ".*"):
            with path.open() as lines:
                for line in lines:
                    fields = line.split()
                    # client transaction latency_us script epoch_s epoch_us [lag_us]
                    if len(fields) < 6 or fields[2] == "skipped":
                        continue
                    rows.append((int(fields[4]) + int(fields[5]) / 1e6, int(fields[2]) / 1e6))
        rows.sort()
        return rows


def pgbench_argv(bench: Bench, database: str) -> list[str]:
    server = bench.servers["postgresql"]
    return [
        str(Path(server.bin_dir) / "pgbench"),
        f"--host={server.host}",
        f"--port={server.port}",
        f"--username={server.user}",
        "--no-vacuum",
        f"--client={PGBENCH_CLIENTS}",
        f"--jobs={PGBENCH_THREADS}",
        database,
    ]


def maximum_tps(bench: Bench, database: str, seconds: float) -> float:
    completed = subprocess.run(
        [*pgbench_argv(bench, database), f"--time={seconds:.0f}"],
        env=bench.pg_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    match = re.search(r"tps = ([\d.]+) \((?:without initial connection time|excluding connections)", completed.stdout)
    if not match:
        raise RuntimeError(f"no tps in pgbench output: {completed.stdout[-500:]}")
    return float(match[1])


def window_figures(transactions: list[tuple[float, float]], start: float, end: float, rate: float) -> dict[str, Any]:
    inside = [latency for finished, latency in transactions if start <= finished < end]
    inside.sort()
    seconds = end - start
    tps = len(inside) / seconds if seconds > 0 else float("nan")
    return {
        "seconds": round(seconds, 2),
        "transactions": len(inside),
        "tps": tps,
        "scheduled_share": tps / rate if rate else float("nan"),
        "p50": percentile(inside, 0.50),
        "p95": percentile(inside, 0.95),
        "p99": percentile(inside, 0.99),
    }


def postgres_windows(bench: Bench, quiet_seconds: float) -> list[Window]:
    """The windows of one round; the agent at each setting, each gentle lever alone, the pipe."""

    def agent(**options: Any) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            sample = bench.agent("pg", "postgresql", default_priority=True, **options)
            return {
                "backup_seconds": sample.wall,
                "dump_seconds": sample.extra["dump_seconds"],
                "busy_episodes": sample.extra["busy_episodes"],
                "paced_seconds": sample.extra["paced_seconds"],
                "busy_paced_seconds": sample.extra["busy_paced_seconds"],
            }

        return run

    def pipe() -> dict[str, Any]:
        zstd = "zstd -3 -T0 -q > {out} && sync {out}"
        sample = bench.shell("postgresql", f"{bench.pg_dump_command()} | {zstd}")
        return {"backup_seconds": sample.wall}

    def quiet() -> dict[str, Any]:
        time.sleep(quiet_seconds)
        return {}

    return [
        Window("none", "no backup", quiet),
        Window("agent_default", "the agent, defaults (impact = gentle)", agent()),
        Window("agent_fastest", 'the agent, impact = "fastest"', agent(impact="fastest")),
        Window(
            "gentle_no_busy",
            "gentle without the database-busy signal (busy_threshold = 0)",
            agent(options={"busy_threshold": 0}),
        ),
        Window(
            "gentle_eager_busy",
            "gentle, paced while more than 1 backend is active (busy_threshold = 1)",
            agent(options={"busy_threshold": 1}),
        ),
        Window("gentle_no_pacing", "gentle, priority only (no pressure pacing)", agent(env={"BENCH_PACING": "0"})),
        Window(
            "gentle_spare_core",
            "gentle leaving a core to the app (zstd on one worker)",
            agent(env={"BENCH_SPARE_CORES": "1"}),
        ),
        Window("pipe", "`pg_dump | zstd -T0` (nice 0)", pipe),
    ]


def postgres_section(bench: Bench, *, rounds: int, scale: int, probe_seconds: float) -> dict[str, Any]:
    server = bench.servers["postgresql"]
    with server.connect() as connection:
        connection.execute("CREATE DATABASE app")
    subprocess.run(
        [
            str(Path(server.bin_dir) / "pgbench"),
            "--initialize",
            "--quiet",
            f"--scale={scale}",
            f"--host={server.host}",
            f"--port={server.port}",
            f"--username={server.user}",
            "app",
        ],
        env=bench.pg_env(),
        check=True,
        capture_output=True,
    )
    maximum = maximum_tps(bench, "app", probe_seconds)
    rate = maximum / 2
    bench.say(f"impact: pgbench scale {scale}, maximum {maximum:.0f} TPS; running at {rate:.0f} TPS")
    # unthrottled: the agent alone, as fast as it goes, for "finishes within 3x"
    alone = [bench.agent("pg", "postgresql", default_priority=True, impact="fastest").wall for _ in range(3)]
    quiet_seconds = max(5.0, measure.median(alone) * 2)
    windows = postgres_windows(bench, quiet_seconds)
    planned = rounds * (len(windows) * (quiet_seconds * 3 + SETTLE_SECONDS)) + 120
    records: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    with PgbenchLoad(bench, "app", rate, planned) as load:
        time.sleep(5)  # connections up, steady rate
        for number in range(rounds):
            shift = number % len(windows)
            for window in windows[shift:] + windows[:shift]:
                stall_before, load_window = cpu_stall_total(), os.getloadavg()[0]
                start = time.time()
                extra = window.run()
                end = time.time()
                stall_after = cpu_stall_total()
                stall = (
                    (stall_after - stall_before) / (end - start)
                    if stall_before is not None and stall_after is not None
                    else None
                )
                records.append(
                    {
                        "key": window.key,
                        "round": number,
                        "start": start,
                        "end": end,
                        "cpu_stall": stall,
                        "load": load_window,
                        **extra,
                    }
                )
                bench.say(f"impact round {number + 1}: {window.label}: {end - start:.1f} s")
                time.sleep(SETTLE_SECONDS)
        assert load.process is not None
        load.process.terminate()  # the planned time is an upper bound
    transactions = load.transactions()
    summary = []
    for window in windows:
        mine = [record for record in records if record["key"] == window.key]
        spans = [(record["start"], record["end"]) for record in mine]
        inside = sorted(latency for finished, latency in transactions if any(s <= finished < e for s, e in spans))
        seconds = sum(end - start for start, end in spans)
        tps = len(inside) / seconds if seconds else float("nan")
        backups = [record["backup_seconds"] for record in mine if "backup_seconds" in record]
        episodes = [record["busy_episodes"] for record in mine if "busy_episodes" in record]
        busy_paced = [record["busy_paced_seconds"] for record in mine if "busy_paced_seconds" in record]
        paced = [record["paced_seconds"] for record in mine if "paced_seconds" in record]
        stalls = [record["cpu_stall"] for record in mine if record["cpu_stall"] is not None]
        summary.append(
            {
                "key": window.key,
                "label": window.label,
                "windows": len(mine),
                "seconds": round(seconds, 1),
                "transactions": len(inside),
                "tps": tps,
                "scheduled_share": tps / rate,
                "p50": percentile(inside, 0.50),
                "p95": percentile(inside, 0.95),
                "p99": percentile(inside, 0.99),
                "backup_seconds": measure.median(backups) if backups else None,
                "backup_walls": [round(value, 2) for value in backups],
                "busy_episodes": sum(episodes) if episodes else None,
                "busy_paced_seconds": measure.median(busy_paced) if busy_paced else None,
                "paced_seconds": measure.median(paced) if paced else None,
                "cpu_stall": measure.median(stalls) if stalls else None,
                "load": measure.median([record["load"] for record in mine]),
                "per_window": [window_figures(transactions, s, e, rate) for s, e in spans],
            }
        )
        bench.say(
            f"impact: {window.label}: {tps:.0f} TPS ({tps / rate:.0%} of scheduled), "
            f"p50 {summary[-1]['p50'] * 1e3:.1f} ms, p99 {summary[-1]['p99'] * 1e3:.1f} ms"
            + (f", backup {summary[-1]['backup_seconds']:.2f} s" if backups else "")
        )
    with server.connect() as connection:
        connection.execute("DROP DATABASE app")
    return {
        "scale": scale,
        "clients": PGBENCH_CLIENTS,
        "maximum_tps": maximum,
        "rate": rate,
        "rounds": rounds,
        "alone_fastest_seconds": measure.median(alone),
        "alone_walls": [round(value, 2) for value in alone],
        "load_before": [round(value, 2) for value in load_before],
        "load_after": [round(value, 2) for value in os.getloadavg()],
        "windows": summary,
    }


# --------------------------------------------------------------------------------------------------
# MariaDB: the hot set


HOT_ROWS = 200_000


def _status(cursor: Any) -> tuple[int, int]:
    cursor.execute("SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_read%'")
    values = {name: int(value) for name, value in cursor.fetchall() if value.isdigit()}
    return values["Innodb_buffer_pool_read_requests"], values["Innodb_buffer_pool_reads"]


def hot_lookups(bench: Bench, lookups: int, seed: int) -> dict[str, Any]:
    """`lookups` point selects over the hot set: latency percentiles and the pool's hit ratio."""
    server = bench.servers["mysql"]
    chooser = random.Random(seed)
    latencies = []
    with server.connect("app") as connection, connection.cursor() as cursor:
        requests_before, reads_before = _status(cursor)
        for _ in range(lookups):
            key = chooser.randrange(HOT_ROWS)
            started = time.perf_counter()
            cursor.execute("SELECT payload FROM hot WHERE id = %s", (key,))
            cursor.fetchall()
            latencies.append(time.perf_counter() - started)
        requests_after, reads_after = _status(cursor)
    latencies.sort()
    requests = requests_after - requests_before
    reads = reads_after - reads_before
    return {
        "lookups": lookups,
        "p50": percentile(latencies, 0.5),
        "p99": percentile(latencies, 0.99),
        "mean": sum(latencies) / len(latencies),
        "read_requests": requests,
        "disk_reads": reads,
        "hit_ratio": 1 - reads / requests if requests else float("nan"),
    }


@contextlib.contextmanager
def buffer_pool(bench: Bench, size: int) -> Iterator[int]:
    server = bench.servers["mysql"]
    with server.connect_root() as connection, connection.cursor() as cursor:
        cursor.execute("SELECT @@innodb_buffer_pool_size")
        before = int(cursor.fetchone()[0])
        cursor.execute(f"SET GLOBAL innodb_buffer_pool_size = {size}")
        _wait_for_resize(cursor)
        cursor.execute("SELECT @@innodb_buffer_pool_size")
        now = int(cursor.fetchone()[0])
    try:
        yield now
    finally:
        with server.connect_root() as connection, connection.cursor() as cursor:
            cursor.execute(f"SET GLOBAL innodb_buffer_pool_size = {before}")
            _wait_for_resize(cursor)


def _wait_for_resize(cursor: Any) -> None:
    for _ in range(600):
        cursor.execute("SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_resize_status'")
        row = cursor.fetchone()
        status = row[1] if row else ""
        if not status or "Completed" in status or "complete" in status.lower():
            return
        time.sleep(0.1)


def mariadb_section(bench: Bench, *, pool_bytes: int, lookups: int) -> dict[str, Any]:
    server = bench.servers["mysql"]
    with server.connect_root() as connection, connection.cursor() as cursor:
        cursor.execute("CREATE DATABASE app")
        cursor.execute("USE app")  # the sequence engine's seq_1_to_N tables live in the current database
        cursor.execute("CREATE TABLE app.hot (id INT PRIMARY KEY, payload VARCHAR(200) NOT NULL) ENGINE=InnoDB")
        cursor.execute(f"INSERT INTO app.hot SELECT seq - 1, REPEAT(MD5(seq), 6) FROM seq_1_to_{HOT_ROWS}")
        cursor.execute("SELECT @@innodb_old_blocks_time, @@innodb_old_blocks_pct")
        old_blocks_time, old_blocks_pct = cursor.fetchone()
    results: dict[str, Any] = {
        "hot_rows": HOT_ROWS,
        "old_blocks_time": int(old_blocks_time),
        "old_blocks_pct": int(old_blocks_pct),
        "runs": [],
    }
    dumps: list[tuple[str, str, Callable[[], float]]] = [
        ("agent", "the agent, defaults", lambda: bench.agent("mariadb", "mysql", default_priority=True).wall),
        (
            "agent_protected",
            "the agent, protect_buffer_pool = true",
            lambda: bench.agent("mariadb", "mysql", default_priority=True, options={"protect_buffer_pool": True}).wall,
        ),
        (
            "pipe",
            "`mariadb-dump | zstd -T0`",
            lambda: bench.shell("mysql", f"{bench.mariadb_dump_command()} | zstd -3 -T0 -q > {{out}}").wall,
        ),
    ]
    with buffer_pool(bench, pool_bytes) as pool:
        results["pool_bytes"] = pool
        bench.say(f"impact: MariaDB hot set of {HOT_ROWS} rows, buffer pool {pool / 2**20:.0f} MiB")
        for key, label, dump in dumps:
            for seed in range(2):  # the hot set into the pool
                hot_lookups(bench, lookups, seed)
            before = hot_lookups(bench, lookups, 10)
            seconds = dump()
            after = hot_lookups(bench, lookups, 11)
            again = hot_lookups(bench, lookups, 12)
            results["runs"].append(
                {"key": key, "label": label, "dump_seconds": seconds, "before": before, "after": after, "again": again}
            )
            bench.say(
                f"impact: MariaDB {label}: hit ratio {before['hit_ratio']:.2%} -> {after['hit_ratio']:.2%}, "
                f"p50 {before['p50'] * 1e3:.2f} -> {after['p50'] * 1e3:.2f} ms"
            )
    with server.connect_root() as connection, connection.cursor() as cursor:
        cursor.execute("DROP DATABASE app")
    return results
