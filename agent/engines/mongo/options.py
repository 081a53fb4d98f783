"""The MongoDB keys of a job beyond the common ones, and the checks that tie them to the common keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

from agent.engines.base import EngineOptions
from agent.engines.mongo.busy import DEFAULT_THRESHOLD

if TYPE_CHECKING:
    from agent.config import ConfigTable

BUILTIN = "builtin"
TOOL_WORDS = ("auto", "mongodump", BUILTIN)


_TRUE = ("true", "1", "yes")
_INSECURE_TLS = (
    "tlsinsecure",
    "tlsallowinvalidcertificates",
    "tlsallowinvalidhostnames",
    "sslallowinvalidcertificates",
)


@dataclass(frozen=True, slots=True)
class MongoOptions(EngineOptions):
    uri: str | None = None  # instead of host/port/socket; never with a password in it
    auth_source: str | None = None
    tls: bool = False
    point_in_time: bool = False  # a whole-server job on a replica set: one archive with --oplog
    include_system: bool = False  # admin and config too
    busy_threshold: int = DEFAULT_THRESHOLD  # operations queued for a lock above which a gentle dump slows; 0: off

    def uri_options(self) -> dict[str, str]:
        """The URI's query options, names lower-cased (MongoDB treats them case-insensitively)."""
        if self.uri is None:
            return {}
        return {key.lower(): value for key, value in parse_qsl(urlsplit(self.uri).query)}

    @property
    def verifies_server(self) -> bool:
        """TLS on, with certificate and host checks left on: only then may a password go in clear text."""
        options = self.uri_options()
        tls = self.tls or options.get("tls", options.get("ssl", "")).lower() in _TRUE
        return tls and not any(options.get(name, "").lower() in _TRUE for name in _INSECURE_TLS)

    @property
    def clear_text_auth(self) -> bool:
        """authMechanism=PLAIN (LDAP): the password goes to the server as it is."""
        return self.uri_options().get("authmechanism", "").upper() == "PLAIN"


def read_options(table: ConfigTable) -> MongoOptions:
    uri = _read_uri(table)
    if uri is not None and any(table.has(key) for key in ("host", "socket", "port")):
        table.add("uri", "set either uri or host/port/socket, not both")
    tool = table.data.get("tool")
    if isinstance(tool, str) and tool.strip() and tool not in TOOL_WORDS and "/" not in tool:
        table.add("tool", f'expected "auto", "mongodump", "builtin" or a path, got {table.show(tool)}')
    options = MongoOptions(
        uri=uri,
        auth_source=table.text("auth_source", None),
        tls=table.flag("tls", False),
        point_in_time=table.flag("point_in_time", False),
        include_system=table.flag("include_system", False),
        busy_threshold=table.integer("busy_threshold", DEFAULT_THRESHOLD, minimum=0),
    )
    if options.clear_text_auth and not options.verifies_server:
        table.add(
            "uri",
            "authMechanism=PLAIN sends the password in clear text: only over TLS that verifies the server "
            "(tls = true, no tlsInsecure or tlsAllowInvalid* options)",
        )
    return options


def _read_uri(table: ConfigTable) -> str | None:
    uri = table.text("uri", None, secret=True)
    if uri is None:
        return None
    parts = urlsplit(uri)
    if parts.scheme not in ("mongodb", "mongodb+srv"):
        table.add("uri", "expected a mongodb:// or mongodb+srv:// URI")
        return None
    if ":" in parts.netloc.rpartition("@")[0]:
        table.add("uri", "contains a password; use password_file or password_env instead")
        return None
    return uri
