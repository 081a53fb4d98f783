"""`make demo`: one real backup of a small SQLite database, verified, with no server needed.

Creates ./demo/ (or $BACKUP_AGENT_DEMO_DIR) with an SQLite database and a config, runs the installed
`backup-agent` for one backup, verifies it, and shows the backups, the status and the log's last
lines, all as a person reads them (the demo's log is in the text format; a service's is JSON).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = Path(os.environ.get("BACKUP_AGENT_DEMO_DIR", ROOT / "demo")).absolute()
AGENT = Path(sys.executable).parent / "backup-agent"


def make_database(path: Path) -> None:
    if path.exists():
        return
    with sqlite3.connect(path) as connection:
        connection.executescript(
            """
            CREATE TABLE customer (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT UNIQUE);
            CREATE TABLE purchase (id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customer(id),
                                   amount_cents INTEGER, note TEXT);
            """
        )
        connection.executemany(
            "INSERT INTO customer (name, email) VALUES (?, ?)",
            [(f"Customer {n} ✓", f"c{n}@example.test") for n in range(500)],
        )
        connection.executemany(
            "INSERT INTO purchase (customer_id, amount_cents, note) VALUES (?, ?, ?)",
            [(n % 500 + 1, n * 37 % 10000, "note " * (n % 7)) for n in range(5000)],
        )


def write_config(path: Path, database: Path) -> None:
    path.write_text(
        f"""# demo config written by `make demo`
[storage]
path = "{DEMO / "backups"}"
compression = "zstd"
level = 3
reserve = "5%"

[log]
file = "{DEMO / "agent.log"}"
level = "info"
format = "text"

[jobs.demo]
engine = "sqlite"
databases = ["{database}"]
every = "1h"
""",
        encoding="utf-8",
    )
    os.chmod(path, 0o600)


def agent(*args: str) -> int:
    command = [str(AGENT), "-c", str(DEMO / "config.toml"), *args]
    print(f"\n$ backup-agent -c {DEMO / 'config.toml'} {' '.join(args)}", flush=True)
    return subprocess.run(command, check=False).returncode


def main() -> int:
    DEMO.mkdir(mode=0o750, exist_ok=True)
    (DEMO / "data").mkdir(exist_ok=True)
    database = DEMO / "data" / "shop.db"
    make_database(database)
    write_config(DEMO / "config.toml", database)
    if agent("backup") != 0 or agent("verify") != 0:
        print("\ndemo FAILED: see demo/agent.log", file=sys.stderr)
        return 1
    agent("list")
    agent("status")
    print(f"\nbackups are under {DEMO / 'backups'}; the log is {DEMO / 'agent.log'}. Its last lines:")
    lines = (DEMO / "agent.log").read_text(encoding="utf-8").splitlines()
    for line in lines[-4:]:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
