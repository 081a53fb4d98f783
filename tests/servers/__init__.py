"""Throwaway PostgreSQL, MariaDB, Redis and MongoDB-wire servers for the integration tiers.

``tests/`` is not a package, so pytest puts it on ``sys.path`` (rootdir conftest, prepend import
mode) and this package is imported as ``servers``: ``from servers import PostgresServer``.
The session fixtures that start these servers are registered in ``tests/conftest.py``.
"""

from __future__ import annotations

from .common import ServerStartError, free_port, require_binaries, wait_until
from .mariadb import MariaDBServer, running_mariadb
from .mongo import MongoServer, external_mongo, running_secantus
from .postgres import PostgresServer, running_postgres
from .redis import RedisServer, running_redis

__all__ = [
    "MariaDBServer",
    "MongoServer",
    "PostgresServer",
    "RedisServer",
    "ServerStartError",
    "external_mongo",
    "free_port",
    "require_binaries",
    "running_mariadb",
    "running_postgres",
    "running_redis",
    "running_secantus",
    "wait_until",
]
