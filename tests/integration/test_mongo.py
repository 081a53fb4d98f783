"""MongoDB backups through the CLI, with the built-in dumper and with a stand-in mongodump.

The server is SecantusDB (a MongoDB wire-protocol server on WiredTiger) standing in for mongod, which
cannot be installed here; with ``MONGODB_TEST_URI`` set the same tests run against a real server.
SecantusDB reports itself as a one-node replica set and accepts snapshot reads without truly pinning
them, so these tests check what the manifest records, not the point-in-time guarantee itself.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import stat
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import bson
import pymongo
import pytest
from agent_helpers import data_files, decompressed, events_named, password_file, run_cli, write_config
from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from servers.mongo import MongoServer

from agent.manifest import manifest_path, read_manifest
from agent.mongo_archive import ArchiveHeader, ArchiveParser, ArchiveWriter, PreludeEntry, collection_metadata
from agent.mongo_restore import restore_archive

RAW = CodecOptions(document_class=RawBSONDocument)
ODD_NAME = "name with spaces.and.dots"
FAR_FUTURE_TTL = 10 * 365 * 24 * 3600  # the TTL monitor must not delete test documents


def uri_without_user(server: MongoServer) -> str:
    """The server's URI with no userinfo at all: the user goes in the job's `user` key."""
    uri = server.uri()
    scheme, _, rest = uri.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}" if "@" in rest.split("/", 1)[0] else uri


def mongo_job(server: MongoServer, tmp_path: Path, databases: object, **extra: object) -> dict[str, object]:
    job: dict[str, object] = {"engine": "mongodb", "uri": uri_without_user(server), "databases": databases}
    if server.auth:
        job["user"] = server.user
        job["password_file"] = str(password_file(tmp_path, server.password or ""))
        job["auth_source"] = "admin"
    job.update(extra)
    return job


def fill_rich_database(client: pymongo.MongoClient[Any], name: str) -> None:
    """Every common BSON type, nested documents, and the collection kinds a backup must keep."""
    database = client[name]
    database.create_collection("capped", capped=True, size=1 << 20, max=50)
    for index in range(80):  # one by one: SecantusDB 0.7.0b3 ignores `max` for insert_many batches
        database.capped.insert_one({"n": index, "text": f"entry {index}"})
    database.create_collection(
        "people",
        validator={"$jsonSchema": {"bsonType": "object", "required": ["name"]}},
        validationLevel="strict",
        validationAction="error",
        collation={"locale": "fr", "strength": 2},
    )
    database.people.insert_many([
        {"name": f"Zoë {index}", "age": index, "email": f"p{index}@example.org", "score": index % 7,
         "created": datetime.datetime(2030, 1, 1) + datetime.timedelta(minutes=index)}
        for index in range(200)
    ])
    database.people.create_index([("age", 1), ("name", -1)], name="age_name")
    database.people.create_index("email", unique=True)
    database.people.create_index("score", partialFilterExpression={"score": {"$gt": 3}})
    database.people.create_index("created", expireAfterSeconds=FAR_FUTURE_TTL)
    database.create_collection("adults", viewOn="people", pipeline=[{"$match": {"age": {"$gte": 18}}}])
    database.create_collection("empty")
    database[ODD_NAME].insert_many([{"_id": index, "dotted": {"a.b": index}} for index in range(5)])
    database.types.insert_many([
        {
            "_id": ObjectId(),
            "decimal": Decimal128("12345.678901234567890123456789"),
            "date": datetime.datetime(1969, 7, 20, 20, 17, 40, 123000),
            "binary": Binary(b"\x00\x01\xfe\xff", 0),
            "function": Binary(b"fn", 1),
            "uuid": Binary(uuid.UUID("12345678-1234-5678-1234-567812345678").bytes, 4),
            "md5": Binary(hashlib.md5(b"x").digest(), 5),  # noqa: S324 - a BSON subtype, not security
            "user_defined": Binary(b"custom", 128),
            "regex": Regex("^ab+c$", "imx"),
            "int64": Int64(2**62),
            "int32": -(2**31),
            "double": 6.02214076e23,
            "timestamp": Timestamp(1_700_000_000, 7),
            "bounds": [MinKey(), MaxKey()],
            "code": Code("function () { return 1; }"),
            "ünïcödé kéy 🚀": "välue ✓",
            "nested": {"level": {"deeper": [1, [2, {"deepest": None}]], "flag": True}},
            "empty": {},
            "list": [],
        },
        {"_id": "string id", "nested": {"a": [{"b": [{"c": "d"}]}]}},
        {"_id": 3.5, "big": "x" * 200_000},
    ])


def collection_shapes(client: pymongo.MongoClient[Any], name: str) -> dict[str, Any]:
    """Per collection: type, options, indexes (without ns) and a hash of each document's raw bytes."""
    database = client[name]
    shapes: dict[str, Any] = {}
    for info in database.list_collections():
        collection = info["name"]
        indexes = sorted(
            (json.dumps({key: value for key, value in index.items() if key != "ns"}, sort_keys=True, default=str)
             for index in database[collection].list_indexes()),
        ) if info["type"] != "view" else []
        documents = sorted(
            hashlib.sha256(document.raw).hexdigest()
            for document in database.get_collection(collection, codec_options=RAW).find()
        ) if info["type"] != "view" else []
        shapes[collection] = {"type": info["type"], "options": info["options"], "indexes": indexes,
                              "documents": documents}
    return shapes


