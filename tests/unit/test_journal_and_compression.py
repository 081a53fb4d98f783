"""The journal's hash chain shows edits; compressed streams refuse to end early."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import journal
from agent.compression import CompressionSettings, new_compressor, open_decompressed


def test_an_untouched_journal_has_an_unbroken_chain(tmp_path: Path) -> None:
    (tmp_path / ".agent").mkdir()
    for number in range(5):
        journal.append(tmp_path, "created", path=f"job/db/file{number}")
    entries, problems = journal.read_entries(tmp_path)
    assert [entry["path"] for entry in entries] == [f"job/db/file{n}" for n in range(5)]
    assert problems == []


def test_an_edited_entry_breaks_the_chain_at_the_next_line(tmp_path: Path) -> None:
    (tmp_path / ".agent").mkdir()
    for number in range(4):
        journal.append(tmp_path, "created", path=f"file{number}")
    path = journal.journal_path(tmp_path)
    lines = path.read_text().splitlines()
    edited = json.loads(lines[1])
    edited["path"] = "something-else"
    lines[1] = json.dumps(edited, sort_keys=True)
    path.write_text("\n".join(lines) + "\n")
    _, problems = journal.read_entries(tmp_path)
    assert [problem.line_number for problem in problems] == [3]


def test_a_removed_entry_breaks_the_chain(tmp_path: Path) -> None:
    (tmp_path / ".agent").mkdir()
    for number in range(4):
        journal.append(tmp_path, "created", path=f"file{number}")
    path = journal.journal_path(tmp_path)
    lines = path.read_text().splitlines()
    del lines[1]
    path.write_text("\n".join(lines) + "\n")
    _, problems = journal.read_entries(tmp_path)
    assert problems and problems[0].line_number == 2


def _compress(method: str, data: bytes) -> bytes:
    compressor = new_compressor(CompressionSettings(method))
    return compressor.compress(data) + compressor.flush()


def _decompress_all(method: str, data: bytes) -> bytes:
    reader = open_decompressed(io.BytesIO(data), method)
    out = bytearray()
    while chunk := reader.read(1 << 16):
        out += chunk
    return bytes(out)


@pytest.mark.parametrize("method", ["zstd", "gzip"])
@settings(max_examples=30, deadline=None)
@given(data=st.binary(min_size=1, max_size=200_000), cut=st.floats(min_value=0.0, max_value=0.999))
def test_a_truncated_compressed_stream_is_always_an_error(method: str, data: bytes, cut: float) -> None:
    stored = _compress(method, data)
    assert _decompress_all(method, stored) == data
    truncated = stored[: int(len(stored) * cut)]
    if not truncated:
        return
    with pytest.raises(Exception):  # noqa: B017 - zstd and gzip raise different types
        _decompress_all(method, truncated)


def test_every_core_means_the_cores_the_container_allows_less_the_spare_ones() -> None:
    from agent.compression import worker_threads

    assert worker_threads(-1, 2) == 2
    assert worker_threads(-1, 2, spare_cores=1) == 1
    assert worker_threads(-1, 1, spare_cores=1) == 1  # never fewer than one worker
    assert worker_threads(0, 8, spare_cores=1) == 0  # a number the user set is kept
    assert worker_threads(6, 2) == 6


def test_zstd_workers_fit_in_a_quarter_of_the_containers_memory() -> None:
    from agent.compression import worker_memory, worker_threads

    assert 2 << 20 < worker_memory(3) < 8 << 20  # measured: 3.5 MiB per added worker
    assert 80 << 20 < worker_memory(19) < 120 << 20  # measured: 90 MiB
    assert worker_threads(-1, 8, memory_limit=512 << 20, level=19) == 1  # 128 MiB for zstd: one worker
    assert worker_threads(-1, 8, memory_limit=4 << 30, level=19) == 8  # 1 GiB for zstd: room for all
    assert worker_threads(-1, 8, memory_limit=256 << 20, level=3) == 8  # level 3: eight fit in 64 MiB
    assert worker_threads(-1, 8, memory_limit=128 << 20, level=3) == 6  # six in 32 MiB
    assert worker_threads(-1, 8, memory_limit=16 << 20, level=3) == 1  # never fewer than one
    assert worker_threads(-1, 8, memory_limit=None, level=19) == 8  # no limit: the cores decide
    assert worker_threads(4, 8, memory_limit=16 << 20, level=19) == 4  # a number the user set is kept
