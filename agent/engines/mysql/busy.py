"""How busy a MySQL/MariaDB server is: `Threads_running`, the dump's own threads left out (agent/busy.py).

`Threads_running` (a global status any account may read) counts every thread executing a
statement: this sampler's own, the event scheduler's while it is on, and the dump tool's, whose
data query (`SELECT /*!40001 SQL_NO_CACHE */ ...`) runs for a whole table. The account sees its
own threads in the process list without PROCESS, so the dump's are found there and taken off.
"""

from __future__ import annotations

from typing import Any

DEFAULT_THRESHOLD = 4  # running threads beyond the dump's own: a small server's cores are all taken
_RUNNING = "SHOW GLOBAL STATUS LIKE 'Threads_running'"
_OWN = r"""
    SELECT COUNT(*) FROM information_schema.PROCESSLIST
    WHERE ID <> CONNECTION_ID() AND COMMAND = 'Query' AND INFO LIKE 'SELECT /*!40001 SQL\_NO\_CACHE */%'
"""
_SCHEDULER = "SELECT @@GLOBAL.event_scheduler = 'ON'"


def busy_threads(running: int, dump_threads: int, scheduler_on: bool) -> int:
    """The application's running threads: all of them but this one, the dump's and the scheduler's."""
    return max(0, running - 1 - dump_threads - (1 if scheduler_on else 0))


class RunningThreads:
    """`BusyProbe` over its own PyMySQL connection."""

    signal = "running threads"

    def __init__(self, connection: Any, threshold: int) -> None:
        self._connection = connection
        self.threshold = threshold

    def sample(self) -> int | None:
        with self._connection.cursor() as cursor:
            cursor.execute(_RUNNING)
            row = cursor.fetchone()
            if row is None:
                return None
            running = int(row[1])
            cursor.execute(_OWN)
            own = int(cursor.fetchone()[0])
            cursor.execute(_SCHEDULER)
            scheduler = bool(cursor.fetchone()[0])
        return busy_threads(running, own, scheduler)

    def close(self) -> None:
        self._connection.close()
