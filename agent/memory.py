"""Handing the heap a dump freed back to the system, so the daemon at rest holds what it needs.

glibc gives each new thread its own malloc arena (zstd's workers, the scheduler's pool threads),
and `malloc_trim` never shrinks another arena's top, which after a large free may keep up to twice
the largest buffer freed: after three rounds of catch-up backups the daemon held 70 MiB of
anonymous memory with 10 MB in use (bench/idle_memory.py, docs/performance.md). With one arena
the writer's trim reaches everything. Elsewhere (musl, macOS) both calls do nothing.
"""

from __future__ import annotations

import ctypes
import functools

_M_ARENA_MAX = -8  # glibc's malloc.h


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it alone has mallopt's M_ARENA_MAX and malloc_trim)."""
    try:
        library = ctypes.CDLL(None)
        for name in ("gnu_get_libc_version", "malloc_trim", "mallopt"):  # AttributeError elsewhere
            getattr(library, name)
    except (OSError, AttributeError):
        return None
    return library


def use_one_arena() -> bool:
    """Make every thread allocate from glibc's main arena, so `trim` can return all that is free.

    Call before the process starts a thread: glibc fixes its arena limit when a second thread
    first allocates. True when it applied.
    """
    library = _libc()
    return library is not None and bool(library.mallopt(_M_ARENA_MAX, 1))


def trim() -> bool:
    """Hand glibc's free pages back to the system (`malloc_trim`); True when any went."""
    library = _libc()
    return library is not None and bool(library.malloc_trim(0))
