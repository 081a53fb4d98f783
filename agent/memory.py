"""Handing the heap a run freed back to the system, so the daemon at rest holds what it needs.

glibc keeps freed memory: each thread that allocates under contention gets its own arena (zstd's
workers, the scheduler's pool threads), and `malloc_trim` gives back only the main arena's top and
the free pages inside arenas, never another arena's top. After three catch-up backups the daemon
held 68 MiB of anonymous memory, 10 MB of it in use (docs/performance.md, bench/idle_memory.py).
With one arena a trim reaches everything. Elsewhere (musl, macOS) both calls do nothing.
"""

from __future__ import annotations

import ctypes
import functools
import gc

_M_ARENA_MAX = -8  # glibc's malloc.h


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it alone has mallopt's M_ARENA_MAX and malloc_trim)."""
    try:
        library = ctypes.CDLL(None)
        library.gnu_get_libc_version  # noqa: B018 (glibc only; raises AttributeError elsewhere)
        library.malloc_trim
        library.mallopt
    except (OSError, AttributeError):
        return None
    return library


def use_one_arena() -> bool:
    """Make every thread allocate from glibc's main arena, so `release_freed` can return all of it.

    Call before the process starts its threads: glibc fixes its arena limit when a thread first
    needs a second arena. True when it applied.
    """
    library = _libc()
    return library is not None and bool(library.mallopt(_M_ARENA_MAX, 1))


def trim() -> bool:
    """Hand glibc's free pages back to the system (`malloc_trim`); True when any went."""
    library = _libc()
    return library is not None and bool(library.malloc_trim(0))


def release_freed() -> bool:
    """Collect garbage cycles first, then trim: what a finished run left behind goes back."""
    gc.collect()
    return trim()
