"""MySQL's and MariaDB's proof that nothing changed (`skip_unchanged`): the binary log position.

With the binary log on, every committed change of the server, in any database, DDL included, is
written to it before the commit returns, so an unchanged file and position (and GTID set) since the
last dump means no change since. A restart opens a new binary log file. Without a binary log, with
`binlog_do_db`/`binlog_ignore_db` filters (some databases' changes are not logged), on a replica
that does not log what it applies (`log_slave_updates` off), or without the privilege to read the
position, nothing can be proved and every run dumps. A session with
`sql_log_bin = 0` (it needs SUPER) writes unlogged: the one change this cannot see.
On MariaDB, `--single-transaction` dumps read a snapshot consistent with the binary log, so a change
logged before the token was read is in the dump.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pymysql

from agent.engines.base import ChangeToken


def read_token(cursor: Any) -> ChangeToken | None:
    cursor.execute("SELECT @@GLOBAL.log_bin, @@GLOBAL.server_id, @@GLOBAL.log_slave_updates")
    log_bin, server_id, logs_replicated = cursor.fetchone()
    if not int(log_bin or 0):
        return None
    if not int(logs_replicated or 0) and _is_replica(cursor):
        return None  # a replica applies its source's changes without writing them to its own log
    try:
        cursor.execute("SHOW MASTER STATUS")
        status = cursor.fetchone()
    except pymysql.MySQLError:
        return None  # no BINLOG MONITOR (MariaDB) / REPLICATION CLIENT (MySQL)
    if status is None:
        return None
    binlog_file, position, do_databases, ignore_databases = status[:4]
    if do_databases or ignore_databases:
        return None
    gtid = ""
    for variable in ("@@GLOBAL.gtid_binlog_pos", "@@GLOBAL.gtid_executed"):  # MariaDB, MySQL
        with contextlib.suppress(pymysql.MySQLError):
            cursor.execute(f"SELECT {variable}")
            gtid = str(cursor.fetchone()[0] or "")
            break
    return {"server_id": str(server_id), "binary_log": f"{binlog_file}:{position}", "gtid": gtid}


def _is_replica(cursor: Any) -> bool:
    """Whether replication is configured (True also when that cannot be read: nothing is proved then)."""
    for statement in ("SHOW REPLICA STATUS", "SHOW SLAVE STATUS"):  # MySQL 8.0.22+ / MariaDB 10.5+, older
        try:
            cursor.execute(statement)
            return cursor.fetchone() is not None
        except pymysql.MySQLError:
            continue
    return True
