"""PostgreSQL: the engine's family (options, refused extra_args, restore facts), light to import.

The engine (agent/engines/postgres/engine.py) needs psycopg and is imported only when a job runs;
archive.py reads the custom-format archive, privileges.py is what `doctor` asks.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING

from agent.engines.base import EngineFamily, ServerWide, SizeRatio
from agent.engines.postgres.options import PostgresOptions, read_options

if TYPE_CHECKING:
    from agent.config import ConfigTable
    from agent.engines.base import Engine

# template1 seeds every database created after it; postgres is the default maintenance database
RESERVED_TARGETS = frozenset({"template0", "template1", "postgres"})
MAX_NAME_BYTES = 63  # NAMEDATALEN - 1: the server silently truncates a longer name

_REFUSED = {
    "--file": "the agent writes the dump file itself",
    "-f": "the agent writes the dump file itself",
    "--format": "the agent chooses the dump format",
    "-F": "the agent chooses the dump format",
    "--dbname": "the agent chooses the databases itself (use databases = [...])",
    "-d": "the agent chooses the databases itself (use databases = [...])",
    "-W": "the agent passes the password itself; use password_file or password_env",
}


class PostgresFamily(EngineFamily):
    options_type = PostgresOptions
    url_schemes = ("postgresql", "postgres")
    server_wide = ServerWide(kind="globals", database="postgres")
    # pg_database_size() counts indexes, free space and ~7.5 MB of catalogs; the dump leaves them out
    first_dump_ratios = MappingProxyType(
        {
            "zstd": SizeRatio(0.05, 0.3),
            "gzip": SizeRatio(0.04, 0.3),
            "none": SizeRatio(0.21, 1.05),
        }
    )
    refused_arguments = MappingProxyType(_REFUSED)
    refused_prefixes = ("-f", "-F", "-d")
    reserved_targets = RESERVED_TARGETS
    table_scope = True

    def engine_class(self) -> type[Engine]:
        from agent.engines.postgres.engine import PostgresEngine

        return PostgresEngine

    def read_options(self, table: ConfigTable) -> PostgresOptions:
        return read_options(table)

    def target_name_problem(self, name: str) -> str | None:
        size = len(name.encode())
        if size > MAX_NAME_BYTES:
            return f"a PostgreSQL database name is at most {MAX_NAME_BYTES} bytes (this one has {size})"
        return super().target_name_problem(name)


FAMILY = PostgresFamily()
