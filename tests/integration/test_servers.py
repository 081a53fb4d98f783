"""The throwaway servers start, take the password over TCP, refuse a wrong one, give empty databases."""

from __future__ import annotations

import re

import psycopg
import pymongo
import pymysql
import pytest
from pymongo.errors import OperationFailure
from servers.fixtures_data import PAGILA_RENTALS, SAKILA_RENTALS, load_pagila, load_sakila
from servers.mariadb import MariaDBServer
from servers.mongo import MongoServer
from servers.postgres import PostgresServer

# PostgreSQL


def test_postgres_accepts_the_backup_user_with_its_password_over_tcp(pg_server: PostgresServer) -> None:
    with pg_server.connect() as connection:
        user, address, is_superuser = connection.execute(
            "SELECT current_user, host(inet_server_addr()), current_setting('is_superuser')"
        ).fetchone() or (None, None, None)
    assert (user, address, is_superuser) == ("backup", "127.0.0.1", "on")


def test_postgres_refuses_a_wrong_password(pg_server: PostgresServer) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        pg_server.connect(password="not-the-password")


def test_postgres_dsn_carries_no_password_but_works_with_one_given_separately(
    pg_server: PostgresServer,
) -> None:
    dsn = pg_server.dsn("postgres")
    assert pg_server.password not in dsn
    with psycopg.connect(dsn, password=pg_server.password) as connection:
        assert connection.execute("SELECT 1").fetchone() == (1,)


def test_psql_runs_as_the_backup_user_over_tcp(pg_server: PostgresServer) -> None:
    output = pg_server.psql("postgres", "SELECT current_user, host(inet_server_addr());")
    assert output.strip() == "backup|127.0.0.1"


def test_pg_database_is_a_fresh_empty_database(pg_server: PostgresServer, pg_database: str) -> None:
    with pg_server.connect(pg_database) as connection:
        name, tables = connection.execute(
            "SELECT current_database(), count(*) FROM information_schema.tables"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchone() or (None, None)
    assert (name, tables) == (pg_database, 0)


def test_postgres_can_be_stopped_and_started_again(pg_server: PostgresServer, pg_database: str) -> None:
    with pg_server.connect(pg_database) as connection:
        connection.execute("CREATE TABLE kept (id int); INSERT INTO kept VALUES (1)")
    pg_server.stop()
    with pytest.raises(psycopg.OperationalError):
        pg_server.connect(pg_database, connect_timeout=2)
    pg_server.start()
    with pg_server.connect(pg_database) as connection:
        assert connection.execute("SELECT id FROM kept").fetchall() == [(1,)]


# MariaDB


def test_mariadb_accepts_the_backup_user_with_its_password_over_tcp(mariadb_server: MariaDBServer) -> None:
    with mariadb_server.connect() as connection, connection.cursor() as cursor:
        cursor.execute("SELECT CURRENT_USER()")
        assert cursor.fetchone() == ("backup@127.0.0.1",)
        cursor.execute("SHOW GRANTS")
        grants = " ".join(row[0] for row in cursor.fetchall())
    assert "GRANT ALL PRIVILEGES ON *.*" in grants
    assert "WITH GRANT OPTION" in grants


def test_mariadb_refuses_a_wrong_password(mariadb_server: MariaDBServer) -> None:
    with pytest.raises(pymysql.err.OperationalError, match="Access denied"):
        mariadb_server.connect(password="not-the-password")


def test_mariadb_refuses_root_over_tcp(mariadb_server: MariaDBServer) -> None:
    with pytest.raises(pymysql.err.OperationalError, match="Access denied"):
        mariadb_server.connect(user="root", password="")


def test_mariadb_client_runs_as_the_backup_user_over_tcp(mariadb_server: MariaDBServer) -> None:
    output = mariadb_server.mysql(None, "SELECT CURRENT_USER(), @@port;")
    assert output.split() == ["backup@127.0.0.1", str(mariadb_server.port)]


def test_mariadb_database_is_a_fresh_empty_database(mariadb_server: MariaDBServer, mariadb_database: str) -> None:
    with mariadb_server.connect(mariadb_database) as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT DATABASE(), (SELECT count(*) FROM information_schema.tables WHERE table_schema = DATABASE())"
        )
        assert cursor.fetchone() == (mariadb_database, 0)


def test_mariadb_can_be_stopped_and_started_again(mariadb_server: MariaDBServer, mariadb_database: str) -> None:
    with mariadb_server.connect(mariadb_database) as connection, connection.cursor() as cursor:
        cursor.execute("CREATE TABLE kept (id int) ENGINE=InnoDB")
        cursor.execute("INSERT INTO kept VALUES (1)")
    mariadb_server.stop()
    with pytest.raises(pymysql.err.OperationalError):
        mariadb_server.connect(mariadb_database, connect_timeout=2)
    mariadb_server.start()
    with mariadb_server.connect(mariadb_database) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT id FROM kept")
        assert cursor.fetchall() == ((1,),)


