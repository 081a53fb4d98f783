"""Row counts from the dump itself: what counting costs the agent, and what the old scan cost the server.

Called from bench/run.py with the bench's servers loaded. For each engine it dumps the bench
database once to a raw file, then:
- feeds that file in 1 MiB chunks through the check with counting (CustomArchiveCheck,
  SqlDumpCheck) and through a reference that only walks the bytes (the loop alone; the trailer
  check for MySQL): agent CPU per MB, so the counter's own MB/s;
- measures the server's CPU (its process group, from /proc) for a bare dump, and for the second
  scan the agent ran before (count(*) of every table in a repeatable-read snapshot), and the
  wall time of a dump with that scan running alongside (the old way) against the dump alone.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import measure

CHUNK = 1 << 20


def _feed(path: Any, make: Callable[[], Any]) -> tuple[float, Any]:
    """CPU seconds to feed the file through a fresh check, and the check's row counts."""
    check = make()
    started = time.process_time()
    with path.open("rb", buffering=0) as source:
        while chunk := source.read(CHUNK):
            if check is not None:
                check.feed(chunk)
    if check is not None:
        check.finish()
    counts = getattr(check, "row_counts", lambda: None)()
    return time.process_time() - started, counts


def _old_scan(bench: Any, engine: str) -> None:
    """What the agent ran before on a second connection: count(*) of every table in one snapshot."""
    server = bench.servers[engine]
    if engine == "postgresql":
        with server.connect("bench") as connection:
            connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            for table in ("orders", "documents", "attachments"):
                connection.execute(f"SELECT count(*) FROM {table}")  # fixed names
            connection.execute("ROLLBACK")
        return
    with server.connect("bench") as connection, connection.cursor() as cursor:
        cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cursor.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
        for table in ("orders", "documents", "attachments"):
            cursor.execute(f"SELECT COUNT(*) FROM `{table}`")
            cursor.fetchall()
        cursor.execute("ROLLBACK")


def _dump(bench: Any, engine: str, target: Any, *, with_scan: bool) -> tuple[float, float]:
    """(wall seconds, server CPU seconds) of one dump to `target`, the old scan alongside or not."""
    command = bench.pg_dump_command() if engine == "postgresql" else bench.mariadb_dump_command()
    env = bench.pg_env() if engine == "postgresql" else None
    group = bench.server_group(engine)
    cpu_before = measure.group_cpu_seconds(group)
    started = time.perf_counter()
    child = subprocess.Popen(["bash", "-c", f"set -o pipefail; {command} > {target}"], env=env)
    scanner = threading.Thread(target=_old_scan, args=(bench, engine)) if with_scan else None
    if scanner is not None:
        scanner.start()
        scanner.join()
    if child.wait() != 0:
        raise RuntimeError(f"{engine} dump failed")
    wall = time.perf_counter() - started
    return wall, measure.group_cpu_seconds(group) - cpu_before


def _scan_cpu(bench: Any, engine: str) -> tuple[float, float]:
    group = bench.server_group(engine)
    before, started = measure.group_cpu_seconds(group), time.perf_counter()
    _old_scan(bench, engine)
    return time.perf_counter() - started, measure.group_cpu_seconds(group) - before


def counts_section(bench: Any, repeat: int = 3) -> dict[str, Any]:
    from agent.engines.base import TrailerCheck
    from agent.engines.mysql.engine import TRAILER
    from agent.engines.mysql.row_count import SqlDumpCheck
    from agent.engines.postgres.archive import CustomArchiveCheck

    checks: dict[str, dict[str, Callable[[], Any]]] = {
        "postgresql": {"read only": lambda: None, "check with row counts": CustomArchiveCheck},
        "mysql": {
            "trailer check only": lambda: TrailerCheck(TRAILER, "dump"),
            "check with row counts": lambda: SqlDumpCheck(TRAILER, "dump"),
        },
    }
    results: dict[str, Any] = {}
    for engine in (name for name in ("postgresql", "mysql") if name in bench.servers):
        raw = bench.scratch(f"counts-{engine}")
        alone = [_dump(bench, engine, raw, with_scan=False) for _ in range(repeat)]
        both = [_dump(bench, engine, raw, with_scan=True) for _ in range(repeat)]
        scans = [_scan_cpu(bench, engine) for _ in range(repeat)]
        size = raw.stat().st_size
        section: dict[str, Any] = {"dump_bytes": size, "feeds": {}}
        for name, make in checks[engine].items():
            runs = [_feed(raw, make) for _ in range(repeat)]
            cpu = measure.median([run[0] for run in runs])
            section["feeds"][name] = {"cpu": cpu, "mb_per_s": size / 1e6 / cpu if cpu else None}
            if runs[0][1] is not None:
                section["counts"] = runs[0][1]
        section.update(
            dump_wall=measure.median([run[0] for run in alone]),
            dump_server_cpu=measure.median([run[1] for run in alone]),
            dump_with_scan_wall=measure.median([run[0] for run in both]),
            dump_with_scan_server_cpu=measure.median([run[1] for run in both]),
            scan_wall=measure.median([run[0] for run in scans]),
            scan_server_cpu=measure.median([run[1] for run in scans]),
        )
        raw.unlink()
        results[engine] = section
        bench.say(
            f"row counts, {engine}: counter {section['feeds']['check with row counts']['mb_per_s']:.0f} MB/s; "
            f"server CPU {section['dump_server_cpu']:.2f} s dump alone, "
            f"{section['dump_with_scan_server_cpu']:.2f} s with the old count scan"
        )
    return results


def render(results: dict[str, Any] | None) -> str:
    """The "Row counts" section of docs/performance.md."""
    if not results:
        return ""
    lines = [
        "",
        "## Row counts",
        "",
        "Counted from the dump's own bytes as the check reads them (PostgreSQL: the custom archive's COPY "
        "chunks; MySQL: the INSERT rows), instead of a second `count(*)` scan of every table on the server. "
        "Same bench database; the dump written to a raw file, then fed in 1 MiB chunks through each check "
        "(agent CPU, median of 3). Server CPU is the server's process group from /proc.",
        "",
        "| engine | dump MB | counter MB/s (CPU) | reference MB/s | server CPU: dump alone | dump + old scan "
        "| old scan alone | wall: dump alone | dump + old scan |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for engine, section in results.items():
        feeds = section["feeds"]
        reference = next(value for name, value in feeds.items() if name != "check with row counts")
        reference_rate = f"{reference['mb_per_s']:.0f}" if reference["mb_per_s"] else "-"
        saved = section["dump_with_scan_server_cpu"] / section["dump_server_cpu"] - 1
        lines.append(
            f"| {engine} | {section['dump_bytes'] / 1e6:.0f} | {feeds['check with row counts']['mb_per_s']:.0f} "
            f"| {reference_rate} | {section['dump_server_cpu']:.2f} s | {section['dump_with_scan_server_cpu']:.2f} s "
            f"(+{saved:.0%}) | {section['scan_server_cpu']:.2f} s | {section['dump_wall']:.2f} s "
            f"| {section['dump_with_scan_wall']:.2f} s |"
        )
    lines.append("")
    return "\n".join(lines) + "\n"