def the_dump(tmp_path: Path, database: str) -> Path:
    dumps = [path for path in data_files(tmp_path / "storage") if path.parent.name == database]
    assert len(dumps) == 1, dumps
    return dumps[0]


def restore_file(client: pymongo.MongoClient[Any], dump: Path, target: str, **options: Any) -> Any:
    archive = dump.with_name("restore-input.archive")
    archive.write_bytes(decompressed(dump))
    try:
        with archive.open("rb") as stream:
            return restore_archive(stream, client, target, **options)
    finally:
        archive.unlink()


def is_replica_set(server: MongoServer) -> bool:
    with server.client() as client:
        return client.admin.command("hello").get("setName") is not None


# --------------------------------------------------------------------------------------------------
# The built-in dumper


def test_a_database_round_trips_through_the_builtin_dumper_and_restore(
    mongo_server: MongoServer, mongo_database: str, tmp_path: Path
) -> None:
    target = f"{mongo_database}_copy"
    with mongo_server.client() as client:
        fill_rich_database(client, mongo_database)
        before = collection_shapes(client, mongo_database)
    config = write_config(tmp_path, {"docs": mongo_job(mongo_server, tmp_path, [mongo_database], tool="builtin")})

    assert run_cli(config, "backup") == 0

    dump = the_dump(tmp_path, mongo_database)
    assert dump.name.endswith(".archive.zst")
    assert stat.S_IMODE(dump.stat().st_mode) == 0o440
    manifest = read_manifest(manifest_path(dump))
    assert (manifest.engine, manifest.format, manifest.tool) == ("mongodb", "mongodump-archive", "backup-agent-builtin")
    assert manifest.counts == {"capped": 50, "empty": 0, ODD_NAME: 5, "people": 200, "types": 3}
    assert manifest.counts_consistent
    assert manifest.point_in_time == is_replica_set(mongo_server)
    assert manifest.details["read_in_one_snapshot"] == manifest.point_in_time
    assert manifest.details["views"] == 1
    with mongo_server.client() as client:
        try:
            result = restore_file(client, dump, target)
            after = collection_shapes(client, target)
        finally:
            client.drop_database(target)
    assert result.documents == manifest.counts
    assert result.views == ["adults"]
    assert result.crc_checked == 6
    assert after == before