# MongoDB wire protocol (SecantusDB unless MONGODB_TEST_URI is set)


def test_mongo_accepts_the_backup_user_with_its_password(mongo_server: MongoServer) -> None:
    with mongo_server.client() as client:
        status = client.admin.command("connectionStatus")
    users = [user["user"] for user in status["authInfo"]["authenticatedUsers"]]
    assert users == ([mongo_server.user] if mongo_server.auth else [])


def test_mongo_refuses_a_wrong_password(mongo_server: MongoServer) -> None:
    if not mongo_server.auth:
        pytest.skip("the MongoDB server under test runs without auth")
    with (
        mongo_server.client(password="not-the-password", serverSelectionTimeoutMS=3000) as client,
        pytest.raises(OperationFailure) as refused,
    ):
        client.admin.command("listDatabases")
    assert refused.value.code == 18  # AuthenticationFailed


def test_mongo_refuses_commands_without_credentials(mongo_server: MongoServer) -> None:
    if not mongo_server.auth or mongo_server.is_external:
        pytest.skip("only the SecantusDB started here is known to run with auth")
    with (
        pymongo.MongoClient(mongo_server.host, mongo_server.port, directConnection=True) as client,
        pytest.raises(OperationFailure) as refused,
    ):
        client.admin.command("listDatabases")
    assert refused.value.code == 13  # Unauthorized


def test_mongo_uri_carries_no_password(mongo_server: MongoServer) -> None:
    uri = mongo_server.uri()
    assert mongo_server.password is None or mongo_server.password not in uri
    assert f"{mongo_server.port}" in uri


def test_mongo_database_is_a_fresh_empty_database(mongo_server: MongoServer, mongo_database: str) -> None:
    with mongo_server.client() as client:
        assert mongo_database not in client.list_database_names()
        assert client[mongo_database].list_collection_names() == []
        client[mongo_database]["kept"].insert_one({"_id": 1})
        assert client[mongo_database].list_collection_names() == ["kept"]


def test_mongo_can_be_stopped_and_started_again(mongo_server: MongoServer, mongo_database: str) -> None:
    with mongo_server.client() as client:
        client[mongo_database]["kept"].insert_one({"_id": 1})
    mongo_server.stop()
    with (
        mongo_server.client(serverSelectionTimeoutMS=500) as client,
        pytest.raises(pymongo.errors.ServerSelectionTimeoutError),
    ):
        client.admin.command("ping")
    mongo_server.start()
    with mongo_server.client() as client:
        assert list(client[mongo_database]["kept"].find()) == [{"_id": 1}]


def test_mongo_server_noauth_needs_no_credentials(mongo_server_noauth: MongoServer) -> None:
    with mongo_server_noauth.client() as client:
        database = client["t_noauth_probe"]
        database["probe"].insert_one({"_id": 1})
        assert database["probe"].count_documents({}) == 1
        client.drop_database("t_noauth_probe")
    assert not mongo_server_noauth.auth


# Real sample databases

_PAGILA_PG17_ONLY = re.compile(r"transaction_timeout|films_per_customer_rental|JSON_TABLE|syntax error at or near")


@pytest.mark.slow
def test_pagila_loads_into_a_fresh_database(pg_server: PostgresServer, pg_database: str) -> None:
    errors = load_pagila(pg_server, pg_database)
    # Only the PostgreSQL 17 parts fail: SET transaction_timeout and the JSON_TABLE view (create, owner).
    unexpected = [error for error in errors if not _PAGILA_PG17_ONLY.search(error)]
    assert unexpected == []
    with pg_server.connect(pg_database) as connection:
        assert connection.execute("SELECT count(*) FROM rental").fetchone() == (PAGILA_RENTALS,)
        # payment is partitioned by month; the parent sees every partition.
        assert connection.execute("SELECT count(*) FROM payment").fetchone() == (16044,)


@pytest.mark.slow
def test_sakila_loads_into_the_given_database(mariadb_server: MariaDBServer, mariadb_database: str) -> None:
    load_sakila(mariadb_server, mariadb_database)
    with mariadb_server.connect(mariadb_database) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM rental")
        assert cursor.fetchone() == (SAKILA_RENTALS,)
        cursor.execute("SHOW DATABASES LIKE 'sakila_dojo'")
        assert cursor.fetchall() == ()
        cursor.execute(
            "SELECT count(*) FROM information_schema.triggers WHERE trigger_schema = %s", (mariadb_database,)
        )
        assert cursor.fetchone() == (6,)
