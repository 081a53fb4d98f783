"""The account's grants as SHOW GRANTS prints them, read once for both `doctor` and the dump (pure).

In a database-level grant (`ON db.*`) the database name is a LIKE pattern: `_` and `%` are
wildcards and `\\_`, `\\%` stand for the characters themselves (MySQL and MariaDB manuals, GRANT,
"database name wildcards"), so `` `app\\_%`.* `` covers `app_one` but not `appxone`. Table-level
names are literal. Where several patterns match, the server uses only the first row it sorts
first; this reading takes their union, which can only overstate what a pattern grant gives.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

DUMP_PRIVILEGES = ("SELECT", "SHOW VIEW", "TRIGGER", "LOCK TABLES", "EVENT")
# what loading a dump into a database needs (tests/integration/test_restore_accounts.py removes each in turn)
RESTORE_PRIVILEGES = (
    "SELECT", "INSERT", "CREATE", "DROP", "ALTER", "LOCK TABLES", "CREATE VIEW", "TRIGGER",
    "CREATE ROUTINE", "ALTER ROUTINE", "EVENT",
)  # fmt: skip
_DEFINER_PRIVILEGES = ("SUPER", "SET USER", "SET_USER_ID")  # a DEFINER naming another account
ROUTINES = "routines (global SELECT, SHOW_ROUTINE, or SELECT on mysql.proc)"
_ALL = "ALL"
_NAME = r"`(?:[^`]|``)*`"
_GRANT_LINE = re.compile(
    rf"^GRANT (?P<privileges>.+?) ON (?P<database>\*|{_NAME})\.(?P<table>\*|{_NAME}) TO ", re.DOTALL
)
_ROLE_GRANT = re.compile(rf"^GRANT (?P<role>{_NAME}(?:@{_NAME})?) TO ")
_COLUMN_LIST = re.compile(r"\s*\([^)]*\)")


@dataclass(frozen=True, slots=True)
class Grant:
    """One `GRANT privileges ON database.table` line; None stands for `*`."""

    privileges: frozenset[str]  # upper case; ALL PRIVILEGES is "ALL"
    database: str | None  # a LIKE pattern as written, backticks removed
    table: str | None

    def holds(self, privilege: str) -> bool:
        return _ALL in self.privileges or privilege in self.privileges

    @property
    def is_global(self) -> bool:
        return self.database is None

    def covers_database(self, database: str) -> bool:
        """Whether this grant gives its privileges on every table of `database`."""
        if self.table is not None:
            return False
        return self.database is None or pattern_matches(self.database, database)

    def covers_table(self, database: str, table: str) -> bool:
        if self.covers_database(database):
            return True
        return self.database == database and self.table == table


def _unquote(name: str) -> str | None:
    return None if name == "*" else name[1:-1].replace("``", "`")


def parse_grants(lines: Iterable[str]) -> list[Grant]:
    """Every privilege grant among SHOW GRANTS lines (role grants and proxy grants are skipped)."""
    grants = []
    for line in lines:
        match = _GRANT_LINE.match(line.strip())
        if match is None:
            continue
        listed = _COLUMN_LIST.sub("", match["privileges"])  # SELECT (a, b) is a column grant: the name counts
        privileges = {part.strip().upper() for part in listed.split(",")}
        if "ALL PRIVILEGES" in privileges:
            privileges = (privileges - {"ALL PRIVILEGES"}) | {_ALL}
        grants.append(Grant(frozenset(privileges), _unquote(match["database"]), _unquote(match["table"])))
    return grants


def granted_roles(lines: Iterable[str]) -> list[str]:
    """The roles granted to the account, quoted as SHOW GRANTS FOR takes them."""
    return [match["role"] for line in lines if (match := _ROLE_GRANT.match(line.strip()))]


def pattern_matches(pattern: str, database: str) -> bool:
    """A grant's database pattern against a name: `_` one character, `%` any, `\\_` and `\\%` literal."""
    regex = ""
    for token in re.findall(r"\\.|.", pattern, flags=re.DOTALL):
        if token.startswith("\\"):
            regex += re.escape(token[1])
        else:
            regex += {"%": ".*", "_": "."}.get(token, re.escape(token))
    return re.fullmatch(regex, database, flags=re.DOTALL) is not None


def sees_routines(grants: Iterable[Grant], database: str) -> bool:
    """Whether the account can read the bodies of every routine in `database`.

    A global SELECT or SHOW_ROUTINE (MySQL 8), SELECT on mysql.proc (MariaDB before 11.3, MySQL 5.7)
    or SHOW CREATE ROUTINE (MariaDB 11.3+). A database-level ALL does not count: before MariaDB 11.3
    it shows only the account's own routines.
    """
    for grant in grants:
        if grant.is_global and (grant.holds("SELECT") or grant.holds("SHOW_ROUTINE")):
            return True
        if grant.holds("SELECT") and grant.covers_table("mysql", "proc"):
            return True
        if "SHOW CREATE ROUTINE" in grant.privileges and grant.covers_database(database):
            return True
    return False


def missing_privileges(grants: list[Grant], database: str) -> list[str]:
    """What a complete dump of `database` needs that the grants do not give, ROUTINES last."""
    covering = [grant for grant in grants if grant.covers_database(database)]
    missing = [name for name in DUMP_PRIVILEGES if not any(grant.holds(name) for grant in covering)]
    if not sees_routines(grants, database):
        missing.append(ROUTINES)
    return missing


def privilege_gaps(grants: list[Grant], database: str) -> list[str]:
    """The objects the dump tools leave out of `database`, without an error, for want of a privilege."""
    missing = missing_privileges(grants, database)
    gaps = []
    if "TRIGGER" in missing:
        gaps.append("the TRIGGER privilege on it (triggers)")
    if ROUTINES in missing:
        gaps.append("global SELECT, SELECT on mysql.proc or SHOW_ROUTINE (stored routines)")
    return gaps


def missing_restore_privileges(grants: list[Grant], database: str) -> list[str]:
    """The RESTORE_PRIVILEGES a load into `database` needs that the grants do not give on it."""
    covering = [grant for grant in grants if grant.covers_database(database)]
    return [name for name in RESTORE_PRIVILEGES if not any(grant.holds(name) for grant in covering)]


def may_name_other_definers(grants: list[Grant]) -> bool:
    """Whether the account may create objects whose DEFINER is another account (SUPER, SET USER)."""
    return any(grant.is_global and any(grant.holds(name) for name in _DEFINER_PRIVILEGES) for grant in grants)
