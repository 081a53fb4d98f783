"""What a MongoDB account's built-in roles let a restore do to one database (pure).

The built-in restore creates collections with their options, inserts with
`bypassDocumentValidation` (as mongorestore does), builds indexes, and a drill drops its scratch
database. Roles are read from `connectionStatus`; a custom role's actions are not expanded, so
with one the check says nothing rather than guess.
"""

from __future__ import annotations

from collections.abc import Iterable

WRITE = "readWrite"  # insert, createCollection, createIndex
ADMINISTER = "dbAdmin"  # bypassDocumentValidation, dropDatabase
_EVERYTHING = frozenset({"root", "__system", "dbOwner"})
_BUILT_IN = frozenset(
    {
        "read", "readWrite", "dbAdmin", "dbOwner", "userAdmin", "clusterAdmin", "clusterManager",
        "clusterMonitor", "hostManager", "backup", "restore", "readAnyDatabase", "readWriteAnyDatabase",
        "dbAdminAnyDatabase", "userAdminAnyDatabase", "root", "__system", "enableSharding", "directShardOperations",
    }
)  # fmt: skip


def missing_restore_roles(roles: Iterable[tuple[str, str]], database: str) -> list[str] | None:
    """The roles (name, their database) a restore into `database` needs and the account lacks;
    None when a custom role may grant them (not expanded here)."""
    held = set(roles)
    if any(name not in _BUILT_IN for name, _ in held):
        return None
    names_here = {name for name, bound in held if bound == database}
    names_anywhere = {name for name, bound in held if bound == "admin" and name.endswith("AnyDatabase")}
    if any(name in _EVERYTHING for name, bound in held if name != "dbOwner" or bound == database):
        return []
    missing = []
    if WRITE not in names_here and "readWriteAnyDatabase" not in names_anywhere and ("restore", "admin") not in held:
        missing.append(WRITE)
    if ADMINISTER not in names_here and "dbAdminAnyDatabase" not in names_anywhere:
        missing.append(ADMINISTER)
    return missing
