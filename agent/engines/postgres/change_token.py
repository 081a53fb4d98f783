"""PostgreSQL's proof that a database has not changed (`skip_unchanged`).

The database's row in pg_stat_database counts every row inserted, updated and deleted in it,
catalogs included, so DDL counts too (ALTER TABLE adds pg_attribute rows, TRUNCATE updates
pg_class). Reads never move those counters (xact_commit would: every SELECT commits). What the
counters cannot see is read directly: sequence positions (nextval writes no row), and what the dump
takes from the shared catalogs: the database's own row and settings, role and tablespace names (a
renamed owner changes the dump) and the database's subscriptions.
`stats_reset` and the server's start time make a reset or a restart (a crash discards the
counters) a change.

The counters are flushed asynchronously: since PostgreSQL 15 a backend publishes its counts when it
goes idle, at most once a second, and otherwise within PGSTAT_IDLE_INTERVAL (10 s) by a forced
flush; while it runs a transaction or a statement nothing is published. So the token is given only
when every other backend connected to the database has been idle for longer than that (a backend
of another database cannot write to this one): then every committed change is in the counters.
A role that may not see other roles' sessions (pg_read_all_stats) sees their state as NULL, which
proves nothing. A standby applies changes by WAL replay, which counts nothing: no token there.
"""

from __future__ import annotations

from typing import Any

from agent.engines.base import ChangeToken

# PGSTAT_IDLE_INTERVAL (10 s in PostgreSQL 15-17) plus a margin for the flush itself and clocks
SETTLED_SECONDS = 15

_COUNTERS = """
    SELECT d.oid, s.tup_inserted, s.tup_updated, s.tup_deleted, s.stats_reset, pg_postmaster_start_time(),
           md5(concat_ws('|', d.datname, d.datdba, d.encoding, d.datcollate, d.datctype, d.datistemplate,
                         d.datallowconn, d.datconnlimit, d.datacl::text, shobj_description(d.oid, 'pg_database'),
                         (SELECT string_agg(array_to_string(r.setconfig, ','), ';' ORDER BY r.setrole)
                            FROM pg_db_role_setting r WHERE r.setdatabase = d.oid))),
           (SELECT md5(string_agg(a.oid::text || ':' || a.rolname, ',' ORDER BY a.oid)) FROM pg_roles a),
           (SELECT md5(string_agg(t.oid::text || ':' || t.spcname, ',' ORDER BY t.oid)) FROM pg_tablespace t),
           (SELECT md5(coalesce(string_agg(concat_ws(':', u.oid, u.subname, u.subowner, u.subenabled,
                                                     u.subslotname, u.subsynccommit, u.subpublications::text,
                                                     CASE WHEN has_column_privilege('pg_subscription', 'subconninfo',
                                                                                    'SELECT')
                                                          THEN u.subconninfo END), ',' ORDER BY u.oid), ''))
              FROM pg_subscription u WHERE u.subdbid = d.oid),
           (SELECT md5(coalesce(string_agg(q.schemaname || '.' || q.sequencename || '=' ||
                                           coalesce(q.last_value::text, '-'), ',' ORDER BY 1), ''))
              FROM pg_sequences q)
      FROM pg_database d JOIN pg_stat_database s ON s.datid = d.oid
     WHERE d.datname = current_database()
"""
# other backends of this database that may still hold counts they have not published
_UNSETTLED = """
    SELECT count(*) FROM pg_stat_activity
     WHERE datid = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND pid <> pg_backend_pid()
       AND (state IS DISTINCT FROM 'idle' OR state_change IS NULL
            OR state_change > clock_timestamp() - make_interval(secs => %s))
"""


def read_token(connection: Any) -> ChangeToken | None:
    """The token of the database `connection` is connected to, or None when it cannot prove anything."""
    recovery = connection.execute("SELECT pg_is_in_recovery()").fetchone()
    if recovery is None or recovery[0]:
        return None  # a standby: replayed changes move no counter
    connection.execute("SELECT pg_stat_clear_snapshot()")  # counters as of now, not a cached snapshot
    unsettled = connection.execute(_UNSETTLED, (SETTLED_SECONDS,)).fetchone()
    if unsettled is None or int(unsettled[0]) != 0:
        return None
    row = connection.execute(_COUNTERS).fetchone()
    if row is None:
        return None
    oid, inserted, updated, deleted, reset, started, database, roles, tablespaces, subscriptions, sequences = row
    return {
        "database_oid": str(oid),
        "tuples": f"{inserted}/{updated}/{deleted}",
        "stats_reset": str(reset),
        "server_started": str(started),
        "database_row": str(database),
        "roles": str(roles),
        "tablespaces": str(tablespaces),
        "subscriptions": str(subscriptions),
        "sequences": str(sequences),
    }
