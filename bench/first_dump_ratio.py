"""Measure the first-dump ratio per engine: stored bytes of a first dump / the engine's size estimate.

With no history the agent predicts a dump's size from the engine's `size_estimate` (catalog figures
the server reports) times this ratio (agent/budget.py). This starts throwaway servers (tests/servers),
loads real sample databases (Pagila, Sakila) and generated rows (bench/dataset.py), takes one backup
of each with every compression, and prints the ratios as JSON and a Markdown table for docs/retention.md.

    .venv/bin/python bench/first_dump_ratio.py [--size 64MB] [--only postgresql]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import sqlite3
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT / "tests"), str(BENCH), str(ROOT)]

import dataset  # noqa: E402

from agent import log  # noqa: E402
from agent.config import load_config  # noqa: E402
from agent.engines import engine_class  # noqa: E402
from agent.engines.base import EngineContext, StreamLimits  # noqa: E402
from agent.observed import run_job  # noqa: E402

COMPRESSIONS = ("zstd", "gzip", "none")
csv.field_size_limit(1 << 30)


def _job_lines(engine: str, server: Any, database: str) -> list[str]:
    if engine == "postgresql":
        return [
            'engine = "postgresql"',
            f'host = "{server.host}"',
            f"port = {server.port}",
            f'user = "{server.user}"',
            f'password = "{server.password}"',
            "include_globals = false",
            f'databases = ["{database}"]',
        ]
    if engine == "mysql":
        return [
            'engine = "mysql"',
            f'host = "{server.host}"',
            f"port = {server.port}",
            f'user = "{server.user}"',
            f'password = "{server.password}"',
            "include_grants = false",
            f'databases = ["{database}"]',
        ]
    if engine == "mongodb":
        return ['engine = "mongodb"', f'uri = "{server.uri()}"', 'tool = "builtin"', f'databases = ["{database}"]']
    return ['engine = "sqlite"', f'databases = ["{database}"]']


def first_dump(work: Path, engine: str, server: Any, database: str, compression: str) -> dict[str, Any]:
    """One first backup into empty storage: the estimate the agent saw and what it stored."""
    storage = Path(tempfile.mkdtemp(dir=work, prefix="storage-"))
    config_path = storage.parent / (storage.name + ".toml")
    lines = [
        "[storage]",
        f'path = "{storage / "s"}"',
        f'compression = "{compression}"',
        'reserve = "1MiB"',
        "",
        "[log]",
        f'file = "{storage / "agent.log"}"',
        "",
        "[jobs.first]",
        *_job_lines(engine, server, database),
        "nice = 0",
        'ionice = "none"',
    ]
    config_path.write_text("\n".join(lines) + "\n")
    config_path.chmod(0o600)
    config = load_config(config_path)
    log.configure_from(config.log)
    job = config.jobs["first"]
    limits = StreamLimits(timeout=3600, stall_timeout=600, should_stop=lambda: False, kill_grace=5)
    scratch = storage / "scratch"
    scratch.mkdir()
    estimate = engine_class(job.engine)(job, EngineContext(storage, scratch, limits)).size_estimate(database)
    outcome = run_job(config, "first")
    if not outcome.ok:
        raise RuntimeError(f"{engine} {database}: {[target.message for target in outcome.targets]}")
    (manifest_file,) = (path for path in (storage / "s" / "first").rglob("*.json") if path.is_file())
    manifest = json.loads(manifest_file.read_text())
    return {
        "estimate": estimate,
        "raw_bytes": manifest["raw_bytes"],
        "stored_bytes": manifest["stored_bytes"],
        "ratio": round(manifest["stored_bytes"] / estimate, 4) if estimate else None,
        "raw_ratio": round(manifest["raw_bytes"] / estimate, 4) if estimate else None,
    }


def _rows(path: Path) -> Iterator[list[str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        yield from csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)


def _bytea(text: str) -> bytes:
    return bytes.fromhex(text[3:]) if text.startswith("\\\\x") else bytes.fromhex(text[2:])


def load_generated_sqlite(files: dict[str, Path], path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.executescript(
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INT, product_id INT, quantity INT,"
            " unit_price NUMERIC, discount NUMERIC, total NUMERIC, currency TEXT, status TEXT, created_at TEXT,"
            " shipped_at TEXT);"
            "CREATE TABLE documents (id INTEGER PRIMARY KEY, title TEXT, body TEXT, attributes TEXT, created_at TEXT);"
            "CREATE TABLE attachments (id INTEGER PRIMARY KEY, name TEXT, mime TEXT, content BLOB);"
        )
        for table, file in files.items():
            rows = _rows(file)
            if table == "attachments":
                rows = ([number, name, mime, _bytea(content)] for number, name, mime, content in rows)
            width = {"orders": 11, "documents": 5, "attachments": 4}[table]
            connection.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * width)})", rows)
        connection.commit()


def load_generated_mongo(files: dict[str, Path], client: Any, database: str) -> None:
    target = client[database]
    for table, file in files.items():
        batch: list[dict[str, Any]] = []
        for row in _rows(file):
            if table == "orders":
                document: dict[str, Any] = {
                    "_id": int(row[0]),
                    "customer_id": int(row[1]),
                    "product_id": int(row[2]),
                    "quantity": int(row[3]),
                    "unit_price": float(row[4]),
                    "discount": float(row[5]),
                    "total": float(row[6]),
                    "currency": row[7],
                    "status": row[8],
                    "created_at": row[9],
                    "shipped_at": None if row[10] == "\\N" else row[10],
                }
            elif table == "documents":
                document = {"_id": int(row[0]), "title": row[1], "body": row[2], "attributes": json.loads(row[3])}
            else:
                document = {"_id": int(row[0]), "name": row[1], "mime": row[2], "content": _bytea(row[3])}
            batch.append(document)
            if len(batch) >= 2000:
                target[table].insert_many(batch)
                batch.clear()
        if batch:
            target[table].insert_many(batch)


def pagila_tables(server: Any) -> dict[str, tuple[list[str], list[tuple[Any, ...]]]]:
    """Pagila's tables as (columns, rows) of plain values, to load the same real rows elsewhere."""
    tables: dict[str, tuple[list[str], list[tuple[Any, ...]]]] = {}
    with server.connect("pagila") as connection:
        names = connection.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind = 'r' AND NOT c.relispartition ORDER BY 1"
        ).fetchall()
        for (name,) in names:
            cursor = connection.execute(f'SELECT * FROM "{name}"')  # partitioned parents include their rows
            columns = [column.name for column in cursor.description or ()]
            rows = [tuple(_plain(value) for value in row) for row in cursor.fetchall()]
            tables[name] = (columns, rows)
    return tables


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, int | float | str | bytes):
        return value
    if isinstance(value, memoryview):
        return bytes(value)
    return str(value)


