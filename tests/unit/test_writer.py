"""The writer publishes whole files only, read-only, never over an existing name."""

from __future__ import annotations

import hashlib
import io
import os
import stat
from pathlib import Path

import pytest

from agent.compression import CompressionSettings, open_decompressed
from agent.writer import DumpWriter, write_small_file


def _names(base: str):
    return lambda sequence: f"{base}-{sequence}.dump.zst" if sequence else f"{base}.dump.zst"


def test_a_committed_dump_is_read_only_hashed_and_decompresses_to_the_input(tmp_path: Path) -> None:
    payload = os.urandom(300_000) + b"x" * 3_000_000
    writer = DumpWriter(tmp_path / "db", _names("f"), CompressionSettings("zstd"))
    for start in range(0, len(payload), 65536):
        writer.write(payload[start : start + 65536])
    published = writer.commit()
    assert published.path == tmp_path / "db" / "f.dump.zst"
    assert stat.S_IMODE(published.path.stat().st_mode) == 0o440
    stored = published.path.read_bytes()
    assert hashlib.sha256(stored).hexdigest() == published.sha256
    assert published.stored_bytes == len(stored) < len(payload)
    assert _read_all(stored) == payload
    assert not list((tmp_path / "db").glob("*.partial"))


def _read_all(stored: bytes) -> bytes:
    reader = open_decompressed(io.BytesIO(stored), "zstd")
    out = b""
    while chunk := reader.read(1 << 20):
        out += chunk
    return out


def test_an_existing_final_name_is_never_overwritten(tmp_path: Path) -> None:
    folder = tmp_path / "db"
    folder.mkdir()
    (folder / "f.dump.zst").write_bytes(b"earlier backup")
    writer = DumpWriter(folder, _names("f"), CompressionSettings("none"))
    writer.write(b"new backup")
    published = writer.commit()
    assert published.path.name == "f-1.dump.zst"
    assert (folder / "f.dump.zst").read_bytes() == b"earlier backup"


def test_a_symlink_at_the_final_name_is_not_followed(tmp_path: Path) -> None:
    folder = tmp_path / "db"
    folder.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    (folder / "f.dump.zst").symlink_to(victim)
    writer = DumpWriter(folder, _names("f"), CompressionSettings("none"))
    writer.write(b"data")
    published = writer.commit()
    assert published.path.name == "f-1.dump.zst"
    assert victim.read_bytes() == b"keep me"


def test_an_aborted_dump_leaves_nothing(tmp_path: Path) -> None:
    writer = DumpWriter(tmp_path / "db", _names("f"), CompressionSettings("gzip"))
    writer.write(b"half a dump")
    writer.abort()
    writer.abort()
    assert list((tmp_path / "db").iterdir()) == []


def test_a_failed_fsync_is_not_retried_and_the_partial_can_be_removed(tmp_path: Path, monkeypatch) -> None:
    writer = DumpWriter(tmp_path / "db", _names("f"), CompressionSettings("none"))
    writer.write(b"data")
    calls = []

    def failing_fsync(descriptor: int) -> None:
        calls.append(descriptor)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        writer.commit()
    monkeypatch.undo()
    writer.abort()
    assert len(calls) == 1
    assert list((tmp_path / "db").iterdir()) == []


def test_folders_and_files_get_their_modes_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        writer = DumpWriter(tmp_path / "a" / "b", _names("f"), CompressionSettings("none"))
        writer.write(b"x")
        published = writer.commit()
        manifest = write_small_file(published.path.parent, "f.dump.zst.json", b"{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o750
    assert stat.S_IMODE(published.path.stat().st_mode) == 0o440
    assert stat.S_IMODE(manifest.stat().st_mode) == 0o440


def test_a_small_file_refuses_to_replace_an_existing_one(tmp_path: Path) -> None:
    write_small_file(tmp_path, "m.json", b"first")
    with pytest.raises(Exception, match="already exists"):
        write_small_file(tmp_path, "m.json", b"second")
    assert (tmp_path / "m.json").read_bytes() == b"first"
    assert not (tmp_path / "m.json.partial").exists()
