"""The PostgreSQL keys of a job beyond the common ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.engines.base import EngineOptions
from agent.engines.postgres.busy import DEFAULT_THRESHOLD

if TYPE_CHECKING:
    from agent.config import ConfigTable

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
VERIFYING_SSL_MODES = ("verify-ca", "verify-full")  # TLS that proves it is the real server


@dataclass(frozen=True, slots=True)
class PostgresOptions(EngineOptions):
    include_globals: bool = True  # roles and tablespaces (pg_dumpall --globals-only), once per run
    sslmode: str | None = None  # one of SSL_MODES; libpq's default (prefer) when not set
    sslrootcert: str | None = None  # the CA that signed the server's certificate
    sslcert: str | None = None  # a client certificate...
    sslkey: str | None = None  # ...and its key (0600: libpq refuses a key others can read)
    busy_threshold: int = DEFAULT_THRESHOLD  # active client backends above which a gentle dump slows; 0: off

    @property
    def verifies_server(self) -> bool:
        """Whether TLS proves the server is the real one (only then may a password go in clear text)."""
        return self.sslmode in VERIFYING_SSL_MODES

    def tls_settings(self) -> dict[str, str]:
        """The libpq keywords that are set: file paths and a mode, never a secret."""
        values = {"sslmode": self.sslmode, "sslrootcert": self.sslrootcert, "sslcert": self.sslcert}
        values["sslkey"] = self.sslkey
        return {key: value for key, value in values.items() if value is not None}


def read_options(table: ConfigTable) -> PostgresOptions:
    rootcert = table.text("sslrootcert", None)
    if rootcert is not None and rootcert != "system" and not rootcert.startswith("/"):
        table.add("sslrootcert", f'expected an absolute path (or "system", libpq 16+), got {table.show(rootcert)}')
        rootcert = None
    certificate, key = table.path_value("sslcert", None), table.path_value("sslkey", None)
    if (certificate is None) != (key is None) and not (table.has("sslcert") and table.has("sslkey")):
        table.add("sslkey" if key is None else "sslcert", "set both sslcert and sslkey, or neither")
    return PostgresOptions(
        include_globals=table.flag("include_globals", True),
        sslmode=table.choice("sslmode", SSL_MODES, None),
        sslrootcert=rootcert,
        sslcert=str(certificate) if certificate is not None else None,
        sslkey=str(key) if key is not None else None,
        busy_threshold=table.integer("busy_threshold", DEFAULT_THRESHOLD, minimum=0),
    )
