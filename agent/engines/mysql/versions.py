"""Which MySQL/MariaDB dump tool may dump which server (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass

MARIADB = "MariaDB"
MYSQL = "MySQL"
# the first MariaDB release of each series whose dump tool has --system=users
_SYSTEM_USERS_SINCE = {(10, 2): 37, (10, 3): 28, (10, 4): 18, (10, 5): 9}


@dataclass(frozen=True, slots=True)
class Version:
    vendor: str  # MariaDB | MySQL (Percona and other MySQL builds count as MySQL)
    numbers: tuple[int, int, int]
    text: str

    @property
    def family(self) -> tuple[int, int]:
        """The release series (10.11, 8.0, 8.4): each adds features an older tool cannot dump."""
        return self.numbers[0], self.numbers[1]

    def label(self) -> str:
        return f"{self.vendor} {self.numbers[0]}.{self.numbers[1]}"


_TOOL_FROM = re.compile(r"\bfrom (\d+)\.(\d+)\.(\d+)(-MariaDB)?")  # mariadb-dump 11: "from 11.4.2-MariaDB, client"
_TOOL_DISTRIB = re.compile(r"\bDistrib (\d+)\.(\d+)\.(\d+)(-MariaDB)?")  # MariaDB 10, MySQL 5.x
_TOOL_VER = re.compile(r"\bVer (\d+)\.(\d+)\.(\d+)")  # MySQL 8: "mysqldump  Ver 8.0.36 for Linux"
_SERVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)")


def parse_tool_version(output: str) -> Version | None:
    """The release a dump tool's `--version` line names, or None when it is not one we know."""
    for pattern in (_TOOL_FROM, _TOOL_DISTRIB, _TOOL_VER):
        match = pattern.search(output)
        if match:
            vendor = MARIADB if match.re is not _TOOL_VER and match[4] else MYSQL
            return Version(vendor, (int(match[1]), int(match[2]), int(match[3])), output.strip())
    return None


def parse_server_version(text: str) -> Version:
    """`SELECT VERSION()`: "10.11.19-MariaDB-0+deb12u1", "8.0.36", "8.0.35-27" (Percona)."""
    match = _SERVER.match(text)
    numbers = (int(match[1]), int(match[2]), int(match[3])) if match else (0, 0, 0)
    return Version(MARIADB if "mariadb" in text.lower() else MYSQL, numbers, text)


def compatibility_problem(tool_name: str, tool: Version, server: Version) -> str | None:
    """Why `tool` cannot dump `server` correctly, or None.

    The vendors must match (MySQL's mysqldump trips over MariaDB, and a MariaDB dump opens with a
    line MySQL's client refuses), and the tool's series must be at least the server's.
    """
    if tool.vendor != server.vendor:
        package = "mariadb-client" if server.vendor == MARIADB else "mysql-client"
        return (
            f"{tool_name} comes from {tool.label()} but the server is {server.label()}: it cannot dump "
            f"it correctly; install {package} {server.family[0]}.{server.family[1]} or newer"
        )
    if tool.family < server.family:
        return (
            f"{tool_name} is {tool.label()}, older than the {server.label()} server: it cannot dump "
            f"what the newer series added; install a {server.label()} (or newer) client"
        )
    return None


def supports_system_users(tool: Version) -> bool:
    """Whether `mariadb-dump --system=users` exists (MariaDB 10.2.37, 10.3.28, 10.4.18, 10.5.9, 10.6+)."""
    if tool.vendor != MARIADB or tool.family < (10, 2):
        return False
    since = _SYSTEM_USERS_SINCE.get(tool.family)
    return since is None or tool.numbers[2] >= since
