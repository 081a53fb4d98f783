"""The client's credentials as a private option file, never argv or the environment."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from agent.secrets import Secret


def option_file_value(value: str) -> str:
    """A double-quoted option-file value: `#`, quotes, backslashes and edge spaces are kept literally."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def option_file_text(user: str | None, password: Secret | None) -> str:
    lines = ["[client]"]
    if user is not None:
        lines.append(f"user={option_file_value(user)}")
    if password is not None:
        lines.append(f"password={option_file_value(password.reveal())}")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def option_file(user: str | None, password: Secret | None) -> Iterator[tuple[str, tuple[int, ...]]]:
    """The client's credentials as a 0600 file: a memfd the child opens as /dev/fd/N (gone on close
    or crash), or where there is no memfd a file in a private 0700 temp dir removed afterwards."""
    text = option_file_text(user, password).encode()
    if not hasattr(os, "memfd_create"):
        with tempfile.TemporaryDirectory(prefix="backup-agent-my-") as directory:
            path = Path(directory) / "client.cnf"
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(text)
            yield str(path), ()
        return
    descriptor = os.memfd_create("backup-agent-my-cnf")
    try:
        os.fchmod(descriptor, 0o600)  # the client ignores a world-writable option file
        os.write(descriptor, text)
        yield f"/dev/fd/{descriptor}", (descriptor,)
    finally:
        os.close(descriptor)
