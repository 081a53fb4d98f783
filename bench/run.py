"""`make bench`: the agent's backup against the best shell pipelines, on throwaway servers.

Starts a PostgreSQL and a MariaDB server, loads the same generated data into both (bench/dataset.py),
then runs, interleaved and repeated, the agent's `backup` and the reference pipelines on the same
database, and writes docs/performance.md. Also: the in-process PostgreSQL check against the
`pg_restore` one, peak RSS at twice the data, MongoDB's built-in dumper, the retention planner, and
the daemon at rest. `--size` sets the data per server (default 500MB, about 12 minutes in all).
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT / "tests"), str(BENCH)]

import counts_bench  # noqa: E402
import dataset  # noqa: E402
import impact  # noqa: E402
import measure  # noqa: E402
import report  # noqa: E402
from measure import Sample, run_timed  # noqa: E402

PYTHON = sys.executable
AGENT = [PYTHON, str(BENCH / "agent_probe.py")]
ZSTD_LEVEL = 3


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 500MB, 2GB)")
    return int(float(match[1]) * {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}[match[2]])


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--size",
        type=parse_size,
        default=parse_size("500MB"),
        help="generated data per server, about the plain dump size (default 500MB)",
    )
    parser.add_argument("--repeat", type=int, default=5, help="interleaved rounds of the fast variants (default 5)")
    parser.add_argument("--gzip-repeat", type=int, default=3, help="rounds that include the gzip references")
    parser.add_argument("--double-repeat", type=int, default=3, help="rounds at twice the data (RSS growth)")
    parser.add_argument("--idle-seconds", type=float, default=150, help="how long to watch the idle daemon")
    parser.add_argument("--mongo-documents", type=int, default=100_000)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "performance.md")
    parser.add_argument("--work-dir", type=Path, help="scratch folder (default: a new one in /var/tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (results.json: every figure)")
    parser.add_argument("--only", choices=("postgresql", "mysql"), help="one engine's comparison only")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=(
            *("comparison", "impact", "double", "mongo", "retention", "daemon", "check-cost", "profile", "counts"),
            "scale",
        ),
        help="leave a section out (repeatable)",
    )
    parser.add_argument("--impact-rounds", type=int, default=2, help="rounds of the application-impact windows")
    parser.add_argument("--pgbench-scale", type=int, default=20, help="pgbench -i scale of the application")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few minutes: 150MB, 2 rounds, one impact round, short idle watch (for iterating, not for the docs)",
    )
    parser.add_argument(
        "--variants", action="store_true", help="also time tuning variants (zstd level 1, threads 0, 256 KiB reads)"
    )
    parser.add_argument("--note", default="", help="a sentence about the machine for the report (e.g. shared)")
    args = parser.parse_args(argv)
    if args.quick:
        args.size = min(args.size, parse_size("150MB"))
        args.repeat, args.gzip_repeat, args.double_repeat = 2, 1, 1
        args.idle_seconds, args.mongo_documents = min(args.idle_seconds, 30), 20_000
        args.impact_rounds, args.pgbench_scale = 1, min(args.pgbench_scale, 10)
        if args.output == ROOT / "docs" / "performance.md":
            args.output = ROOT / "bench" / "quick.md"  # never the published figures
    return args


# --------------------------------------------------------------------------------------------------
# what runs


@dataclass
class Variant:
    """One command the rounds repeat; `run` returns a Sample."""

    key: str
    label: str
    engine: str
    run: Callable[[], Sample]
    command: str
    group: str = "fast"  # fast | gzip
    samples: list[Sample] = field(default_factory=list)


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.counter = 0
        self.results: dict[str, Any] = {"started_at": datetime.now(UTC).isoformat(timespec="seconds")}
        self.servers: dict[str, Any] = {}
        self.log_lines: list[str] = []

    def say(self, message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        self.log_lines.append(line)
        print(line, flush=True)

    def scratch(self, stem: str) -> Path:
        self.counter += 1
        return self.work / f"{stem}-{self.counter}"

    # --- servers and data ----------------------------------------------------------------------
    def pg_env(self) -> dict[str, str]:
        server = self.servers["postgresql"]
        passfile = self.work / "pgpass"
        if not passfile.exists():
            passfile.touch(mode=0o600)
            passfile.write_text(f"*:*:*:{server.user}:{server.password}\n")
        return {**os.environ, "PGPASSFILE": str(passfile)}

    def pg_dump_command(self) -> str:
        server = self.servers["postgresql"]
        pg_dump = Path(server.bin_dir) / "pg_dump"
        return (
            f"{pg_dump} --format=custom --compress=0 --host={server.host} --port={server.port} "
            f"--username={server.user} --no-password --dbname=bench"
        )

    def mariadb_dump_command(self) -> str:
        server = self.servers["mysql"]
        options = self.work / "client.cnf"
        if not options.exists():
            options.touch(mode=0o600)
            options.write_text(f'[client]\nuser="{server.user}"\npassword="{server.password}"\n')
        # the agent's own options (agent/engines/mysql/engine.py), so only the pipeline differs
        return (
            f"mariadb-dump --defaults-file={options} --protocol=TCP --host={server.host} --port={server.port} "
            "--single-transaction --quick --routines --events --triggers --hex-blob "
            "--default-character-set=utf8mb4 --no-tablespaces --max-allowed-packet=1073741824 -- bench"
        )

    def server_group(self, engine: str) -> int:
        return int(self.servers[engine]._process.pid)

    # --- commands ------------------------------------------------------------------------------
    def shell(self, engine: str, pipeline: str, *, output: bool = True) -> Sample:
        target = self.scratch("reference") if output else None
        command = pipeline.format(out=target)
        env = self.pg_env() if engine == "postgresql" else dict(os.environ)
        sample = run_timed(
            ["bash", "-c", f"set -o pipefail; {command}"], env=env, server_group=self.server_group(engine)
        )
        if target is not None:
            sample.stored_bytes = target.stat().st_size
            target.unlink()
        return sample

    def agent_config(
        self,
        storage: Path,
        *,
        level: int = ZSTD_LEVEL,
        threads: int = -1,
        copies: tuple[str, ...] = ("",),
        impact: str | None = None,
        default_priority: bool = False,
        job_options: dict[str, dict[str, Any]] | None = None,
    ) -> Path:
        """A config for every running server; `copies` repeats each job under name + suffix.

        The comparison runs every job at nice 0 (as the reference pipes run); `default_priority`
        leaves nice and ionice at the agent's defaults, `impact` sets storage.impact; `job_options`
        adds keys by engine ("postgresql", "mysql", "mongodb"), e.g. busy_threshold.
        """
        extra = {
            engine: [f"{key} = {json.dumps(value) if not isinstance(value, bool) else str(value).lower()}"]
            for engine, options in (job_options or {}).items()
            for key, value in options.items()
        }
        lines = [
            "[storage]",
            f'path = "{storage}"',
            'compression = "zstd"',
            f"level = {level}",
            f"threads = {threads}",
            'max_usage = "95%"',
            'reserve = "1GiB"',
            *([f'impact = "{impact}"'] if impact else []),
            "",
            "[log]",
            f'file = "{storage.parent / (storage.name + ".log")}"',
            'level = "info"',
            "",
            "[retention]",
            "keep_last = 30",
            "keep_min = 1",
        ]
        priority = [] if default_priority else ["nice = 0", 'ionice = "none"']
        common = ['databases = ["bench"]', *priority, 'schedule = "0 3 1 1 *"', 'jitter = "0s"']
        for suffix in copies:
            if "postgresql" in self.servers:
                server = self.servers["postgresql"]
                lines += [
                    "",
                    f"[jobs.pg{suffix}]",
                    'engine = "postgresql"',
                    f'host = "{server.host}"',
                    f"port = {server.port}",
                    f'user = "{server.user}"',
                    f'password = "{server.password}"',
                    "include_globals = false",
                    *common,
                    *extra.get("postgresql", []),
                ]
            if "mysql" in self.servers:
                server = self.servers["mysql"]
                lines += [
                    "",
                    f"[jobs.mariadb{suffix}]",
                    'engine = "mysql"',
                    f'host = "{server.host}"',
                    f"port = {server.port}",
                    f'user = "{server.user}"',
                    f'password = "{server.password}"',
                    "include_grants = false",
                    *common,
                    *extra.get("mysql", []),
                ]
            if "mongodb" in self.servers:
                server = self.servers["mongodb"]
                lines += [
                    "",
                    f"[jobs.mongo{suffix}]",
                    'engine = "mongodb"',
                    f'uri = "{server.uri()}"',
                    'tool = "builtin"',
                    *common,
                ]
        path = storage.parent / (storage.name + ".toml")
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)
        return path

    def agent(
        self,
        job: str,
        engine: str,
        *,
        env: dict[str, str] | None = None,
        level: int = ZSTD_LEVEL,
        threads: int = -1,
        keep: bool = False,
        impact: str | None = None,
        default_priority: bool = False,
        options: dict[str, Any] | None = None,
    ) -> Sample:
        storage = self.scratch("storage")
        if impact is None and not default_priority:
            impact = "fastest"  # the comparison: no pacing, as fast as the reference pipes
        config = self.agent_config(
            storage,
            level=level,
            threads=threads,
            impact=impact,
            default_priority=default_priority,
            job_options={engine: options} if options else None,
        )
        result = storage.parent / (storage.name + ".probe.json")
        module = {
            "postgresql": "agent.engines.postgres.engine",
            "mysql": "agent.engines.mysql.engine",
            "mongodb": "agent.engines.mongo.engine",
        }[engine]
        sample = run_timed(
            [*AGENT, str(result), "--", "-c", str(config), "backup", "--job", job],
            env={**os.environ, "BENCH_ENGINE_MODULE": module, **(env or {})},
            server_group=self.server_group(engine),
        )
        probe = json.loads(result.read_text())
        manifests = list(storage.rglob("*.json"))
        manifests = [path for path in manifests if path.parent.parent.name == job]
        if len(manifests) != 1:
            raise RuntimeError(f"expected one manifest under {storage}, found {manifests}")
        manifest = json.loads(manifests[0].read_text())
        sample.stored_bytes = int(manifest["stored_bytes"])
        sample.extra = {
            "probe": probe,
            "raw_bytes": int(manifest["raw_bytes"]),
            "dump_seconds": float(manifest["duration_seconds"]),
            "counts": manifest.get("counts", {}),
            "warm_seconds": probe["warm_seconds"],
            "import_seconds": probe["import_seconds"],
            **logged_pacing(storage.parent / (storage.name + ".log")),
        }
        if not keep:
            self.remove(storage)
        return sample

    def remove(self, storage: Path) -> None:
        shutil.rmtree(storage, ignore_errors=True)
        for suffix in (".toml", ".log", ".probe.json"):
            (storage.parent / (storage.name + suffix)).unlink(missing_ok=True)

    # --- the comparison ------------------------------------------------------------------------
    def variants(self, engine: str) -> list[Variant]:
        zstd = f"zstd -{ZSTD_LEVEL} -T0 -q > {{out}} && sync {{out}}"
        gzip = "gzip -6 > {out} && sync {out}"
        if engine == "postgresql":
            dump = self.pg_dump_command()
            found = [
                Variant(
                    "floor",
                    "pg_dump -Fc -Z0 > /dev/null",
                    engine,
                    lambda: self.shell(engine, f"{dump} > /dev/null", output=False),
                    f"{dump} > /dev/null",
                ),
                Variant(
                    "agent",
                    "agent backup",
                    engine,
                    lambda: self.agent("pg", engine),
                    "`backup-agent backup --job pg` (nice = 0, ionice = none; zstd 3, threads -1)",
                ),
                Variant(
                    "agent_pg_restore",
                    "agent, former pg_restore check",
                    engine,
                    lambda: self.agent("pg", engine, env={"BENCH_PG_CHECK": "pg_restore"}),
                    "the agent with the former `pg_restore --file=/dev/null` check (BENCH_PG_CHECK)",
                ),
                Variant(
                    "agent_no_pause",
                    "agent, no pause after short reads",
                    engine,
                    lambda: self.agent("pg", engine, env={"BENCH_TRICKLE_PAUSE": "0"}),
                    "the agent without the 1 ms pause after a short read (BENCH_TRICKLE_PAUSE=0)",
                ),
                Variant(
                    "agent_jobs8m",
                    "agent, zstd's default 8 MiB jobs",
                    engine,
                    lambda: self.agent("pg", engine, env={"BENCH_ZSTD_JOB_SIZE": str(8 << 20)}),
                    "the agent with zstd's default job size, 4 windows (BENCH_ZSTD_JOB_SIZE)",
                ),
                Variant(
                    "zstd",
                    f"pg_dump -Fc -Z0 | zstd -{ZSTD_LEVEL} -T0 > f && sync f",
                    engine,
                    lambda: self.shell(engine, f"{dump} | {zstd}"),
                    f"{dump} | {zstd}",
                ),
                Variant(
                    "gzip",
                    "pg_dump -Fc -Z0 | gzip -6 > f && sync f",
                    engine,
                    lambda: self.shell(engine, f"{dump} | {gzip}"),
                    f"{dump} | {gzip}",
                    group="gzip",
                ),
            ]
        else:
            dump = self.mariadb_dump_command()
            found = [
                Variant(
                    "floor",
                    "mariadb-dump > /dev/null",
                    engine,
                    lambda: self.shell(engine, f"{dump} > /dev/null", output=False),
                    f"{dump} > /dev/null",
                ),
                Variant(
                    "agent",
                    "agent backup",
                    engine,
                    lambda: self.agent("mariadb", engine),
                    "`backup-agent backup --job mariadb` (nice = 0, ionice = none; zstd 3, threads -1)",
                ),
                Variant(
                    "agent_no_pause",
                    "agent, no pause after short reads",
                    engine,
                    lambda: self.agent("mariadb", engine, env={"BENCH_TRICKLE_PAUSE": "0"}),
                    "the agent without the 1 ms pause after a short read (BENCH_TRICKLE_PAUSE=0)",
                ),
                Variant(
                    "zstd",
                    f"mariadb-dump | zstd -{ZSTD_LEVEL} -T0 > f && sync f",
                    engine,
                    lambda: self.shell(engine, f"{dump} | {zstd}"),
                    f"{dump} | {zstd}",
                ),
                Variant(
                    "gzip",
                    "mariadb-dump | gzip -6 > f && sync f",
                    engine,
                    lambda: self.shell(engine, f"{dump} | {gzip}"),
                    f"{dump} | {gzip}",
                    group="gzip",
                ),
            ]
        if self.args.variants:
            job = "pg" if engine == "postgresql" else "mariadb"
            found += [
                Variant(
                    "agent_level1",
                    "agent, zstd level 1",
                    engine,
                    lambda: self.agent(job, engine, level=1),
                    "storage.level = 1",
                ),
                Variant(
                    "agent_threads0",
                    "agent, zstd threads 0",
                    engine,
                    lambda: self.agent(job, engine, threads=0),
                    "storage.threads = 0 (compress in the main thread)",
                ),
                Variant(
                    "agent_read256k",
                    "agent, 256 KiB reads",
                    engine,
                    lambda: self.agent(job, engine, env={"BENCH_CHUNK_SIZE": str(256 << 10)}),
                    "agent.process.CHUNK_SIZE = 256 KiB (BENCH_CHUNK_SIZE)",
                ),
            ]
        return found

    def rounds(self, engine: str, variants: list[Variant], repeat: int, gzip_repeat: int) -> None:
        for number in range(repeat):
            chosen = [v for v in variants if v.group == "fast" or number < gzip_repeat]
            shift = number % len(chosen)
            for variant in chosen[shift:] + chosen[:shift]:
                sample = variant.run()
                variant.samples.append(sample)
                self.say(
                    f"{engine} round {number + 1}/{repeat}: {variant.label}: {sample.wall:.2f} s, "
                    f"cpu {sample.cpu:.2f} s, server {sample.server_cpu:.2f} s"
                    + (f", {sample.stored_bytes / 1e6:.1f} MB" if sample.stored_bytes else "")
                )


# --------------------------------------------------------------------------------------------------
# the sections


def machine_facts() -> dict[str, Any]:
    import zstandard

    def first_line(argv: list[str]) -> str:
        try:
            completed = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
        except OSError:
            return "not installed"
        text = (completed.stdout or completed.stderr).strip()
        return text.splitlines()[0] if text else ""

    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    load = os.getloadavg()
    virtualization = first_line(["systemd-detect-virt"]) or "unknown"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_bytes": memory,
        "kernel": platform.release(),
        "virtualization": virtualization,
        "load_at_start": [round(value, 2) for value in load],
        "python": platform.python_version(),
        "zstandard": zstandard.__version__,
        "libzstd": ".".join(map(str, zstandard.ZSTD_VERSION)),
        "zstd_cli": first_line(["zstd", "--version"]),
        "gzip": first_line(["gzip", "--version"]),
        "pg_dump": first_line(["pg_dump", "--version"]),
        "mariadb_dump": first_line(["mariadb-dump", "--version"]),
        "filesystem": first_line(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "--target", "/var/tmp"]),
    }


def load_data(bench: Bench, part: int) -> dict[str, int]:
    """Generate one part of the data and load it into every server of the comparison."""
    files = dataset.Part(bench.args.size, part).write(bench.work / "data")
    sizes = {table: path.stat().st_size for table, path in files.items()}
    bench.say(f"generated part {part}: {sum(sizes.values()) / 1e6:.0f} MB of rows")
    if "postgresql" in bench.servers:
        server = bench.servers["postgresql"]
        with server.connect("bench") as connection:
            dataset.load_postgres(connection, files)
            connection.execute("VACUUM (FREEZE, ANALYZE)")  # set hint bits now, not during the first dump
        bench.say("loaded into PostgreSQL")
    if "mysql" in bench.servers:
        server = bench.servers["mysql"]
        with server.connect("bench", local_infile=True) as connection:
            dataset.load_mariadb(connection, files)
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE TABLE orders, documents, attachments")
        bench.say("loaded into MariaDB")
    for path in files.values():
        path.unlink()
    return sizes


def database_sizes(bench: Bench) -> dict[str, int]:
    sizes = {}
    if "postgresql" in bench.servers:
        with bench.servers["postgresql"].connect("bench") as connection:
            row = connection.execute("SELECT pg_database_size('bench')").fetchone()
            sizes["postgresql"] = int(row[0])
    if "mysql" in bench.servers:
        with bench.servers["mysql"].connect("bench") as connection, connection.cursor() as cursor:
            cursor.execute(
                "SELECT SUM(data_length + index_length) FROM information_schema.tables WHERE table_schema = 'bench'"
            )
            sizes["mysql"] = int(cursor.fetchone()[0])
    return sizes


def profile_run(bench: Bench, job: str, engine: str) -> dict[str, Any]:
    """One extra agent run with cProfile on the main thread; the top functions by own time."""
    import pstats

    path = bench.work / f"{job}.prof"
    sample = bench.agent(job, engine, env={"BENCH_CPROFILE": str(path)})
    stats = pstats.Stats(str(path))
    rows = []
    for (filename, line, function), (_, calls, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append(
            {
                "function": f"{Path(filename).name}:{line}({function})",
                "calls": calls,
                "own": round(own, 3),
                "cumulative": round(cumulative, 3),
            }
        )
    rows.sort(key=lambda row: row["own"], reverse=True)
    return {
        "wall": sample.wall,
        "top": rows[:10],
        "threads": sample.extra["probe"]["threads"],
        "children_cpu": sample.extra["probe"]["children_cpu_seconds"],
        "server_cpu": sample.server_cpu,
    }


def check_cost(bench: Bench) -> dict[str, Any]:
    """Feed one raw custom-format dump through each PostgreSQL check; CPU per GB of archive."""
    from agent.engines.postgres.archive import CustomArchiveCheck
    from agent.engines.postgres.engine import PgRestoreCheck

    raw = bench.work / "raw.pgdump"
    subprocess.run(
        ["bash", "-c", f"set -o pipefail; {bench.pg_dump_command()} | cat > {raw}"], env=bench.pg_env(), check=True
    )
    size = raw.stat().st_size
    results: dict[str, Any] = {"archive_bytes": size}
    pg_restore = str(Path(bench.servers["postgresql"].bin_dir) / "pg_restore")
    makers: dict[str, Callable[[], Any]] = {
        "read only (the loop itself)": lambda: None,
        "in-process CustomArchiveCheck": CustomArchiveCheck,
        "pg_restore --file=/dev/null child": lambda: PgRestoreCheck(pg_restore),
    }
    for name, make in makers.items():
        runs = []
        for _ in range(3):
            own_before = time.process_time()
            children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            check = make()
            with raw.open("rb", buffering=0) as source:
                while chunk := source.read(1 << 20):
                    if check is not None:
                        check.feed(chunk)
            if check is not None:
                check.finish()
            wall = time.perf_counter() - started
            children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
            child_cpu = (
                children_after.ru_utime + children_after.ru_stime - children_before.ru_utime - children_before.ru_stime
            )
            runs.append((wall, time.process_time() - own_before + child_cpu))
        results[name] = {
            "wall": measure.median([run[0] for run in runs]),
            "cpu": measure.median([run[1] for run in runs]),
        }
        bench.say(f"check cost: {name}: {results[name]['cpu']:.2f} s CPU for {size / 1e6:.0f} MB")
    raw.unlink()
    return results


def mongo_section(bench: Bench) -> dict[str, Any]:
    """The built-in dumper against the SecantusDB test server: documents/s and MB/s of BSON."""
    from servers.mongo import running_secantus

    documents = bench.args.mongo_documents
    with running_secantus(auth=False) as server:
        bench.servers["mongodb"] = server
        try:
            with server.client() as client:
                collection = client.bench.events
                batch = []
                for number in range(documents):
                    batch.append(
                        {
                            "_id": number,
                            "user": f"user-{number % 5000:05d}",
                            "kind": ("view", "click", "buy")[number % 3],
                            "amount": (number * 7919) % 100_000 / 100,
                            "tags": [f"t{number % 17}", f"t{number % 29}"],
                            "payload": {"text": "lorem ipsum dolor sit amet " * (1 + number % 20), "n": number},
                        }
                    )
                    if len(batch) == 1000:
                        collection.insert_many(batch)
                        batch.clear()
                if batch:
                    collection.insert_many(batch)
                stats = client.bench.command("dbStats")
            bench.say(f"MongoDB: {documents} documents, {stats['dataSize'] / 1e6:.1f} MB of BSON")
            samples = [bench.agent("mongo", "mongodb") for _ in range(3)]
        finally:
            del bench.servers["mongodb"]
    dump_seconds = measure.median([sample.extra["dump_seconds"] for sample in samples])
    return {
        "documents": documents,
        "bson_bytes": int(stats["dataSize"]),
        "dump_seconds": dump_seconds,
        "wall": measure.median([sample.wall for sample in samples]),
        "archive_bytes": samples[0].extra["raw_bytes"],
        "stored_bytes": samples[0].stored_bytes,
        "client_cpu": measure.median([sample.cpu for sample in samples]),
        "server_cpu": measure.median([sample.server_cpu for sample in samples]),
        "maxrss_bytes": max(sample.extra["probe"]["maxrss_bytes"] for sample in samples),
    }


def retention_section(bench: Bench) -> dict[str, Any] | None:
    if not (BENCH / "retention_bench.py").exists():
        return None
    import retention_bench

    seconds = retention_bench.bench(100_000, 10)
    bench.say(f"retention plan for 100,000 backups: {seconds * 1000:.0f} ms")
    return {"backups": 100_000, "series": 10, "seconds": seconds}


class IdleDaemon:
    """`backup-agent run` at rest, in two phases, sampling /proc/PID (RSS; CPU of every thread).

    Phase one is the issue's method: a job that runs rarely and has a good backup on disk, so the
    daemon starts and has nothing to do. Phase two is its state after work: a SIGHUP adds a copy
    of each job, never backed up, which the daemon catches up at once (real backups of the bench
    databases, in its own process); then it rests again.
    """

    def __init__(self, bench: Bench, storage: Path, jobs: list[str]) -> None:
        self.bench = bench
        self.storage = storage
        self.jobs = jobs
        self.config = bench.agent_config(storage)
        self.samples: dict[str, list[tuple[float, float, int]]] = {"start": [], "after_backups": []}
        self.process: subprocess.Popen[bytes] | None = None
        self.catch_up_seconds = 0.0
        self.anonymous: dict[str, int] = {}  # heap and stacks, at the last sample (the rest is mapped files)

    def __enter__(self) -> IdleDaemon:
        for job in self.jobs:  # a good backup on disk: nothing is due when the daemon starts
            subprocess.run(
                [PYTHON, "-m", "agent", "-c", str(self.config), "backup", "--job", job], check=True, capture_output=True
            )
        self.process = subprocess.Popen(
            [PYTHON, "-m", "agent", "-c", str(self.config), "run"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(10)  # start-up: imports, config, catalog scan, scheduler
        return self

    def run_backups(self) -> None:
        """Add a never-backed-up copy of each job and SIGHUP: the daemon catches them up at once."""
        assert self.process is not None
        started = time.monotonic()
        self.bench.agent_config(self.storage, copies=("", "_again"))
        self.process.send_signal(signal.SIGHUP)
        while not all(list((self.storage / f"{job}_again").glob("*/*.json")) for job in self.jobs):
            if self.process.poll() is not None or time.monotonic() - started > 600:
                raise RuntimeError(f"the daemon did not catch up the new jobs; see {self.storage}.log")
            time.sleep(0.5)
        self.catch_up_seconds = time.monotonic() - started
        time.sleep(5)  # retention and state after the last backup

    def sample(self, phase: str) -> None:
        """CPU from schedstat (nanoseconds, every thread) rather than stat's 10 ms ticks."""
        assert self.process is not None
        cpu = 0.0
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            with contextlib.suppress(OSError):
                cpu += int((task / "schedstat").read_text().split()[0]) / 1e9
        rss = 0
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
        self.samples[phase].append((time.monotonic(), cpu, rss))
        rollup = Path(f"/proc/{self.process.pid}/smaps_rollup").read_text()
        anonymous = re.search(r"^Anonymous:\s+(\d+) kB", rollup, re.MULTILINE)
        self.anonymous[phase] = int(anonymous[1]) * 1024 if anonymous else 0

    def watch(self, seconds: float) -> None:
        """Phase one for half of `seconds`, the backups, phase two for the other half."""
        for phase in ("start", "after_backups"):
            if phase == "after_backups":
                self.run_backups()
            deadline = time.monotonic() + seconds / 2
            self.sample(phase)
            while time.monotonic() < deadline:
                time.sleep(5)
                self.sample(phase)

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def result(self) -> dict[str, Any]:
        phases: dict[str, Any] = {"jobs": self.jobs, "catch_up_seconds": round(self.catch_up_seconds, 1)}
        for phase, samples in self.samples.items():
            (start, cpu_start, _), (end, cpu_end, _) = samples[0], samples[-1]
            window = end - start
            phases[phase] = {
                "seconds": round(window, 1),
                "cpu_seconds": round(cpu_end - cpu_start, 4),
                "cpu_per_hour": (cpu_end - cpu_start) / window * 3600 if window else float("nan"),
                "rss_max": max(sample[2] for sample in samples),
                "samples": len(samples),
                "rss_last": samples[-1][2],
                "anonymous_last": self.anonymous.get(phase, 0),
            }
        return phases


# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def servers(bench: Bench) -> Iterator[None]:
    from servers.mariadb import running_mariadb
    from servers.postgres import running_postgres

    with contextlib.ExitStack() as stack:
        if bench.args.only in (None, "postgresql"):
            server = stack.enter_context(running_postgres())
            with server.connect() as connection:
                connection.execute("CREATE DATABASE bench")
            with server.connect("bench") as connection:
                connection.execute(dataset.POSTGRES_SCHEMA)
            bench.servers["postgresql"] = server
            bench.say(f"PostgreSQL on port {server.port}")
        if bench.args.only in (None, "mysql"):
            server = stack.enter_context(running_mariadb())
            with server.connect_root() as connection, connection.cursor() as cursor:
                # the test server starts with 64 MiB; a production server caches its working set
                cursor.execute(f"SET GLOBAL innodb_buffer_pool_size = {max(256 << 20, 3 * bench.args.size)}")
            with server.connect() as connection, connection.cursor() as cursor:
                cursor.execute("CREATE DATABASE bench")
                cursor.execute("USE bench")
                for statement in dataset.MARIADB_SCHEMA.split(";"):
                    if statement.strip():
                        cursor.execute(statement)
            bench.servers["mysql"] = server
            bench.say(f"MariaDB on port {server.port}")
        yield


