"""Streaming compression and decompression: zstd, gzip or none, chosen by the storage config."""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Literal, Protocol

import zstandard

Compression = Literal["zstd", "gzip", "none"]
COMPRESSIONS: tuple[Compression, ...] = ("zstd", "gzip", "none")
EXTENSIONS: dict[Compression, str] = {"zstd": ".zst", "gzip": ".gz", "none": ""}
DEFAULT_LEVELS: dict[Compression, int | None] = {"zstd": 3, "gzip": 6, "none": None}
_MIN_JOB_SIZE = 1 << 20  # zstd's own floor is 512 KiB; smaller jobs only add overhead


@dataclass(frozen=True, slots=True)
class CompressionSettings:
    method: Compression = "zstd"
    level: int | None = None
    threads: int = -1  # zstd worker threads; -1: every core this process may use (see worker_threads)

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.method]

    @property
    def effective_level(self) -> int | None:
        return self.level if self.level is not None else DEFAULT_LEVELS[self.method]


# the share of the container's memory limit zstd's workers may hold: the application needs the rest
MEMORY_SHARE = 0.25


def worker_memory(level: int) -> int:
    """Bytes one zstd worker holds at `level`: its context and one job of input and of output.

    Measured (peak RSS per added worker, 64 MiB of input): 3.5 MiB at level 3, 90 MiB at level 19.
    """
    parameters = zstandard.ZstdCompressionParameters.from_level(level)
    return parameters.estimated_compression_context_size() + 2 * _job_size(level)


def _job_size(level: int) -> int:
    return max(1 << zstandard.ZstdCompressionParameters.from_level(level).window_log, _MIN_JOB_SIZE)


def worker_threads(
    threads: int, cores: int, *, spare_cores: int = 0, memory_limit: int | None = None, level: int = 3
) -> int:
    """zstd workers for the configured `threads`: -1 means the cores the container lets this
    process use (agent/limits.py; zstd itself would count the host's), less `spare_cores` left
    to the application, and no more than fit in MEMORY_SHARE of the container's `memory_limit`
    (at level 19 a worker holds ~90 MiB: eight of them would take a 512 MiB container down);
    never fewer than one worker (24 % faster than compressing in the reading thread,
    docs/performance.md). A number set by the user is kept."""
    if threads != -1:
        return threads
    workers = cores - spare_cores
    if memory_limit is not None:
        workers = min(workers, int(memory_limit * MEMORY_SHARE) // worker_memory(level))
    return max(1, workers)


class Compressor(Protocol):
    def compress(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


class _Identity:
    def compress(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


class _Zstd:
    def __init__(self, level: int, threads: int) -> None:
        if threads == 0:
            self._inner = zstandard.ZstdCompressor(level=level).compressobj()
            return
        # Jobs of one window each instead of zstd's default four: at level 3, peak RSS 31 MiB instead
        # of 75 MiB for the same output and speed (docs/performance.md)
        parameters = zstandard.ZstdCompressionParameters.from_level(level, threads=threads, job_size=_job_size(level))
        self._inner = zstandard.ZstdCompressor(compression_params=parameters).compressobj()

    def compress(self, data: bytes) -> bytes:
        return self._inner.compress(data)

    def flush(self) -> bytes:
        return self._inner.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)


class _Gzip:
    def __init__(self, level: int) -> None:
        self._inner = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)

    def compress(self, data: bytes) -> bytes:
        return self._inner.compress(data)

    def flush(self) -> bytes:
        return self._inner.flush()


def new_compressor(settings: CompressionSettings) -> Compressor:
    level = settings.effective_level
    if settings.method == "zstd":
        return _Zstd(level if level is not None else 3, settings.threads)
    if settings.method == "gzip":
        return _Gzip(level if level is not None else 6)
    return _Identity()


def method_for_path(name: str) -> str:
    """The compression of a stored file, from its extension."""
    if name.endswith(".zst"):
        return "zstd"
    if name.endswith(".gz"):
        return "gzip"
    return "none"


def open_decompressed(stream: BinaryIO, method: str) -> BinaryIO:
    """A reader of the original bytes; raises on a truncated or corrupt compressed stream."""
    if method == "zstd":
        return _StrictZstdReader(stream)  # type: ignore[return-value]
    if method == "gzip":
        return gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[return-value]
    return stream


class _StrictZstdReader:
    """zstandard's reader ends quietly on a cut frame; this one raises so truncation is never silent."""

    def __init__(self, source: BinaryIO) -> None:
        self._decompressor = zstandard.ZstdDecompressor().decompressobj()
        self._source = source
        self._finished_frame = True

    def read(self, size: int = -1) -> bytes:
        chunk_size = 1 << 20 if size is None or size < 0 else max(size, 1 << 16)
        while True:
            data = self._source.read(chunk_size)
            if not data:
                if not self._finished_frame:
                    raise zstandard.ZstdError("zstd stream is truncated (the last frame is incomplete)")
                return b""
            out = self._feed(data)
            if out:
                return out

    def _feed(self, data: bytes) -> bytes:
        output = bytearray()
        while data:
            self._finished_frame = False
            output += self._decompressor.decompress(data)
            if self._decompressor.eof:
                data = self._decompressor.unused_data
                self._decompressor = zstandard.ZstdDecompressor().decompressobj()
                self._finished_frame = True
            else:
                data = b""
        return bytes(output)

    def close(self) -> None:
        self._source.close()