def test_the_builtin_archive_is_the_same_bytes_for_the_same_data(
    mongo_server: MongoServer, mongo_database: str, tmp_path: Path
) -> None:
    with mongo_server.client() as client:
        fill_rich_database(client, mongo_database)
    first, second = tmp_path / "first", tmp_path / "second"
    for place in (first, second):
        place.mkdir()
        config = write_config(place, {"docs": mongo_job(mongo_server, place, [mongo_database], tool="builtin")})
        assert run_cli(config, "backup") == 0
    assert decompressed(the_dump(first, mongo_database)) == decompressed(the_dump(second, mongo_database))


def test_a_restore_refuses_existing_collections_unless_asked_to_drop_them(
    mongo_server: MongoServer, mongo_database: str, tmp_path: Path
) -> None:
    with mongo_server.client() as client:
        client[mongo_database].things.insert_many([{"_id": index} for index in range(10)])
    config = write_config(tmp_path, {"docs": mongo_job(mongo_server, tmp_path, [mongo_database], tool="builtin")})
    assert run_cli(config, "backup") == 0
    dump = the_dump(tmp_path, mongo_database)
    with mongo_server.client() as client:
        client[mongo_database].things.insert_one({"_id": "added later"})
        with pytest.raises(Exception, match="already has things"):
            restore_file(client, dump, mongo_database)
        assert client[mongo_database].things.count_documents({}) == 11
        restore_file(client, dump, mongo_database, drop=True)
        assert client[mongo_database].things.count_documents({}) == 10


def test_discovery_skips_system_databases_unless_asked(mongo_server: MongoServer, mongo_database: str,
                                                      tmp_path: Path) -> None:
    from agent.config import load_config
    from agent.engines.base import EngineContext
    from agent.engines.mongo import MongoEngine
    from agent.process import StreamLimits

    with mongo_server.client() as client:
        client[mongo_database].things.insert_one({"_id": 1})
        listed = set(client.list_database_names())
    engines = {}
    for include_system in (False, True):
        place = tmp_path / str(include_system)
        place.mkdir()
        job = mongo_job(mongo_server, place, "*", include_system=include_system, exclude=["nothing-matches-*"])
        config = load_config(write_config(place, {"docs": job}))
        engines[include_system] = MongoEngine(config.jobs["docs"], EngineContext(place, place, StreamLimits()))
    plain = engines[False].discover()
    assert mongo_database in plain
    assert not {"admin", "config", "local"} & set(plain)
    assert {"admin", "config", "local"} & listed <= set(engines[True].discover())
    assert [target.database for target in engines[False].targets()] == plain


def test_size_estimate_comes_from_dbstats(mongo_server: MongoServer, mongo_database: str, tmp_path: Path) -> None:
    from agent.config import load_config
    from agent.engines.base import EngineContext
    from agent.engines.mongo import MongoEngine
    from agent.process import StreamLimits

    with mongo_server.client() as client:
        client[mongo_database].things.insert_many([{"payload": "x" * 1000} for _ in range(100)])
        data_size = client[mongo_database].command("dbStats")["dataSize"]
    config = load_config(write_config(tmp_path, {"docs": mongo_job(mongo_server, tmp_path, [mongo_database])}))
    engine = MongoEngine(config.jobs["docs"], EngineContext(tmp_path, tmp_path, StreamLimits()))
    assert engine.size_estimate(mongo_database) == data_size >= 100_000


# --------------------------------------------------------------------------------------------------
# Failures


def test_a_wrong_password_fails_clearly_and_leaves_no_file(
    mongo_server: MongoServer, mongo_database: str, tmp_path: Path
) -> None:
    if not mongo_server.auth:
        pytest.skip("the MongoDB server under test runs without auth")
    job = mongo_job(mongo_server, tmp_path, [mongo_database], tool="builtin")
    job["password_file"] = str(password_file(tmp_path, "not-the-password"))
    config = write_config(tmp_path, {"docs": job})

    assert run_cli(config, "backup") == 1

    assert data_files(tmp_path / "storage") == []
    failed = events_named(tmp_path, "backup.failed")
    assert len(failed) == 1
    assert failed[0]["reason"] == "connection_failed"
    assert "authentication failed" in failed[0]["error"]
    assert "not-the-password" not in (tmp_path / "agent.log").read_text()
