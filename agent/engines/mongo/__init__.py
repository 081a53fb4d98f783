"""MongoDB: the engine's family (options, refused extra_args, restore facts), light to import.

The engine (engine.py) and the built-in dumper (builtin_dump.py) need PyMongo and are imported only
when a job runs; archive.py writes and parses the mongodump archive format, restore.py loads one.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from agent.engines.base import EngineFamily, SizeRatio, options_of
from agent.engines.mongo.options import MongoOptions, read_options

if TYPE_CHECKING:
    from agent.config import ConfigTable, JobConfig
    from agent.engines.base import Engine


RESERVED_TARGETS = frozenset({"admin", "local", "config"})  # users and roles, the oplog, sharding metadata
MAX_NAME_BYTES = 63  # "fewer than 64 bytes"
_NAME_FORBIDDEN = '/\\. "$'  # on every platform (the server adds *<>:|? on Windows)


class MongoFamily(EngineFamily):
    options_type = MongoOptions
    url_schemes = ("mongodb",)
    # dbStats.dataSize is the BSON the archive carries, uncompressed
    first_dump_ratios = MappingProxyType(
        {
            "zstd": SizeRatio(0.11, 0.25),
            "gzip": SizeRatio(0.11, 0.25),
            "none": SizeRatio(1.0, 1.05),
        }
    )
    short_password_option = True
    table_scope = True  # collections
    refused_arguments = MappingProxyType(
        {
            "--authenticationMechanism": "set authMechanism in uri (PLAIN only over TLS that verifies the server)",
            "--uri": "set the job's uri instead (checked for PLAIN and for a password)",
        }
    )
    reserved_targets = RESERVED_TARGETS

    def engine_class(self) -> type[Engine]:
        from agent.engines.mongo.engine import MongoEngine

        return MongoEngine

    def read_options(self, table: ConfigTable) -> MongoOptions:
        return read_options(table)

    def target_name_problem(self, name: str) -> str | None:
        size = len(name.encode())
        if size > MAX_NAME_BYTES:
            return f"a MongoDB database name is fewer than 64 bytes (this one has {size})"
        forbidden = sorted({character for character in name if character in _NAME_FORBIDDEN})
        if forbidden:
            return f"a MongoDB database name cannot contain {' '.join(repr(character) for character in forbidden)}"
        return super().target_name_problem(name)

    def retarget(self, job: JobConfig, url: str) -> JobConfig:
        """The whole URL becomes the job's `uri` (its options, such as replicaSet, count)."""
        options = dataclasses.replace(options_of(job, MongoOptions), uri=url)
        user = urlsplit(url).username or job.user
        return dataclasses.replace(job, options=options, host=None, port=None, socket=None, user=user)


FAMILY = MongoFamily()
