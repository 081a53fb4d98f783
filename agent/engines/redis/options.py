"""The Redis keys of a job beyond the common ones: TLS, named as the other engines name them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.engines.base import EngineOptions

EVERY_DATABASE = "all"  # the one target: a snapshot holds every logical database of the server

if TYPE_CHECKING:
    from agent.config import ConfigTable

_TLS_FILES = ("ssl_ca", "ssl_cert", "ssl_key")


@dataclass(frozen=True, slots=True)
class RedisOptions(EngineOptions):
    tls: bool = False  # TLS to a TCP endpoint (a unix socket never needs it)
    ssl_ca: str | None = None  # CA file to verify the server with; the system store when unset
    ssl_cert: str | None = None  # client certificate, for a server with tls-auth-clients
    ssl_key: str | None = None  # its private key (when not inside ssl_cert)


def read_options(table: ConfigTable) -> RedisOptions:
    tls = table.flag("tls", False)
    files: dict[str, str | None] = {}
    for key in _TLS_FILES:
        value = table.text(key, None)
        if value is not None and not value.startswith("/"):
            table.add(key, f"must be an absolute path, got {table.show(value)}")
            value = None
        if value is not None and not tls:
            table.add(key, "only used with tls = true")
        files[key] = value
    if tls and table.has("socket"):
        table.add("tls", "a unix socket does not use TLS; set host/port for a TLS endpoint")
    if files["ssl_key"] is not None and files["ssl_cert"] is None:
        table.add("ssl_key", "needs ssl_cert (the certificate the key belongs to)")
    return RedisOptions(tls=tls, ssl_ca=files["ssl_ca"], ssl_cert=files["ssl_cert"], ssl_key=files["ssl_key"])
