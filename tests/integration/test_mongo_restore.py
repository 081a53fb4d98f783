"""Restoring MongoDB archives with the built-in restore: through the CLI, in drills, and from raw archives.

The server is SecantusDB standing in for mongod (``MONGODB_TEST_URI`` runs the same tests against a
real server); mongorestore cannot be installed here, so every restore is the agent's own.
"""

from __future__ import annotations

import io
from pathlib import Path

import bson
import pytest
from agent_helpers import events_named, run_cli, write_config
from servers.mongo import MongoServer
from test_mongo import collection_shapes, fill_rich_database, mongo_job

from agent.engines.mongo.archive import ArchiveError, ArchiveHeader, ArchiveWriter, PreludeEntry, collection_metadata
from agent.engines.mongo.restore import MongoRestoreError, restore_archive


def test_restore_through_the_cli_gives_back_the_same_collections(
    mongo_server: MongoServer, mongo_database: str, tmp_path: Path
) -> None:
    target = f"{mongo_database}_into"
    with mongo_server.client() as client:
        fill_rich_database(client, mongo_database)
        before = collection_shapes(client, mongo_database)
    config = write_config(tmp_path, {"docs": mongo_job(mongo_server, tmp_path, [mongo_database], tool="builtin")})
    assert run_cli(config, "backup") == 0
    try:
        assert run_cli(config, "restore", "--job", "docs", "--database", mongo_database, "--into", target) == 0
        with mongo_server.client() as client:
            assert collection_shapes(client, target) == before
        assert run_cli(config, "restore", "--job", "docs", "--database", mongo_database, "--into", target) == 1
    finally:
        with mongo_server.client() as client:
            client.drop_database(target)


def test_a_drill_restores_the_newest_backup_and_finds_the_same_counts(
    mongo_server: MongoServer, mongo_database: str, tmp_path: Path
) -> None:
    with mongo_server.client() as client:
        fill_rich_database(client, mongo_database)
    config = write_config(tmp_path, {"docs": mongo_job(mongo_server, tmp_path, [mongo_database], tool="builtin")})
    assert run_cli(config, "backup") == 0

    assert run_cli(config, "drill", "--job", "docs") == 0

    assert len(events_named(tmp_path, "drill.passed")) == 1
    with mongo_server.client() as client:
        assert not [name for name in client.list_database_names() if "__drill_" in name]


def _archive(database: str, damage: bool = False) -> bytes:
    """Two collections interleaved segment by segment, as a parallel mongodump writes them."""
    chunks: list[bytes] = []
    writer = ArchiveWriter(chunks.append)
    index_spec = {"v": 2, "key": {"sku": 1}, "name": "sku_1", "unique": True}
    writer.begin(
        ArchiveHeader("8.2.11", "100.10.0", 4),
        [
            PreludeEntry(database, "left", collection_metadata("left", options={}, indexes=[index_spec])),
            PreludeEntry(
                database, "right", collection_metadata("right", options={"capped": True, "size": 65536}, indexes=[])
            ),
        ],
    )
    for round_number in range(3):
        for name in ("left", "right"):
            batch = b"".join(
                bson.encode({"_id": f"{round_number}-{index}", "sku": f"{name}{round_number}-{index}"})
                for index in range(100)
            )
            writer.write(database, name, batch)
    writer.end(database, "left")
    writer.end(database, "right")
    writer.close()
    data = b"".join(chunks)
    if damage:
        position = data.rindex(b"right2-99") + 2
        data = data[:position] + b"X" + data[position + 1 :]
    return data


def test_an_interleaved_archive_restores_under_another_name(mongo_server: MongoServer, mongo_database: str) -> None:
    with mongo_server.client() as client:
        result = restore_archive(io.BytesIO(_archive("source_db")), client, mongo_database)
        database = client[mongo_database]
        assert result.source_database == "source_db"
        assert result.documents == {"left": 300, "right": 300}
        assert result.crc_checked == 2 and result.indexes == 1
        assert database.right.options() == {"capped": True, "size": 65536}
        assert "sku_1" in database.left.index_information()


def test_a_crc_mismatch_fails_the_restore(mongo_server: MongoServer, mongo_database: str) -> None:
    mismatch = r"CRC mismatch for namespace source_db\.right"
    with mongo_server.client() as client, pytest.raises(ArchiveError, match=mismatch):
        restore_archive(io.BytesIO(_archive("source_db", damage=True)), client, mongo_database)


def test_a_truncated_archive_fails_the_restore(mongo_server: MongoServer, mongo_database: str) -> None:
    data = _archive("source_db")
    with mongo_server.client() as client, pytest.raises(ArchiveError, match="truncated"):
        restore_archive(io.BytesIO(data[:-20]), client, mongo_database)


def test_an_archive_of_several_databases_needs_to_be_told_which(mongo_server: MongoServer, mongo_database: str) -> None:
    chunks: list[bytes] = []
    writer = ArchiveWriter(chunks.append)
    writer.begin(ArchiveHeader("8.2.11", "test"), [PreludeEntry("one", "c", ""), PreludeEntry("two", "c", "")])
    writer.write("one", "c", bson.encode({"_id": 1}))
    writer.write("two", "c", bson.encode({"_id": 2}) + bson.encode({"_id": 3}))
    writer.end("one", "c")
    writer.end("two", "c")
    writer.close()
    data = b"".join(chunks)
    with mongo_server.client() as client:
        with pytest.raises(MongoRestoreError, match="holds 2 databases"):
            restore_archive(io.BytesIO(data), client, mongo_database)
        assert mongo_database not in client.list_database_names()
        result = restore_archive(io.BytesIO(data), client, mongo_database, source_database="two")
        assert result.documents == {"c": 2}
        assert "one" in result.warnings[0]
