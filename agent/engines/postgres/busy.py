"""How busy a PostgreSQL server is: its active client backends, the agent's own left out (agent/busy.py).

Active means running a statement, or inside a transaction that ran one in the last second: an
OLTP client spends most of each transaction between its statements ('idle in transaction', the
round trip), so `state = 'active'` alone saw 1.5 of pgbench's 8 clients flat out on this machine
(40 samples; 6.9 with the open transactions). A transaction left open longer (an application's
leak) does not count, or every dump would be slowed for it.

The agent's connections and tools carry `application_name = 'backup-agent'` (the tools through
PGAPPNAME), so pg_dump's backend, busy with COPY for the whole dump, does not count. Other roles'
backends show their state only to a superuser or a member of pg_read_all_stats (pg_monitor);
without it only the agent role's own sessions would count, which `doctor` says.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

APPLICATION_NAME = "backup-agent"
DEFAULT_THRESHOLD = 4  # active backends beyond the dump's own: a small server's cores are all taken
_ACTIVE_BACKENDS = """
    SELECT count(*) FROM pg_stat_activity
    WHERE backend_type = 'client backend'
      AND (state = 'active' OR (state = 'idle in transaction' AND state_change > now() - interval '1 second'))
      AND pid <> pg_backend_pid() AND application_name IS DISTINCT FROM %s
"""
_SEES_ALL = """
    SELECT rolsuper OR pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')
    FROM pg_roles WHERE rolname = current_user
"""


class ActiveBackends:
    """`BusyProbe` over its own autocommit connection."""

    signal = "active client backends"

    def __init__(self, connection: psycopg.Connection[Any], threshold: int) -> None:
        self._connection = connection
        self.threshold = threshold
        connection.execute("SET statement_timeout = '5s'")  # a stuck server never stalls the sampler for long

    def sample(self) -> int | None:
        row = self._connection.execute(_ACTIVE_BACKENDS, (APPLICATION_NAME,)).fetchone()
        return int(row[0]) if row else None

    def close(self) -> None:
        self._connection.close()


def sees_every_backend(connection: psycopg.Connection[Any]) -> bool:
    """Whether the role can see other roles' backends' state (superuser or pg_read_all_stats)."""
    row = connection.execute(_SEES_ALL).fetchone()
    return bool(row and row[0])
