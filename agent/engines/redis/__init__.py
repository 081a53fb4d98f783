"""Redis: the engine's family (options, refused extra_args, restore facts), light to import.

One file per server per run: the server's own RDB snapshot, taken over the replication protocol
(client.py) and checked as it streams by (rdb.py). engine.py is the engine; scratch_server.py
runs the throwaway redis-server of a drill; placement.py puts a snapshot where a stopped server
loads it (`restore --into`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from agent.engines.base import EngineFamily, options_of, refused_password_argument
from agent.engines.redis.options import RedisOptions, read_options

if TYPE_CHECKING:
    from agent.config import ConfigTable, JobConfig
    from agent.engines.base import Engine


class RedisFamily(EngineFamily):
    options_type = RedisOptions
    url_schemes = ("redis", "rediss")

    def engine_class(self) -> type[Engine]:
        from agent.engines.redis.engine import RedisEngine

        return RedisEngine

    def read_options(self, table: ConfigTable) -> RedisOptions:
        return read_options(table)

    def check_databases(self, table: ConfigTable, databases: tuple[str, ...] | None) -> None:
        if databases is not None:
            table.add("databases", 'a Redis snapshot holds every logical database of the server: use databases = "*"')
        if table.has("exclude"):
            table.add("exclude", "a Redis snapshot holds every logical database; nothing can be left out")

    def refused_argument(self, argument: str) -> str | None:
        """Every argument: the snapshot is read by the agent itself, no dump tool is run."""
        return refused_password_argument(argument) or (
            f'"{argument}" is not allowed: the Redis snapshot comes over the replication protocol, '
            "read by the agent itself; there is no dump tool to pass arguments to"
        )

    def retarget(self, job: JobConfig, url: str) -> JobConfig:
        """redis://user@host:port (rediss:// for TLS); the password stays the job's."""
        parts = urlsplit(url)
        options = dataclasses.replace(options_of(job, RedisOptions), tls=parts.scheme == "rediss")
        return dataclasses.replace(
            job, host=parts.hostname, port=parts.port, socket=None, user=parts.username or job.user, options=options
        )


FAMILY = RedisFamily()
