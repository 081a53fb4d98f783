"""What `doctor` shows for a PostgreSQL job: can its role read every table and sequence it dumps?"""

from __future__ import annotations

from typing import TYPE_CHECKING

from psycopg import sql

from agent.engines.base import MISSING, PrivilegeFinding
from agent.engines.postgres.busy import sees_every_backend
from agent.errors import ConnectionFailed

if TYPE_CHECKING:
    from agent.engines.postgres.engine import PostgresEngine

_SHOWN_OBJECTS = 5
_UNREADABLE = r"""
    SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'S')
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp%'
      AND (NOT has_schema_privilege(n.oid, 'USAGE') OR NOT has_table_privilege(c.oid, 'SELECT'))
    ORDER BY 1
"""


def check_privileges(engine: PostgresEngine) -> list[PrivilegeFinding]:
    """A superuser or pg_read_all_data member reads everything; anyone else is checked table by table."""
    with engine.connect() as connection:
        row = connection.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        user, superuser = (str(row[0]), bool(row[1])) if row else ("?", False)
        exists = connection.execute("SELECT 1 FROM pg_roles WHERE rolname = 'pg_read_all_data'").fetchone()
        read_all = False
        if exists and not superuser:
            member = connection.execute("SELECT pg_has_role(current_user, 'pg_read_all_data', 'USAGE')").fetchone()
            read_all = bool(member and member[0])
        sees_all = sees_every_backend(connection)
    names, findings = engine.databases_on_server()
    for name in names:
        try:
            with engine.connect(name) as connection:
                rows = [] if superuser or read_all else connection.execute(_UNREADABLE).fetchall()
        except ConnectionFailed as error:
            grant = f"GRANT CONNECT ON DATABASE {quote(name)} TO {quote(user)}"
            findings.append(PrivilegeFinding(False, f"database {name!r}: {error}; {grant}"))
            continue
        if rows:
            shown = ", ".join(str(item[0]) for item in rows[:_SHOWN_OBJECTS])
            more = f" and {len(rows) - _SHOWN_OBJECTS} more" if len(rows) > _SHOWN_OBJECTS else ""
            findings.append(
                PrivilegeFinding(
                    False,
                    f"database {name!r}: role {user} cannot read {len(rows)} table(s)/sequence(s): {shown}{more}; "
                    f"GRANT pg_read_all_data TO {user} (PostgreSQL 14+) or grant SELECT (and schema USAGE)",
                )
            )
    if not findings:
        how = "superuser" if superuser else "pg_read_all_data" if read_all else "SELECT on every table"
        findings.append(PrivilegeFinding(True, f"role {user} can read all {len(names)} database(s) ({how})"))
    if engine.options.busy_threshold > 0 and not sees_all:
        findings.append(
            PrivilegeFinding(
                True,
                f"role {user} sees only its own sessions' state, so a busy database does not slow the dump "
                f"(busy_threshold); GRANT pg_read_all_stats TO {user}",
                warning=True,
            )
        )
    return findings


_ACCOUNT = "SELECT current_user, rolsuper, rolcreatedb FROM pg_roles WHERE rolname = current_user"
_DATABASE_RIGHTS = """
    SELECT has_database_privilege(datname, 'CONNECT'), has_database_privilege(datname, 'CREATE')
    FROM pg_database WHERE datname = %s
"""
_PUBLIC_RIGHTS = """
    SELECT has_schema_privilege(oid, 'USAGE') AND has_schema_privilege(oid, 'CREATE')
    FROM pg_namespace WHERE nspname = 'public'
"""


def is_superuser(engine: PostgresEngine) -> bool:
    with engine.connect() as connection:
        row = connection.execute(_ACCOUNT).fetchone()
    return bool(row and row[1])


def missing_restore_privileges(engine: PostgresEngine, database: str, state: str) -> list[str]:
    """A superuser may do anything; else creating needs CREATEDB, and an existing database needs
    CONNECT, CREATE (pg_restore creates its schemas) and CREATE on its schema public."""
    with engine.connect() as connection:
        row = connection.execute(_ACCOUNT).fetchone()
        user, superuser, create_databases = (str(row[0]), bool(row[1]), bool(row[2])) if row else ("?", False, False)
        if superuser:
            return []
        role, name = quote(user), quote(database)
        if state == MISSING:
            if create_databases:
                return []
            return [
                f"CREATEDB to create database {database!r}: ALTER ROLE {role} CREATEDB; or create it for the "
                f"account: CREATE DATABASE {name} OWNER {role}"
            ]
        rights = connection.execute(_DATABASE_RIGHTS, (database,)).fetchone()
    can_connect, can_create = (bool(rights[0]), bool(rights[1])) if rights else (False, False)
    missing = []
    if not can_connect:
        missing.append(f"CONNECT on database {database!r}: GRANT CONNECT ON DATABASE {name} TO {role}")
    if not can_create:
        missing.append(f"CREATE on database {database!r}: ALTER DATABASE {name} OWNER TO {role}")
    if can_connect:
        with engine.connect(database) as connection:
            public = connection.execute(_PUBLIC_RIGHTS).fetchone()
        if public is not None and not public[0]:
            missing.append(
                f"CREATE on schema public of {database!r}: ALTER DATABASE {name} OWNER TO {role} (the owner "
                f"may create in public), or GRANT USAGE, CREATE ON SCHEMA public TO {role} in it"
            )
    return missing


def quote(name: str) -> str:
    """An identifier as the statement shown to the user needs it (quoted unless plain lower case)."""
    return sql.Identifier(name).as_string(None) if not name.isidentifier() or name != name.lower() else name
