"""Session-wide throwaway database servers and per-test fresh databases.

Each server starts lazily, the first time a test asks for it, once per session, and is stopped at
session end (pytest also runs these finalizers after Ctrl-C). Tests using a server get its marker
(``postgres``, ``mariadb``, ``mongo``, ``redis``) so ``-m "not mariadb"`` deselects them.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator

import pytest
from psycopg import sql
from servers.mariadb import MariaDBServer, running_mariadb
from servers.mongo import EXTERNAL_URI_VARIABLE, MongoServer, external_mongo, running_secantus
from servers.postgres import PostgresServer, running_postgres
from servers.redis import RedisServer, running_redis

_SERVER_MARKERS = {
    "postgres": ("pg_server", "pg_database"),
    "mariadb": ("mariadb_server", "mariadb_database"),
    "mongo": ("mongo_server", "mongo_server_noauth", "mongo_database"),
    "redis": ("redis_server", "redis_empty"),
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: loads a real sample database (seconds, not milliseconds)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        for marker, fixture_names in _SERVER_MARKERS.items():
            if fixtures.intersection(fixture_names):
                item.add_marker(marker)


def _unique_database_name(request: pytest.FixtureRequest) -> str:
    """A short, safe, unique name that still says which test made it (handy when one leaks)."""
    stem = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:40]
    return f"t_{stem}_{secrets.token_hex(4)}"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDBServer]:
    with running_mariadb() as server:
        yield server


@pytest.fixture(scope="session")
def mongo_server() -> Iterator[MongoServer]:
    """SecantusDB with auth, or the server named by ``MONGODB_TEST_URI``."""
    uri = os.environ.get(EXTERNAL_URI_VARIABLE)
    if uri:
        yield external_mongo(uri)
        return
    with running_secantus(auth=True) as server:
        yield server


@pytest.fixture(scope="session")
def mongo_server_noauth() -> Iterator[MongoServer]:
    """A second SecantusDB without auth (SecantusDB cannot mix both on one instance)."""
    uri = os.environ.get(EXTERNAL_URI_VARIABLE)
    if uri:
        server = external_mongo(uri)
        if server.auth:
            pytest.skip(f"{EXTERNAL_URI_VARIABLE} names a server with auth; no auth-less one to use")
        yield server
        return
    with running_secantus(auth=False) as server:
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture
def redis_empty(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The session's Redis server, running and empty (every key and function flushed) before and after."""
    redis_server.flush()
    redis_server.client().function_flush()
    try:
        yield redis_server
    finally:
        redis_server.flush()
        redis_server.client().function_flush()


@pytest.fixture
def pg_database(pg_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """The name of a fresh, empty PostgreSQL database, dropped after the test."""
    name = _unique_database_name(request)
    pg_server.start()  # an earlier test may have stopped it
    with pg_server.connect() as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        pg_server.start()
        with pg_server.connect() as connection:
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def mariadb_database(mariadb_server: MariaDBServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """The name of a fresh, empty MariaDB database, dropped after the test."""
    name = _unique_database_name(request)
    mariadb_server.start()
    with mariadb_server.connect() as connection, connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}`")
    try:
        yield name
    finally:
        mariadb_server.start()
        with mariadb_server.connect() as connection, connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def mongo_database(mongo_server: MongoServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """The name of a MongoDB database no one has written to yet, dropped after the test."""
    name = _unique_database_name(request)
    if not mongo_server.is_running():
        mongo_server.start()
    try:
        yield name
    finally:
        if not mongo_server.is_running():
            mongo_server.start()
        with mongo_server.client() as client:
            client.drop_database(name)
