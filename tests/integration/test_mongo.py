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
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pymongo
import pytest
from agent_helpers import data_files, decompressed, events_named, password_file, run_cli, write_config
from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from servers.mongo import MongoServer

from agent.engines.mongo.restore import restore_archive
from agent.manifest import manifest_path, read_manifest

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
        options = dict(parse_qsl(urlsplit(server.uri()).query))
        job["auth_source"] = options.get("authSource", "admin")
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
    database.people.insert_many(
        [
            {
                "name": f"Zoë {index}",
                "age": index,
                "email": f"p{index}@example.org",
                "score": index % 7,
                # BSON dates carry no zone; PyMongo hands them back naive, as written
                "created": datetime.datetime(2030, 1, 1) + datetime.timedelta(minutes=index),  # noqa: DTZ001
            }
            for index in range(200)
        ]
    )
    database.people.create_index([("age", 1), ("name", -1)], name="age_name")
    database.people.create_index("email", unique=True)
    database.people.create_index("score", partialFilterExpression={"score": {"$gt": 3}})
    database.people.create_index("created", expireAfterSeconds=FAR_FUTURE_TTL)
    database.create_collection("adults", viewOn="people", pipeline=[{"$match": {"age": {"$gte": 18}}}])
    database.create_collection("empty")
    database[ODD_NAME].insert_many([{"_id": index, "dotted": {"a.b": index}} for index in range(5)])
    database.types.insert_many(
        [
            {
                "_id": ObjectId(),
                "decimal": Decimal128("12345.678901234567890123456789"),
                "date": datetime.datetime(1969, 7, 20, 20, 17, 40, 123000),  # noqa: DTZ001 (BSON, as above)
                "binary": Binary(b"\x00\x01\xfe\xff", 0),
                "function": Binary(b"fn", 1),
                "uuid": Binary(uuid.UUID("12345678-1234-5678-1234-567812345678").bytes, 4),
                "md5": Binary(hashlib.md5(b"x").digest(), 5),
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
        ]
    )


def collection_shapes(client: pymongo.MongoClient[Any], name: str) -> dict[str, Any]:
    """Per collection: type, options, indexes (without ns) and a hash of each document's raw bytes."""
    database = client[name]
    shapes: dict[str, Any] = {}
    for info in database.list_collections():
        collection = info["name"]
        indexes = (
            sorted(
                (
                    json.dumps({key: value for key, value in index.items() if key != "ns"}, sort_keys=True, default=str)
                    for index in database[collection].list_indexes()
                ),
            )
            if info["type"] != "view"
            else []
        )
        documents = (
            sorted(
                hashlib.sha256(document.raw).hexdigest()
                for document in database.get_collection(collection, codec_options=RAW).find()
            )
            if info["type"] != "view"
            else []
        )
        shapes[collection] = {
            "type": info["type"],
            "options": info["options"],
            "indexes": indexes,
            "documents": documents,
        }
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
    assert run_cli(config, "verify") == 0
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


def test_discovery_skips_system_databases_unless_asked(
    mongo_server: MongoServer, mongo_database: str, tmp_path: Path
) -> None:
    from agent.config import load_config
    from agent.engines.base import EngineContext
    from agent.engines.mongo.engine import MongoEngine
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
    from agent.engines.mongo.engine import MongoEngine
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


# --------------------------------------------------------------------------------------------------
# mongodump (a stand-in script: MongoDB's own tools cannot be installed here)

STAND_IN = '''#!{python}
"""A stand-in mongodump: records what it was given, then writes an archive to stdout."""
import json, os, stat, sys
from agent.engines.mongo.archive import ArchiveHeader, ArchiveWriter, PreludeEntry, collection_metadata
import bson

if sys.argv[1:] == ["--version"]:
    print("mongodump version: 100.10.0")
    print("git version: stand-in")
    sys.exit(0)
config = next((arg.split("=", 1)[1] for arg in sys.argv if arg.startswith("--config=")), None)
seen = {{"argv": sys.argv, "config": config}}
if config is not None:
    seen["config_mode"] = stat.S_IMODE(os.stat(config).st_mode)
    seen["config_target"] = os.readlink(config.replace("/dev/fd/", "/proc/self/fd/"))
    seen["config_text"] = open(config, encoding="utf-8").read()
with open({record!r}, "w", encoding="utf-8") as out:
    json.dump(seen, out)

databases = [arg.split("=", 1)[1] for arg in sys.argv if arg.startswith("--db=")] or ["alpha", "beta"]
oplog = "--oplog" in sys.argv
chunks = []
writer = ArchiveWriter(chunks.append)
entries = []
for database in databases:
    entries.append(PreludeEntry(database, "things", collection_metadata("things", options={{}}, indexes=[])))
    entries.append(PreludeEntry(database, "recent", collection_metadata(
        "recent", options={{"viewOn": "things", "pipeline": []}}, indexes=[], collection_type="view"), "view"))
if oplog:
    entries.append(PreludeEntry("", "oplog", "", ""))
writer.begin(ArchiveHeader("8.2.11", "100.10.0", 4), entries)
for database in databases:
    writer.write(database, "things", b"".join(bson.encode({{"_id": n, "db": database}}) for n in range(3)))
    writer.end(database, "recent")
    writer.end(database, "things")
if oplog:
    writer.write("", "oplog", bson.encode({{"op": "n", "o": {{}}}}) * 2)
    writer.end("", "oplog")
writer.close()
archive = b"".join(chunks)
mode = {mode!r}
if mode == "truncated":
    archive = archive[: len(archive) * 2 // 3]
elif mode == "bad-crc":
    position = archive.index(bson.encode({{"_id": 1, "db": databases[0]}})) + 8
    archive = archive[:position] + bytes([archive[position] ^ 1]) + archive[position + 1 :]
sys.stdout.buffer.write(archive)
'''


def stand_in_mongodump(folder: Path, mode: str = "good", name: str = "mongodump") -> tuple[Path, Path]:
    """Write the stand-in as an executable `name` in `folder`; returns it and the file it records into."""
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / "seen.json"
    script = folder / name
    script.write_text(STAND_IN.format(python=sys.executable, record=str(record), mode=mode), encoding="utf-8")
    script.chmod(0o755)
    return script, record


def needs_auth(server: MongoServer) -> None:
    if not server.auth:
        pytest.skip("the MongoDB server under test runs without auth, so there is no password to hand over")


def test_mongodump_gets_the_password_only_through_an_in_memory_config_file(
    mongo_server: MongoServer, mongo_database: str, tmp_path: Path
) -> None:
    needs_auth(mongo_server)
    script, record = stand_in_mongodump(tmp_path / "bin")
    job = mongo_job(mongo_server, tmp_path, [mongo_database], tool=str(script))
    config = write_config(tmp_path, {"docs": job})

    assert run_cli(config, "backup") == 0

    seen = json.loads(record.read_text())
    argv = seen["argv"]
    assert argv[1] == "--archive" and f"--db={mongo_database}" in argv
    assert "--gzip" not in argv and "--oplog" not in argv
    assert f"--username={mongo_server.user}" in argv and f"--authenticationDatabase={job['auth_source']}" in argv
    assert all(mongo_server.password not in argument for argument in argv)
    assert seen["config_text"] == f"password: {json.dumps(mongo_server.password)}\n"
    assert seen["config"].startswith("/dev/fd/") and seen["config_mode"] == 0o600
    assert seen["config_target"].startswith("/memfd:")  # anonymous memory: no snapshot of any disk holds it
    stored = [path for path in (tmp_path / "storage").rglob("*") if path.is_file()]
    assert all(mongo_server.password.encode() not in path.read_bytes() for path in stored)
    manifest = read_manifest(manifest_path(the_dump(tmp_path, mongo_database)))
    assert (manifest.tool, manifest.tool_version) == (str(script), "mongodump version: 100.10.0")
    assert manifest.counts == {"things": 3}
    assert manifest.counts_consistent and not manifest.point_in_time


def test_auto_takes_mongodump_from_path(
    mongo_server: MongoServer, mongo_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script, record = stand_in_mongodump(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
    config = write_config(tmp_path, {"docs": mongo_job(mongo_server, tmp_path, [mongo_database])})

    assert run_cli(config, "backup") == 0

    assert record.exists()
    assert read_manifest(manifest_path(the_dump(tmp_path, mongo_database))).tool == str(script)


def test_a_named_mongodump_that_is_missing_is_a_clear_error(
    mongo_server: MongoServer, mongo_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = mongo_job(mongo_server, tmp_path, [mongo_database], tool=str(tmp_path / "no" / "mongodump"))
    config = write_config(tmp_path, {"docs": job})

    assert run_cli(config, "backup") == 1

    assert "mongodump not found" in capsys.readouterr().out
    assert data_files(tmp_path / "storage") == []


def test_a_point_in_time_whole_server_job_runs_one_mongodump_with_oplog(
    mongo_server: MongoServer, mongo_database: str, tmp_path: Path
) -> None:
    if not is_replica_set(mongo_server):
        pytest.skip("--oplog needs a replica set")
    script, record = stand_in_mongodump(tmp_path / "bin")
    job = mongo_job(mongo_server, tmp_path, "*", tool=str(script), point_in_time=True, exclude=["beta"])
    config = write_config(tmp_path, {"docs": job})

    assert run_cli(config, "backup") == 0

    argv = json.loads(record.read_text())["argv"]
    assert "--oplog" in argv and not any(argument.startswith("--db") for argument in argv)
    assert {"--nsExclude=admin.*", "--nsExclude=config.*"} <= set(argv)
    dumps = data_files(tmp_path / "storage")
    assert [path.parent.name for path in dumps] == ["_server"]
    manifest = read_manifest(manifest_path(dumps[0]))
    assert (manifest.kind, manifest.point_in_time) == ("server", True)
    assert manifest.counts == {"alpha.things": 3, "beta.things": 3}
    assert manifest.details["oplog_entries"] == 2

    target = f"{mongo_database}_alpha"
    try:
        assert run_cli(config, "restore", "--job", "docs", "--database", "alpha", "--into", target) == 0
        with mongo_server.client() as client:
            assert client[target]["things"].count_documents({}) == 3
    finally:
        with mongo_server.client() as client:
            client.drop_database(target)


@pytest.mark.parametrize(("mode", "message"), [("truncated", "truncated"), ("bad-crc", "CRC mismatch")])
def test_a_damaged_archive_from_mongodump_is_caught_and_nothing_is_published(
    mongo_server: MongoServer, mongo_database: str, tmp_path: Path, mode: str, message: str
) -> None:
    script, _ = stand_in_mongodump(tmp_path / "bin", mode=mode)
    config = write_config(tmp_path, {"docs": mongo_job(mongo_server, tmp_path, [mongo_database], tool=str(script))})

    assert run_cli(config, "backup") == 1

    assert data_files(tmp_path / "storage") == []
    assert not list((tmp_path / "storage").rglob("*.partial"))
    failed = events_named(tmp_path, "backup.failed")
    assert [event["reason"] for event in failed] == ["verification_failed"]
    assert message in failed[0]["error"]


# --------------------------------------------------------------------------------------------------
# Size: bounded memory, and a server that goes away mid-dump

BIG_DOCUMENTS = 80_000
BIG_PAYLOAD = 400  # bytes of text per document: about 34 MiB of BSON for 80k documents (buffering half would show)

# VmHWM, not getrusage: Linux carries ru_maxrss across exec, so a child would report pytest's size
MEASURE = """
import json, re, sys
from agent.cli import main
code = main(["-c", sys.argv[1], "backup"])
status = open("/proc/self/status", encoding="ascii").read()
print(json.dumps({"code": code, "peak_rss_kib": int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))}))
"""


def _fill(client: pymongo.MongoClient[Any], name: str, count: int) -> int:
    collection = client[name].items
    for start in range(0, count, 20_000):
        collection.insert_many(
            [
                {"_id": index, "n": index, "text": f"{index:08d}" + "x" * BIG_PAYLOAD}
                for index in range(start, min(count, start + 20_000))
            ],
            ordered=False,
        )
    return int(client[name].command("dbStats")["dataSize"])


@pytest.fixture(scope="module")
def big_databases(mongo_server: MongoServer) -> Any:
    """Databases of 40k and 80k small documents, made once for this section and dropped after it."""
    names = {count: f"t_big{count // 1000}k_{uuid.uuid4().hex[:8]}" for count in (BIG_DOCUMENTS // 2, BIG_DOCUMENTS)}
    with mongo_server.client() as client:
        sizes = {count: _fill(client, name, count) for count, name in names.items()}
    yield {count: (name, sizes[count]) for count, name in names.items()}
    mongo_server.start()
    with mongo_server.client() as client:
        for name in names.values():
            client.drop_database(name)


def _measured_backup(config: Path) -> dict[str, int]:
    import subprocess

    completed = subprocess.run(
        [sys.executable, "-c", MEASURE, str(config)], capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    result: dict[str, int] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def test_dumping_80k_documents_keeps_the_agent_memory_bounded(
    mongo_server: MongoServer, mongo_database: str, big_databases: dict[int, tuple[str, int]], tmp_path: Path
) -> None:
    """Peak RSS of the whole agent process (with its zstd compressor) is the same for 40k and 80k
    documents: memory follows the cursor batch, not the data."""
    with mongo_server.client() as client:
        client[mongo_database].few.insert_many([{"n": index} for index in range(10)])
    half, full = big_databases[BIG_DOCUMENTS // 2], big_databases[BIG_DOCUMENTS]
    peaks: dict[str, int] = {}
    for name in (mongo_database, half[0], full[0]):
        place = tmp_path / name
        place.mkdir()
        config = write_config(place, {"docs": mongo_job(mongo_server, place, [name], tool="builtin")})
        outcome = _measured_backup(config)
        assert outcome["code"] == 0
        peaks[name] = outcome["peak_rss_kib"] * 1024
    manifest = read_manifest(manifest_path(the_dump(tmp_path / full[0], full[0])))
    assert manifest.counts == {"items": BIG_DOCUMENTS}
    assert manifest.raw_bytes > full[1]
    mib = 2**20
    print(
        f"\npeak RSS: 10 documents {peaks[mongo_database] / mib:.1f} MiB; "
        f"{BIG_DOCUMENTS // 2} documents ({half[1] / mib:.0f} MiB of BSON) {peaks[half[0]] / mib:.1f} MiB; "
        f"{BIG_DOCUMENTS} documents ({full[1] / mib:.0f} MiB) {peaks[full[0]] / mib:.1f} MiB; "
        f"dump {manifest.duration_seconds:.1f}s, {manifest.raw_bytes / mib / manifest.duration_seconds:.0f} MiB/s"
    )
    assert peaks[full[0]] - peaks[half[0]] < 8 * mib  # twice the data, no more memory
    assert peaks[full[0]] - peaks[mongo_database] < 64 * mib  # the cursor's batches and zstd's window, not the data
    assert peaks[full[0]] < 256 * mib


def test_a_server_stopped_mid_dump_fails_the_backup_and_leaves_no_file(
    mongo_server: MongoServer, big_databases: dict[int, tuple[str, int]], tmp_path: Path
) -> None:
    import subprocess
    import time

    if mongo_server.is_external:
        pytest.skip("the server from MONGODB_TEST_URI cannot be stopped")
    big, _ = big_databases[BIG_DOCUMENTS]
    # uncompressed, so the partial file grows as soon as the first batch is written
    config = write_config(
        tmp_path, {"docs": mongo_job(mongo_server, tmp_path, [big], tool="builtin")}, storage={"compression": "none"}
    )
    folder = tmp_path / "storage" / "docs" / big
    child = subprocess.Popen(
        [sys.executable, "-m", "agent", "-c", str(config), "backup"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    started = time.monotonic()
    try:
        deadline = time.monotonic() + 120
        while not any(path.stat().st_size > 0 for path in folder.glob("*.partial")) if folder.exists() else True:
            assert child.poll() is None, "the backup ended before the server could be stopped"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        reached = time.monotonic()
        mongo_server.stop()
        stopped = time.monotonic()
        output, _ = child.communicate(timeout=120)
        print(
            f"\nstop test: dump under way after {reached - started:.1f}s, server stopped in "
            f"{stopped - reached:.1f}s, backup failed {time.monotonic() - stopped:.1f}s later"
        )
    finally:
        if child.poll() is None:
            child.kill()
        restart = time.monotonic()
        mongo_server.start()
        print(f"server restarted in {time.monotonic() - restart:.1f}s")
    assert child.returncode == 1
    assert data_files(tmp_path / "storage") == []
    assert not list((tmp_path / "storage").rglob("*.partial"))
    failed = events_named(tmp_path, "backup.failed")
    assert [event["reason"] for event in failed] == ["connection_lost"]
    assert "lost the connection to MongoDB while dumping" in failed[0]["error"]
    assert b"FAILED" in output