def load_tables_sqlite(tables: dict[str, tuple[list[str], list[tuple[Any, ...]]]], path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        for name, (columns, rows) in tables.items():
            connection.execute(f'CREATE TABLE "{name}" ({", ".join(f"{chr(34)}{c}{chr(34)}" for c in columns)})')
            connection.executemany(f'INSERT INTO "{name}" VALUES ({", ".join("?" * len(columns))})', rows)
        connection.commit()


def load_tables_mongo(tables: dict[str, tuple[list[str], list[tuple[Any, ...]]]], client: Any, database: str) -> None:
    for name, (columns, rows) in tables.items():
        documents = [dict(zip(columns, row, strict=True)) for row in rows]
        for start in range(0, len(documents), 2000):
            client[database][name].insert_many(documents[start : start + 2000])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="64MB", help="generated rows per engine (e.g. 64MB)")
    parser.add_argument("--only", choices=("postgresql", "mysql", "mongodb", "sqlite"))
    parser.add_argument("--skip-generated", action="store_true", help="only the sample databases")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    size = int(float(args.size.upper().removesuffix("MB")) * 1_000_000)

    from servers.fixtures_data import load_pagila, load_sakila
    from servers.mariadb import running_mariadb
    from servers.mongo import running_secantus
    from servers.postgres import running_postgres

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="first-dump-") as scratch, contextlib.ExitStack() as stack:
        work = Path(scratch)
        files = {} if args.skip_generated else dataset.Part(size).write(work / "data")
        generated = f"generated {sum(path.stat().st_size for path in files.values()) / 1e6:.0f} MB of rows"

        def measure(engine: str, server: Any, database: str, label: str) -> None:
            for compression in COMPRESSIONS:
                figures = first_dump(work, engine, server, database, compression)
                results.append({"engine": engine, "data": label, "compression": compression, **figures})
                print(json.dumps(results[-1]), flush=True)

        postgres = stack.enter_context(running_postgres())
        with postgres.connect() as connection:
            connection.execute("CREATE DATABASE pagila")
        load_pagila(postgres, "pagila")
        pagila = pagila_tables(postgres)  # the same real rows for SQLite and MongoDB
        if args.only in (None, "postgresql"):
            measure("postgresql", postgres, "pagila", "Pagila")
            if not args.skip_generated:
                with postgres.connect() as connection:
                    connection.execute("CREATE DATABASE generated")
                with postgres.connect("generated") as connection:
                    connection.execute(dataset.POSTGRES_SCHEMA)
                    dataset.load_postgres(connection, files)
                    connection.execute("VACUUM (FREEZE, ANALYZE)")
                measure("postgresql", postgres, "generated", generated)
        if args.only in (None, "mysql"):
            mariadb = stack.enter_context(running_mariadb())
            load_sakila(mariadb, "sakila")
            measure("mysql", mariadb, "sakila", "Sakila")
            if not args.skip_generated:
                with mariadb.connect(local_infile=True) as connection, connection.cursor() as cursor:
                    cursor.execute("CREATE DATABASE generated")
                    cursor.execute("USE generated")
                    for statement in dataset.MARIADB_SCHEMA.split(";"):
                        if statement.strip():
                            cursor.execute(statement)
                    dataset.load_mariadb(connection, files)
                    cursor.execute("ANALYZE TABLE orders, documents, attachments")
                measure("mysql", mariadb, "generated", generated)
        if args.only in (None, "mongodb"):
            mongo = stack.enter_context(running_secantus(auth=False))
            with mongo.client() as client:
                load_tables_mongo(pagila, client, "pagila")
            measure("mongodb", mongo, "pagila", "Pagila's rows as documents (SecantusDB)")
            if not args.skip_generated:
                with mongo.client() as client:
                    load_generated_mongo(files, client, "generated")
                measure("mongodb", mongo, "generated", generated + " as documents (SecantusDB)")
        if args.only in (None, "sqlite"):
            database = work / "pagila.db"
            load_tables_sqlite(pagila, database)
            measure("sqlite", None, str(database), "Pagila's rows")
            if not args.skip_generated:
                database = work / "generated.db"
                load_generated_sqlite(files, database)
                measure("sqlite", None, str(database), generated)

    print()
    print("| engine | data | compression | size estimate | raw dump | stored | stored / estimate |")
    print("|---|---|---|---|---|---|---|")
    for row in results:
        print(
            f"| {row['engine']} | {row['data']} | {row['compression']} | {row['estimate'] / 1e6:.1f} MB "
            f"| {row['raw_bytes'] / 1e6:.1f} MB | {row['stored_bytes'] / 1e6:.1f} MB | {row['ratio']:.3f} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
