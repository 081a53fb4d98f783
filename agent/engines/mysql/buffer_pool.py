"""InnoDB's buffer pool around a dump: the settings that keep a scan from evicting the hot pages,
and `protect_buffer_pool`, which saves the pool's page list before the dumps and reloads it after.

A dump reads every page of every table once. InnoDB puts such pages in the old sublist
(`innodb_old_blocks_pct` of the pool) and promotes them only if touched again after
`innodb_old_blocks_time` ms; at 0 every scanned page is promoted at once and the dump pushes the
application's hot pages out. Even with the defaults the old sublist is replaced, so the pages the
application keeps there come back from disk. `innodb_buffer_pool_dump_now` writes the list of the
most recently used pages (`innodb_buffer_pool_dump_pct` of them) to the server's
`ib_buffer_pool` file; `innodb_buffer_pool_load_now` reads those pages back in the background.
The server's share is kept: saving the whole list (pct 100) also brings back the scan pages that
sat in the old sublist, and measured worse than the default 25% (hit ratio after a dump 95-98%
against 99%; docs/mysql.md).
Both need SUPER on MariaDB (10.11: no finer privilege allows them; tested) and
SYSTEM_VARIABLES_ADMIN (or SUPER) on MySQL 8.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from structlog.stdlib import BoundLogger

from agent.engines.base import PrivilegeFinding
from agent.engines.mysql.grants import Grant
from agent.engines.mysql.versions import MARIADB

SAVE_WAIT = 120.0  # seconds for the page list to be written (a list of page numbers: quick)
LOAD_WAIT = 30.0  # seconds the run waits for the reload; the server carries on loading after that
POLL = 0.2
_DUMP_DONE = "dump completed"
_LOAD_DONE = "load completed"
_STATUS = "SHOW GLOBAL STATUS LIKE %s"
_SETTINGS = "SELECT @@GLOBAL.innodb_old_blocks_time, @@GLOBAL.innodb_old_blocks_pct"
PROTECTED_ABOVE_PCT = 50  # an old sublist of more than half the pool leaves less than half to the hot set


def required_privilege(vendor: str) -> str:
    return "SUPER" if vendor == MARIADB else "SYSTEM_VARIABLES_ADMIN (or SUPER)"


def may_set_globals(grants: list[Grant], vendor: str) -> bool:
    """Whether the grants allow `SET GLOBAL innodb_buffer_pool_dump_now` (global SUPER or ALL; MySQL
    also SYSTEM_VARIABLES_ADMIN)."""
    names = ("SUPER",) if vendor == MARIADB else ("SUPER", "SYSTEM_VARIABLES_ADMIN")
    return any(grant.is_global and any(grant.holds(name) for name in names) for grant in grants)


def settings_findings(old_blocks_time: int, old_blocks_pct: int) -> list[PrivilegeFinding]:
    """doctor's lines on the two settings that decide whether a dump's scans evict the hot pages."""
    if old_blocks_time == 0:
        return [
            PrivilegeFinding(
                True,
                "innodb_old_blocks_time = 0: every page a dump reads is promoted at once and pushes the "
                "application's hot pages out of the buffer pool; SET GLOBAL innodb_old_blocks_time = 1000 "
                "(the default) and keep it in the server's config",
                warning=True,
            )
        ]
    if old_blocks_pct > PROTECTED_ABOVE_PCT:
        return [
            PrivilegeFinding(
                True,
                f"innodb_old_blocks_pct = {old_blocks_pct}: a dump's scans may fill {old_blocks_pct}% of the buffer "
                f"pool; 37 (the default) leaves more to the hot pages",
                warning=True,
            )
        ]
    return [
        PrivilegeFinding(
            True,
            f"innodb_old_blocks_time = {old_blocks_time} ms, innodb_old_blocks_pct = {old_blocks_pct}: a dump's "
            f"scans stay in the old {old_blocks_pct}% of the buffer pool",
        )
    ]


def read_settings(cursor: Any) -> tuple[int, int] | None:
    """(innodb_old_blocks_time, innodb_old_blocks_pct), or None on a server without InnoDB."""
    try:
        cursor.execute(_SETTINGS)
    except Exception:
        return None
    row = cursor.fetchone()
    return (int(row[0]), int(row[1])) if row else None


def _status(cursor: Any, name: str) -> str:
    cursor.execute(_STATUS, (name,))
    row = cursor.fetchone()
    return str(row[1]) if row else ""


def _wait_for(cursor: Any, name: str, done: str, before: str, seconds: float) -> str | None:
    """The status once it says `done` (and is not the text from before the request, unless a second
    has passed: the status carries a timestamp to the second); None when `seconds` run out."""
    started = time.monotonic()
    while True:
        text = _status(cursor, name)
        elapsed = time.monotonic() - started
        if done in text and (text != before or elapsed > 1.5):
            return text
        if elapsed > seconds:
            return None
        time.sleep(POLL)


@contextlib.contextmanager
def protected(connect: Callable[[], Any], log: BoundLogger, vendor: str) -> Iterator[None]:
    """Save the buffer pool's page list, yield (the dumps), then start its reload and wait a little.

    Any failure is a warning: the dumps run either way.
    """
    saved = False
    try:
        with connect() as connection, connection.cursor() as cursor:
            before = _status(cursor, "Innodb_buffer_pool_dump_status")
            cursor.execute("SET GLOBAL innodb_buffer_pool_dump_now = ON")
            status = _wait_for(cursor, "Innodb_buffer_pool_dump_status", _DUMP_DONE, before, SAVE_WAIT)
        if status is None:
            log.warning("buffer_pool.not_saved", error=f"the page list was not written within {SAVE_WAIT:.0f}s")
        else:
            saved = True
            log.info("buffer_pool.saved", status=status)
    except Exception as error:
        log.warning("buffer_pool.not_saved", error=str(error), privilege=required_privilege(vendor))
    try:
        yield
    finally:
        if saved:
            _reload(connect, log)


def _reload(connect: Callable[[], Any], log: BoundLogger) -> None:
    started = time.monotonic()
    try:
        with connect() as connection, connection.cursor() as cursor:
            before = _status(cursor, "Innodb_buffer_pool_load_status")
            cursor.execute("SET GLOBAL innodb_buffer_pool_load_now = ON")
            log.info("buffer_pool.load_started")
            status = _wait_for(cursor, "Innodb_buffer_pool_load_status", _LOAD_DONE, before, LOAD_WAIT)
            if status is None:
                progress = _status(cursor, "Innodb_buffer_pool_load_status")
                log.info("buffer_pool.load_continuing", status=progress, waited=round(time.monotonic() - started, 1))
            else:
                log.info("buffer_pool.loaded", status=status, seconds=round(time.monotonic() - started, 1))
    except Exception as error:
        log.warning("buffer_pool.load_failed", error=str(error))
