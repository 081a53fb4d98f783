"""MySQL's and MariaDB's proof that nothing changed (`skip_unchanged`): the binary log position.

With the binary log on, every committed change of the server, in any database, DDL included, is
written to it before the commit returns, so an unchanged file and position (and GTID set) since the
last dump means no change since. A restart opens a new binary log file. Without a binary log, with
`binlog_do_db`/`binlog_ignore_db` filters (some databases' changes are not logged), on a replica
that does not log what it applies (`log_slave_updates` off), or without the privilege to read the
position, nothing can be proved and every run dumps. A session with
`sql_log_bin = 0` (it needs SUPER) writes unlogged: the one change this cannot see.
On MariaDB, `--single-transaction` dumps read a snapshot consistent with the binary log, so a change
logged before the token was read is in the dump; on MySQL that holds for the executed GTID set
only, so MySQL needs `gtid_mode = ON`.
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
    position = _log_position(cursor)
    if position is None:
        return None
    cursor.execute("SELECT VERSION()")
    if "mariadb" in str(cursor.fetchone()[0]).lower():
        cursor.execute("SELECT @@GLOBAL.gtid_binlog_pos")
        gtid: str | None = str(cursor.fetchone()[0] or "")
    else:
        gtid = _mysql_executed_gtids(cursor)
    if gtid is None:
        return None
    return {"server_id": str(server_id), "binary_log": position, "gtid": gtid}


def _log_position(cursor: Any) -> str | None:
    """`file:position` of the binary log, or None when unreadable or filtered by database."""
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
    return f"{binlog_file}:{position}"


def _mysql_executed_gtids(cursor: Any) -> str | None:
    """MySQL's executed GTID set, or None without GTIDs.

    MySQL's consistent snapshot is not aligned with its binary log: a transaction is logged before
    its engine commit, so a position read just then can name a change the dump's snapshot misses.
    A GTID joins `gtid_executed` only once its transaction has committed, so that set is sound."""
    with contextlib.suppress(pymysql.MySQLError):
        cursor.execute("SELECT @@GLOBAL.gtid_mode, @@GLOBAL.gtid_executed")
        mode, executed = cursor.fetchone()
        if str(mode).upper() == "ON":
            return str(executed or "")
    return None


def _is_replica(cursor: Any) -> bool:
    """Whether replication is configured (True also when that cannot be read: nothing is proved then)."""
    for statement in ("SHOW REPLICA STATUS", "SHOW SLAVE STATUS"):  # MySQL 8.0.22+ / MariaDB 10.5+, older
        try:
            cursor.execute(statement)
            return cursor.fetchone() is not None
        except pymysql.MySQLError:
            continue
    return True
