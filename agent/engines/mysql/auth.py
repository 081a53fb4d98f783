"""No password in clear text to a MySQL/MariaDB server the connection has not verified.

A server (or whatever took its port) may switch the login to `mysql_clear_password` or `dialog`
(PAM), and PyMySQL and the MariaDB client tools then send the password as it is; MySQL's own
tools refuse unless told otherwise. So, unless TLS verifies the server (ssl_mode VERIFY_CA or
VERIFY_IDENTITY):

- PyMySQL gets an `auth_plugin_map` whose handlers for those plugins refuse before anything is sent;
- the MariaDB tools get `--plugin-dir` pointing at a private folder that holds only the client
  plugins that never send the password (`client_ed25519`), so the clear-text ones cannot load;
- `LIBMYSQL_ENABLE_CLEARTEXT_PLUGIN` is never inherited (agent/process.py) and `extra_args` may not
  name `--enable-cleartext-plugin`, `--plugin-dir` or `--default-auth`.
"""

from __future__ import annotations

import contextlib
import glob
import os
from pathlib import Path
from typing import Any

import pymysql

from agent import trust

CLEAR_TEXT_PLUGINS = ("mysql_clear_password", "dialog")
VERIFYING_SSL_MODES = ("VERIFY_CA", "VERIFY_IDENTITY")
SAFE_TOOL_PLUGINS = ("client_ed25519",)  # signs a challenge: the password never leaves the client
# where MariaDB Connector/C keeps its client plugins (Debian/Ubuntu multiarch, RHEL/Fedora, others)
_PLUGIN_FOLDER_PATTERNS = (
    "/usr/lib/*/libmariadb3/plugin",
    "/usr/lib64/mariadb/plugin",
    "/usr/lib/mariadb/plugin",
    "/usr/lib/mysql/plugin",
)
_PLUGIN_FOLDER = "client-plugins"
CR_AUTH_PLUGIN_CANNOT_LOAD = 2059


class ClearTextRefused(pymysql.err.OperationalError):  # type: ignore[misc]  # PyMySQL has no type hints
    """Raised by PyMySQL's auth handshake when the server asks for the password in clear text."""


def refusing_plugin_map() -> dict[str, type]:
    """An `auth_plugin_map` for pymysql.connect: each clear-text plugin refuses as it is chosen."""
    return {name: _refuser(name) for name in CLEAR_TEXT_PLUGINS}


def _refuser(plugin: str) -> type:
    class Refuse:
        def __init__(self, connection: Any) -> None:
            raise ClearTextRefused(
                CR_AUTH_PLUGIN_CANNOT_LOAD,
                f"the server asked for the password in clear text ({plugin})",
            )

    Refuse.__name__ = f"Refuse_{plugin}"
    return Refuse


def plugin_folder(scratch: Path) -> Path:
    """A private folder of the client plugins the tools may load: links to the system's safe ones.

    Beside the jobs' scratch folders (whose leftovers each run sweeps), created 0700 if missing;
    a plugin someone else could have changed is not linked.
    """
    folder = trust.private_folder(scratch.parent / _PLUGIN_FOLDER)
    for name in SAFE_TOOL_PLUGINS:
        link = folder / f"{name}.so"
        source = _system_plugin(name)
        if source is None:
            if link.is_symlink():
                link.unlink()
            continue
        if link.is_symlink() and os.readlink(link) == str(source):
            continue
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        with contextlib.suppress(FileExistsError):  # another job's run made it at the same moment
            link.symlink_to(source)
    return folder


def _system_plugin(name: str) -> Path | None:
    for pattern in _PLUGIN_FOLDER_PATTERNS:
        for folder in sorted(glob.glob(pattern)):
            candidate = Path(folder) / f"{name}.so"
            if candidate.is_file() and trust.check_program(candidate) is None:
                return candidate
    return None
