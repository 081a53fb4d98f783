"""The agent at scale: many small databases, and 20,000 backups on disk.

Two measurements, each command a subprocess timed by wait4 (wall, CPU of its tree, peak RSS):

1. Many small databases: `backup-agent backup` of a job with N small PostgreSQL databases against
   a shell loop `for d in ...; do pg_dump -Fc --compress=0 $d | zstd -3 > f; done`, interleaved.
2. Many backups: the N real backups the agent just made (real manifests from the real writer)
   are copied, with earlier timestamps, into a scratch storage of `--backups` backups, with the
   journal lines the agent would have written; then `status`, `list`, `prune --dry-run`, `verify`
   and `verify --incremental` (after a day of new backups) run over it, each a few times.

Run alone: `python bench/scale_bench.py [--backups 20000] [--databases 200]` (starts a throwaway
PostgreSQL, prints JSON); `make bench` calls `scale_section` with its own server.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT / "tests"), str(BENCH)]

import msgspec  # noqa: E402

from agent.manifest import decode_manifest  # noqa: E402
from agent.naming import MANIFEST_SUFFIX, backup_filename, parse_backup_filename  # noqa: E402

PYTHON = sys.executable
ROWS_PER_DATABASE = 4000  # a ~45 KiB zstd custom-format dump, as in the issue (46 KiB per backup)


# A child's ru_maxrss starts from the RSS of the process it was forked from (Linux keeps the
# high-water mark across exec), so the command is started from a bare Python of a few MiB, which
# reports the rusage of the command's whole tree on the descriptor given to it.
_RUSAGE_WRAPPER = """
import json, os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
os.write(int(sys.argv[1]), json.dumps([usage.ru_utime + usage.ru_stime, usage.ru_maxrss]).encode())
sys.exit(os.waitstatus_to_exitcode(status))
"""


def timed(argv: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Run to completion; wall, user+system CPU and peak RSS (bytes) of the command's tree."""
    reader, writer = os.pipe()
    started = time.perf_counter()
    process = subprocess.Popen(
        [PYTHON, "-S", "-c", _RUSAGE_WRAPPER, str(writer), *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        pass_fds=(writer,),
    )
    os.close(writer)
    assert process.stderr is not None
    error_output = process.stderr.read()
    code = process.wait()
    wall = time.perf_counter() - started
    with os.fdopen(reader, "rb") as stream:
        cpu, maxrss_kib = json.loads(stream.read())
    if code not in (0, 1):  # verify and status --check say 1 for findings, which the bench does not plant
        raise RuntimeError(f"{' '.join(argv)} failed ({code}): {error_output.decode()[-2000:]}")
    return {"wall": wall, "cpu": cpu, "maxrss_bytes": maxrss_kib * 1024, "code": code}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def summarize(samples: list[dict[str, float]]) -> dict[str, Any]:
    return {
        "runs": len(samples),
        "wall": _median([sample["wall"] for sample in samples]),
        "walls": [round(sample["wall"], 3) for sample in samples],
        "cpu": _median([sample["cpu"] for sample in samples]),
        "cpus": [round(sample["cpu"], 3) for sample in samples],
        "maxrss_bytes": max(sample["maxrss_bytes"] for sample in samples),
    }


def agent_command(config: Path, *verb: str) -> list[str]:
    return [PYTHON, "-m", "agent", "-c", str(config), *verb]


# --------------------------------------------------------------------------------------------------
# Many small databases


def create_small_databases(server: Any, count: int) -> list[str]:
    names = [f"small{number:03d}" for number in range(count)]
    with server.connect() as connection:
        existing = {row[0] for row in connection.execute("SELECT datname FROM pg_database")}
        for name in names:
            if name not in existing:
                connection.execute(f'CREATE DATABASE "{name}"')
    for number, name in enumerate(names):
        with server.connect(name) as connection:
            connection.execute(
                "CREATE TABLE IF NOT EXISTS orders "
                "(id bigint PRIMARY KEY, customer text, amount numeric, at timestamptz)"
            )
            connection.execute("TRUNCATE orders")
            connection.execute(
                "INSERT INTO orders SELECT n, 'customer ' || (n * 7919 %% 997), (n * 31 %% 10007) / 100.0, "
                "timestamptz '2026-01-01' + n * interval '1 minute' FROM generate_series(1, %s) AS n",
                (ROWS_PER_DATABASE + number,),
            )
    return names


def small_config(work: Path, server: Any, names: list[str], storage: Path) -> Path:
    password = work / "small.password"
    password.write_text(server.password + "\n")
    password.chmod(0o600)
    lines = [
        "[storage]",
        f'path = "{storage}"',
        'compression = "zstd"',
        "level = 3",
        'max_usage = "95%"',
        'reserve = "1GiB"',
        'impact = "fastest"',
        "",
        "[log]",
        f'file = "{storage}.log"',
        'level = "info"',
        "",
        "[retention]",
        "keep_last = 1000",
        "keep_min = 1",
        "",
        "[jobs.small]",
        'engine = "postgresql"',
        f'host = "{server.host}"',
        f"port = {server.port}",
        f'user = "{server.user}"',
        f'password_file = "{password}"',
        "include_globals = false",
        "databases = [" + ", ".join(f'"{name}"' for name in names) + "]",
        "nice = 0",
        'ionice = "none"',
        'schedule = "0 3 1 1 *"',
        'jitter = "0s"',
    ]
    path = Path(f"{storage}.toml")
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def shell_loop(work: Path, server: Any, names: list[str], out: Path) -> list[str]:
    """The issue's reference: one `pg_dump | zstd` per database, in a bash loop."""
    passfile = work / "pgpass"
    passfile.write_text(f"*:*:*:{server.user}:{server.password}\n")
    passfile.chmod(0o600)
    pg_dump = Path(server.bin_dir) / "pg_dump"
    loop = (
        f"set -o pipefail; for d in {' '.join(names)}; do "
        f"{pg_dump} -Fc --compress=0 --host={server.host} --port={server.port} --username={server.user} "
        f'--no-password "$d" | zstd -3 -q > {out}/"$d".dump.zst; done'
    )
    return ["bash", "-c", loop]


def small_databases_section(server: Any, work: Path, count: int, rounds: int, say: Any) -> tuple[dict[str, Any], Path]:
    """Agent vs shell loop over `count` small databases; returns the figures and the agent's storage.

    The agent keeps one storage, as a daily run does: from the second run on each database has its
    history (the first dump of a database also asks the server for its size), and retention looks
    at the earlier rounds' backups.
    """
    names = create_small_databases(server, count)
    passfile_env = {**os.environ, "PGPASSFILE": str(work / "pgpass")}
    agent_samples: list[dict[str, float]] = []
    loop_samples: list[dict[str, float]] = []
    storage = work / "small-storage"
    config = small_config(work, server, names, storage)
    for round_number in range(rounds + 1):  # round 0 warms the caches and is not recorded
        out = work / f"small-loop-{round_number}"
        out.mkdir()
        order = ["agent", "loop"] if round_number % 2 else ["loop", "agent"]
        for which in order:
            if which == "agent":
                sample = timed(agent_command(config, "backup", "--job", "small"))
                if sample["code"] != 0:
                    raise RuntimeError("the agent's backup of the small databases failed")
                if round_number:
                    agent_samples.append(sample)
            else:
                sample = timed(shell_loop(work, server, names, out), env=passfile_env)
                if round_number:
                    loop_samples.append(sample)
        shutil.rmtree(out)
        say(f"small databases round {round_number}: agent {agent_samples[-1:]} loop {loop_samples[-1:]}")
    agent, loop = summarize(agent_samples), summarize(loop_samples)
    return {
        "databases": count,
        "rows_per_database": ROWS_PER_DATABASE,
        "agent": agent,
        "loop": loop,
        "ratio": agent["wall"] / loop["wall"],
        "per_database_overhead_seconds": (agent["wall"] - loop["wall"]) / count,
        "loop_command": "for d in ...; do pg_dump -Fc --compress=0 $d | zstd -3 > f; done",
    }, storage


# --------------------------------------------------------------------------------------------------
# Many backups


def _journal_line(previous: bytes, entry: dict[str, Any]) -> bytes:
    """A journal line as agent/journal.py writes it (the same keys, order and hash chain)."""
    prev = hashlib.sha256(previous.rstrip(b"\n")).hexdigest() if previous else "0" * 64
    return (json.dumps({**entry, "prev": prev}, sort_keys=True, ensure_ascii=True) + "\n").encode()


def build_storage(templates: Path, storage: Path, backups: int, *, latest: datetime) -> int:
    """Copy each template backup (data file and manifest) into `storage`, hourly back from `newest`,
    until `backups` backups are there; the journal gets each one's `created` line. Returns the count."""
    newest: dict[Path, Path] = {}  # the newest backup of each folder is its template
    for path in sorted(templates.glob("*/*/*")):
        if not path.name.endswith(MANIFEST_SUFFIX) and parse_backup_filename(path.name):
            newest[path.parent] = path
    sources = sorted(newest.values())
    per_source = -(-backups // len(sources))
    journal_lines: list[tuple[str, dict[str, Any]]] = []
    made = 0
    for index, source in enumerate(sources):
        manifest = decode_manifest((source.parent / (source.name + ".json")).read_bytes(), str(source))
        parsed = parse_backup_filename(source.name)
        assert parsed is not None
        data = source.read_bytes()
        job, folder = source.parent.parent.name, source.parent.name
        destination = storage / job / folder
        destination.mkdir(parents=True, exist_ok=True, mode=0o750)
        for step in range(per_source):
            if made == backups:
                break
            moment = latest - timedelta(hours=step, seconds=index)
            name = backup_filename(parsed.job, parsed.component, moment, parsed.extension)
            copy = msgspec.structs.replace(
                manifest,
                file=name,
                started_at=(moment - timedelta(seconds=1)).isoformat(),
                finished_at=moment.isoformat(),
                run_id=f"{moment:%Y%m%dT%H%M%S}",
            )
            target = destination / name
            target.write_bytes(data)
            target.chmod(0o440)
            manifest_file = destination / (name + ".json")
            manifest_file.write_bytes(copy.to_json())  # the writer's bytes, without its fsyncs
            manifest_file.chmod(0o440)
            journal_lines.append(
                (
                    moment.isoformat(timespec="seconds"),
                    {
                        "path": f"{job}/{folder}/{name}",
                        "sha256": manifest.sha256,
                        "bytes": manifest.stored_bytes,
                        "run_id": copy.run_id,
                    },
                )
            )
            made += 1
    agent_directory = storage / ".agent"
    agent_directory.mkdir(mode=0o700, exist_ok=True)
    previous = b""
    with (agent_directory / "journal.jsonl").open("wb") as journal:
        for at, fields in sorted(journal_lines, key=lambda item: item[0]):
            line = _journal_line(previous, {"at": at, "event": "created", **fields})
            journal.write(line)
            previous = line
    (agent_directory / "journal.jsonl").chmod(0o600)
    return made


def many_backups_section(
    templates: Path, work: Path, config_template: Path, backups: int, repeat: int, say: Any
) -> dict[str, Any]:
    storage = work / "scale-storage"
    shutil.rmtree(storage, ignore_errors=True)
    started = time.perf_counter()
    newest = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    made = build_storage(templates, storage, backups, latest=newest)
    say(f"built {made} backups in {time.perf_counter() - started:.1f} s under {storage}")
    stored = sum(path.stat().st_size for path in storage.glob("*/*/*") if not path.name.endswith(".json"))
    text = config_template.read_text().replace(f'path = "{templates}"', f'path = "{storage}"')
    config = work / "scale.toml"
    config.write_text(text)
    config.chmod(0o600)
    commands = {
        "status": ["status"],
        "status_json": ["status", "--json"],
        "list": ["list"],
        "list_json": ["list", "--json"],
        "prune_dry_run": ["prune", "--dry-run"],
    }
    found: dict[str, Any] = {"backups": made, "stored_bytes": stored, "load_at_start": list(os.getloadavg())}
    first: dict[str, Any] = {}
    for key, verb in commands.items():  # the first run after the backups appeared (no index yet)
        first[key] = timed(agent_command(config, *verb))
    found["first_run"] = first
    samples: dict[str, list[dict[str, float]]] = {key: [] for key in commands}
    for _ in range(repeat):
        for key, verb in commands.items():
            samples[key].append(timed(agent_command(config, *verb)))
    for key in commands:
        found[key] = summarize(samples[key])
        say(f"{key}: {found[key]}")
    files = sorted(str(path) for path in storage.glob("*/*/*") if not path.name.endswith(MANIFEST_SUFFIX))
    listing = work / "scale-files.txt"
    listing.write_text("\0".join(files))
    # reading the bytes: sha256sum of every data file (what verify must do at least), one process
    found["read_reference"] = summarize([timed(["bash", "-c", f"xargs -0 sha256sum < {listing} > /dev/null"])])
    found["verify"] = summarize([timed(agent_command(config, "verify"))])
    say(f"verify: {found['verify']}; sha256sum of the same files: {found['read_reference']}")
    found["verify_incremental_first"] = summarize([timed(agent_command(config, "verify", "--incremental"))])
    # a day later: one new backup per database, as the daily cron meets them
    extra = work / "scale-extra"
    shutil.rmtree(extra, ignore_errors=True)
    folders = len({path.parent for path in templates.glob("*/*/*.json")})
    added = build_storage(templates, extra, folders, latest=newest + timedelta(days=1))
    for path in sorted(extra.glob("*/*/*")):
        target = storage / path.relative_to(extra)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    shutil.rmtree(extra)
    found["verify_incremental"] = summarize([timed(agent_command(config, "verify", "--incremental"))])
    found["verify_incremental_added"] = added
    found["verify_incremental_sample"] = "15%"
    found["load_at_end"] = list(os.getloadavg())
    say(f"verify --incremental: {found['verify_incremental']}")
    shutil.rmtree(storage, ignore_errors=True)
    return found


def scale_section(server: Any, work: Path, *, databases: int, backups: int, rounds: int, say: Any) -> dict[str, Any]:
    """Both measurements, with the load average before and after (the machine may be shared)."""
    found: dict[str, Any] = {"load_at_start": list(os.getloadavg())}
    small, templates = small_databases_section(server, work, databases, rounds, say)
    found["small_databases"] = small
    found["many_backups"] = many_backups_section(
        templates, work, Path(f"{templates}.toml"), backups, max(1, rounds), say
    )
    found["load_at_end"] = list(os.getloadavg())
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--databases", type=int, default=200)
    parser.add_argument("--backups", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work-dir", type=Path)
    parser.add_argument("--output", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()
    from servers.postgres import running_postgres

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="backup-agent-scale-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)

    def say(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    try:
        with running_postgres() as server:
            found = scale_section(
                server, work, databases=args.databases, backups=args.backups, rounds=args.rounds, say=say
            )
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(found, indent=2)
    if args.output:
        args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
