"""Run the agent's command line, dying with `os._exit` right after one step of publishing a dump.

    python crash_driver.py STEP [agent arguments...]

Each step is the real function, wrapped so the process ends the instant it returns, the way a
power cut or `kill -9` would: no `finally`, no `atexit`, no flush. Exit status 70 means the crash
was injected; anything else means the step was never reached.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from agent import cli, journal, manifest, writer

CRASHED = 70


def _target(descriptor: int) -> str:
    return os.readlink(f"/proc/self/fd/{descriptor}")


def _is_dump_partial(path: str) -> bool:
    return path.endswith(".partial") and not path.endswith(".json.partial")


def _after_write() -> None:
    real_store = writer.DumpWriter._store

    def store(self: writer.DumpWriter, data: bytes) -> None:
        real_store(self, data)
        if self.stored_bytes:
            os._exit(CRASHED)

    writer.DumpWriter._store = store  # type: ignore[method-assign]


def _after_fsync() -> None:
    real_fsync = os.fsync

    def fsync(descriptor: int) -> None:
        real_fsync(descriptor)
        if _is_dump_partial(_target(descriptor)):
            os._exit(CRASHED)

    os.fsync = fsync


def _after(module: Any, name: str, crash_if: Callable[..., bool] = lambda *_a, **_k: True) -> None:
    real = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        if crash_if(*args, **kwargs):
            os._exit(CRASHED)
        return result

    setattr(module, name, wrapper)


STEPS: dict[str, Callable[[], None]] = {
    "write": _after_write,
    "fsync": _after_fsync,
    "link": lambda: _after(writer, "link_without_replacing"),
    # the end of `commit`: linked, partial unlinked, folder fsynced; no manifest yet
    "directory-fsync": lambda: _after(writer, "fsync_directory"),
    "manifest": lambda: _after(manifest, "write_small_file", lambda _folder, name, *_a, **_k: name.endswith(".json")),
    "journal": lambda: _after(journal, "append", lambda _storage, event, **_fields: event == "created"),
}


def main() -> int:
    step, *arguments = sys.argv[1:]
    STEPS[step]()
    return cli.main(arguments)


if __name__ == "__main__":
    sys.exit(main())
