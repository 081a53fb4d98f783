"""MySQL and MariaDB: the engine's family (options, refused extra_args, restore facts), light to import.

The engine (engine.py) needs PyMySQL and is imported only when a job runs. grants.py is the one
reading of SHOW GRANTS that both `doctor` and the dump's warnings use.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING

from agent.engines.base import EngineFamily, ServerWide, SizeRatio
from agent.engines.mysql.options import MysqlOptions, read_options

if TYPE_CHECKING:
    from agent.config import ConfigTable
    from agent.engines.base import Engine

# compared case-insensitively: system schema names do not depend on lower_case_table_names
RESERVED_TARGETS = frozenset({"mysql", "sys", "information_schema", "performance_schema"})
MAX_NAME_CHARACTERS = 64

_REFUSED = {
    "--compact": "it removes the comments a restore and the verifier rely on",
    "--skip-comments": "it removes the comments a restore and the verifier rely on",
    "--databases": "the agent chooses the databases itself (use databases = [...])",
    "-B": "the agent chooses the databases itself (use databases = [...])",
    "--all-databases": 'the agent dumps one database per file (use databases = "*")',
    "-A": 'the agent dumps one database per file (use databases = "*")',
    "--plugin-dir": "the agent chooses the client plugins (no clear-text ones without verified TLS)",
    "--default-auth": "the agent chooses the client plugins (no clear-text ones without verified TLS)",
    "--enable-cleartext-plugin": "it sends the password in clear text to whatever asks; use verified TLS",
    "--get-server-public-key": "it encrypts the password with a key whatever answers provides; use verified TLS",
}


class MysqlFamily(EngineFamily):
    options_type = MysqlOptions
    url_schemes = ("mysql", "mariadb")
    server_wide = ServerWide(kind="grants", database="")
    # DATA_LENGTH + INDEX_LENGTH: InnoDB pages with their free space and the indexes the dump leaves out
    first_dump_ratios = MappingProxyType(
        {
            "zstd": SizeRatio(0.1, 0.3),
            "gzip": SizeRatio(0.1, 0.3),
            "none": SizeRatio(0.51, 1.05),
        }
    )
    refused_arguments = MappingProxyType(_REFUSED)
    table_scope = True
    short_password_option = True
    reserved_targets = RESERVED_TARGETS

    def engine_class(self) -> type[Engine]:
        from agent.engines.mysql.engine import MysqlEngine

        return MysqlEngine

    def read_options(self, table: ConfigTable) -> MysqlOptions:
        return read_options(table)

    def target_name_problem(self, name: str) -> str | None:
        if len(name) > MAX_NAME_CHARACTERS:
            limit = MAX_NAME_CHARACTERS
            return f"a MySQL/MariaDB database name is at most {limit} characters (this one has {len(name)})"
        if name.endswith(" "):
            return "a MySQL/MariaDB database name cannot end with a space"
        if any(ord(character) > 0xFFFF for character in name):
            return "a MySQL/MariaDB database name cannot hold characters beyond U+FFFF (such as emoji)"
        return super().target_name_problem(name)

    def is_reserved_target(self, name: str) -> bool:
        return name.lower() in self.reserved_targets


FAMILY = MysqlFamily()
