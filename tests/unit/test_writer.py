"""The writer publishes whole files only, read-only, never over an existing name."""

from __future__ import annotations

import hashlib
import io
import os
import stat
from pathlib import Path

import pytest

from agent.compression import CompressionSettings, open_decompressed
from agent.errors import DumpError
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


class _RecordingGate:
    """A space gate that notes, at each request, how big the partial really was, and grants `grant`."""

    def __init__(self, partial: Path, grant: int, refuse_after: int | None = None) -> None:
        self.partial = partial
        self.grant = grant
        self.refuse_after = refuse_after
        self.requests: list[tuple[int, int, int]] = []  # (file_bytes told, real size, upcoming)
        self.settled: list[int] = []

    def room(self, file_bytes: int, upcoming_bytes: int) -> int:
        real = self.partial.stat().st_size
        self.requests.append((file_bytes, real, upcoming_bytes))
        if self.refuse_after is not None and real + upcoming_bytes > self.refuse_after:
            raise DumpError("no room", "disk_reserve")
        return max(self.grant, upcoming_bytes)

    def settle(self, kept_bytes: int) -> None:
        self.settled.append(kept_bytes)


def _granted_stretches_hold(gate: _RecordingGate, final_size: int) -> None:
    """Between two requests no more was written than the first granted: every byte was asked for."""
    sizes = [real for _told, real, _upcoming in gate.requests] + [final_size]
    for (_told, real, upcoming), next_size in zip(gate.requests, sizes[1:], strict=True):
        assert next_size - real <= max(gate.grant, upcoming)


def test_every_byte_of_a_multi_threaded_zstd_dump_is_asked_for_before_it_lands_final_flush_included(
    tmp_path: Path,
) -> None:
    burst = 256 << 10
    gate = _RecordingGate(tmp_path / "db" / "f.dump.zst.partial", grant=burst)
    writer = DumpWriter(
        tmp_path / "db", _names("f"), CompressionSettings("zstd", threads=8), space=gate, burst_bytes=burst
    )
    gate.partial = writer.partial_path
    for _ in range(24):
        writer.write(os.urandom(1 << 20))  # incompressible: multi-threaded zstd keeps most for the final flush
    asked_before_commit = len(gate.requests)
    published = writer.commit()
    assert len(gate.requests) - asked_before_commit >= 4, "the final flush of several MiB is asked for piece by piece"
    assert all(upcoming <= burst for _told, _real, upcoming in gate.requests)
    assert all(told >= real for told, real, _upcoming in gate.requests), "the gate is told at least what is on disk"
    _granted_stretches_hold(gate, published.stored_bytes)
    assert gate.settled == [max(published.stored_bytes, published.path.stat().st_blocks * 512)]


def test_a_gate_that_refuses_stops_the_write_before_the_piece_lands_and_abort_settles_nothing_kept(
    tmp_path: Path,
) -> None:
    gate = _RecordingGate(tmp_path / "db" / "f.dump.partial", grant=1 << 20, refuse_after=3 << 20)
    writer = DumpWriter(tmp_path / "db", _names("f"), CompressionSettings("none"), space=gate)
    gate.partial = writer.partial_path
    with pytest.raises(DumpError):
        for _ in range(10):
            writer.write(os.urandom(1 << 20))
    assert writer.partial_path.stat().st_size <= 3 << 20, "the refused piece never reached the file"
    writer.abort()
    assert gate.settled == [0]
    assert not writer.partial_path.exists()