def run(args: argparse.Namespace) -> int:
    missing = [tool for tool in ("zstd", "gzip", "bash") if shutil.which(tool) is None]
    if missing:
        print(
            f"bench: the reference pipelines need {', '.join(missing)}: install them (apt-get install zstd)",
            file=sys.stderr,
        )
        return 1
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="backup-agent-bench-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o700)
    bench = Bench(args, work)
    started = time.monotonic()
    # as a wheel install leaves it: byte-compiled (PYTHONDONTWRITEBYTECODE would otherwise make
    # every agent start compile its modules again, about 40 ms)
    compileall.compile_dir(str(ROOT / "agent"), quiet=1)
    results = bench.results
    results["machine"] = machine_facts()
    results["args"] = {
        "size": args.size,
        "repeat": args.repeat,
        "gzip_repeat": args.gzip_repeat,
        "double_repeat": args.double_repeat,
        "idle_seconds": args.idle_seconds,
        "note": args.note,
        "variants": args.variants,
    }
    bench.say(f"work folder {work}; data {args.size / 1e6:.0f} MB per server")
    try:
        with servers(bench):
            results["server_versions"] = server_versions(bench)
            results["generated"] = load_data(bench, 0)
            results["database_bytes"] = database_sizes(bench)
            engines = [engine for engine in ("postgresql", "mysql") if engine in bench.servers]
            comparison: dict[str, list[Variant]] = {}
            for engine in engines:
                variants = bench.variants(engine)
                variants[0].run()  # warm-up: the data is read once from disk into the caches
                comparison[engine] = variants
            if "impact" not in args.skip:  # first, while the data is what the warm-up read
                results["impact"] = impact_section(bench)
            if "comparison" not in args.skip:
                for engine in engines:
                    bench.rounds(engine, comparison[engine], args.repeat, args.gzip_repeat)
                results["comparison"] = {engine: [variant_summary(v) for v in comparison[engine]] for engine in engines}
            if "profile" not in args.skip:
                results["profiles"] = {
                    engine: profile_run(bench, "pg" if engine == "postgresql" else "mariadb", engine)
                    for engine in engines
                }
            if "check-cost" not in args.skip and "postgresql" in bench.servers:
                results["check_cost"] = check_cost(bench)
            if "counts" not in args.skip:
                results["row_counts"] = counts_bench.counts_section(bench)
            if "retention" not in args.skip:
                results["retention"] = retention_section(bench)
            if "scale" not in args.skip and "postgresql" in bench.servers:
                import scale_bench

                scratch = bench.scratch("scale")
                scratch.mkdir()
                server = bench.servers["postgresql"]
                results["scale"] = scale_bench.scale_section(
                    server, scratch, databases=200, backups=20_000, rounds=3, say=bench.say
                )
            if "mongo" not in args.skip:
                results["mongo"] = mongo_section(bench)
            double_and_idle(bench, engines)
    finally:
        results["total_seconds"] = round(time.monotonic() - started, 1)
        (work / "results.json").write_text(json.dumps(results, indent=2, default=str))
        if args.output:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(report.render(results) + counts_bench.render(results.get("row_counts")))
            bench.say(f"wrote {args.output} ({results['total_seconds']:.0f} s in all)")
        if args.keep or args.work_dir:
            shutil.rmtree(work / "data", ignore_errors=True)
            bench.say(f"raw figures in {work / 'results.json'}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def logged_pacing(log: Path) -> dict[str, Any]:
    """What the agent's log says of its pacing: database-busy episodes, paced seconds, buffer pool events."""
    found: dict[str, Any] = {"busy_episodes": 0, "paced_seconds": 0.0, "busy_paced_seconds": 0.0, "buffer_pool": []}
    try:
        lines = log.read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        name = event.get("event", "")
        if name == "backup.paced" and event.get("reason") == "database_busy":
            found["busy_episodes"] += 1
        elif name == "backup.finished":
            found["paced_seconds"] += float(event.get("paced_seconds", 0))
            found["busy_paced_seconds"] += float(event.get("paced_database_busy_seconds", 0))
        elif name.startswith("buffer_pool."):
            found["buffer_pool"].append(name)
    return found


def impact_section(bench: Bench) -> dict[str, Any]:
    """The application during a backup: pgbench's TPS and latency per window; MariaDB's hot set."""
    args = bench.args
    found: dict[str, Any] = {"machine_load_at_start": [round(value, 2) for value in os.getloadavg()]}
    bench.results["impact"] = found  # kept in results.json whatever happens to the next part
    if "postgresql" in bench.servers:
        found["postgresql"] = impact.postgres_section(
            bench, rounds=args.impact_rounds, scale=args.pgbench_scale, probe_seconds=10 if args.quick else 20
        )
    if "mysql" in bench.servers:
        # the pool smaller than hot set + the dumped data, as on a container sized for its working set
        pool = 128 << 20 if args.size < 400e6 else 256 << 20
        found["mysql"] = impact.mariadb_section(bench, pool_bytes=pool, lookups=5_000 if args.quick else 20_000)
    return found


def double_and_idle(bench: Bench, engines: list[str]) -> None:
    """The idle daemon is watched while the second part of the data loads (its own CPU only),
    then the agent runs at twice the data to show its memory does not grow with the database."""
    args, results = bench.args, bench.results
    watch_daemon = "daemon" not in args.skip and engines
    load_double = "double" not in args.skip and engines
    idle: IdleDaemon | None = None
    with contextlib.ExitStack() as stack:
        watcher = None
        if watch_daemon:
            jobs = ["pg" if engine == "postgresql" else "mariadb" for engine in engines]
            idle = stack.enter_context(IdleDaemon(bench, bench.scratch("daemon"), jobs))
            bench.say(
                f"daemon started (pid {idle.process.pid if idle.process else '?'}); watching it at rest, "
                "then after it has run its backups"
            )
            watcher = threading.Thread(target=idle.watch, args=(args.idle_seconds,))
            watcher.start()
        if load_double:
            results["generated_double"] = load_data(bench, 1)
            results["database_bytes_double"] = database_sizes(bench)
        if watcher is not None:
            watcher.join()
    if idle is not None:
        results["daemon"] = idle.result()
        bench.say(f"daemon at rest: {results['daemon']}")
    if load_double:
        double: dict[str, list[dict[str, Any]]] = {}
        for engine in engines:
            chosen = [v for v in bench.variants(engine) if v.key in ("agent", "zstd")]
            bench.rounds(engine, chosen, args.double_repeat, 0)
            double[engine] = [variant_summary(v) for v in chosen]
        results["double"] = double


def server_versions(bench: Bench) -> dict[str, str]:
    versions = {}
    if "postgresql" in bench.servers:
        with bench.servers["postgresql"].connect() as connection:
            versions["postgresql"] = str(connection.execute("SELECT version()").fetchone()[0])
    if "mysql" in bench.servers:
        with bench.servers["mysql"].connect() as connection, connection.cursor() as cursor:
            cursor.execute("SELECT VERSION()")
            versions["mysql"] = str(cursor.fetchone()[0])
    return versions


def variant_summary(variant: Variant) -> dict[str, Any]:
    walls = [sample.wall for sample in variant.samples]
    summary: dict[str, Any] = {
        "key": variant.key,
        "label": variant.label,
        "command": variant.command,
        "runs": len(walls),
        "walls": [round(wall, 3) for wall in walls],
        "wall": measure.median(walls),
        "wall_range": measure.spread(walls),
        "cpu": measure.median([sample.cpu for sample in variant.samples]),
        "server_cpu": measure.median([sample.server_cpu for sample in variant.samples]),
        "stored_bytes": measure.median([s.stored_bytes for s in variant.samples if s.stored_bytes is not None])
        if any(s.stored_bytes is not None for s in variant.samples)
        else None,
    }
    probes = [sample.extra["probe"] for sample in variant.samples if "probe" in sample.extra]
    if probes:
        summary["maxrss_bytes"] = max(probe["maxrss_bytes"] for probe in probes)
        worst = max(probes, key=lambda probe: probe["maxrss_bytes"])["rss_timeline"]
        summary["rss_timeline"] = worst[:: max(1, len(worst) // 20)]
        summary["maxrss_median_bytes"] = measure.median([probe["maxrss_bytes"] for probe in probes])
        summary["dump_seconds"] = measure.median([sample.extra["dump_seconds"] for sample in variant.samples])
        summary["warm_seconds"] = measure.median([sample.extra["warm_seconds"] for sample in variant.samples])
        summary["warm_walls"] = [round(sample.extra["warm_seconds"], 3) for sample in variant.samples]
        summary["import_seconds"] = measure.median([sample.extra["import_seconds"] for sample in variant.samples])
        summary["raw_bytes"] = variant.samples[0].extra["raw_bytes"]
        summary["threads"] = {
            name: measure.median([probe["threads"].get(name, 0.0) for probe in probes]) for name in probes[0]["threads"]
        }
        summary["children_cpu"] = measure.median([probe["children_cpu_seconds"] for probe in probes])
    return summary


if __name__ == "__main__":
    sys.exit(run(arguments()))
