"""The MySQL/MariaDB keys of a job beyond the common ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.engines.base import EngineOptions
from agent.engines.mysql.busy import DEFAULT_THRESHOLD

if TYPE_CHECKING:
    from agent.config import ConfigTable

SSL_MODES = ("DISABLED", "PREFERRED", "REQUIRED", "VERIFY_CA", "VERIFY_IDENTITY")


@dataclass(frozen=True, slots=True)
class MysqlOptions(EngineOptions):
    include_grants: bool = False  # accounts and their grants, once per run
    include_system: bool = False  # the `mysql` database too
    lock_for_consistency: bool = False  # lock a database with non-transactional tables while it is dumped
    ssl_ca: str | None = None
    ssl_mode: str | None = None  # one of SSL_MODES, upper case
    busy_threshold: int = DEFAULT_THRESHOLD  # running threads above which a gentle dump slows; 0: off
    protect_buffer_pool: bool = False  # save InnoDB's page list before the dumps, reload it after


def read_options(table: ConfigTable) -> MysqlOptions:
    return MysqlOptions(
        include_grants=table.flag("include_grants", False),
        include_system=table.flag("include_system", False),
        lock_for_consistency=table.flag("lock_for_consistency", False),
        ssl_ca=table.text("ssl_ca", None),
        ssl_mode=_read_ssl_mode(table),
        busy_threshold=table.integer("busy_threshold", DEFAULT_THRESHOLD, minimum=0),
        protect_buffer_pool=table.flag("protect_buffer_pool", False),
    )


def _read_ssl_mode(table: ConfigTable) -> str | None:
    value = table.text("ssl_mode", None)
    if value is None:
        return None
    if value.upper() not in SSL_MODES:
        table.add("ssl_mode", f"expected one of {', '.join(SSL_MODES)}, got {table.show(value)}")
        return None
    return value.upper()
