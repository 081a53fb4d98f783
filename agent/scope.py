"""Table scope: which tables (collections) of a database a job dumps, with data or schema only.

Pure decisions: the config's patterns, resolved against the table names an engine read from its
server, give the exact lists each engine hands its tool. Resolving here (not in the tool's own
pattern syntax) makes a pattern that matches nothing visible and every name passed exact.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.config import ConfigTable

SCOPE_KEYS = ("tables", "exclude_tables", "schema_only_tables")

# does pattern match name? The default is fnmatch on the whole name, case-sensitive
Matcher = Callable[[str, str], bool]


def glob_matches(pattern: str, name: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern)


@dataclass(frozen=True, slots=True)
class TableScope:
    """The patterns of one database: `tables` None means every table."""

    tables: tuple[str, ...] | None = None
    exclude_tables: tuple[str, ...] = ()
    schema_only_tables: tuple[str, ...] = ()

    @property
    def is_everything(self) -> bool:
        return self.tables is None and not self.exclude_tables and not self.schema_only_tables


EVERYTHING = TableScope()


@dataclass(frozen=True, slots=True)
class JobScope:
    """A job's scope (`tables`, `exclude_tables`, `schema_only_tables`) and per-database
    replacements (`[jobs.NAME.scope."<database>"]`): each key set there replaces the job's."""

    default: TableScope = EVERYTHING
    databases: Mapping[str, TableScope] = field(default_factory=lambda: MappingProxyType({}))

    def for_database(self, database: str) -> TableScope:
        return self.databases.get(database, self.default)

    @property
    def is_everything(self) -> bool:
        return self.default.is_everything and all(scope.is_everything for scope in self.databases.values())


@dataclass(frozen=True, slots=True)
class ResolvedScope:
    """A scope resolved against a database's tables, each list sorted."""

    scope: TableScope
    dumped: tuple[str, ...]  # with their data
    schema_only: tuple[str, ...]  # definition, indexes and constraints; no rows
    excluded: tuple[str, ...]  # left out entirely
    unmatched: tuple[str, ...] = ()  # "exclude_tables: \"x*\"": patterns that match no table

    def warnings(self, database: str) -> list[str]:
        return [f"database {database!r}: {entry} matches no table" for entry in self.unmatched]


def resolve(
    scope: TableScope,
    names: Sequence[str],
    *,
    matches: Matcher = glob_matches,
    parents: Mapping[str, str] | None = None,
) -> ResolvedScope:
    """Place every table: excluded (by `exclude_tables`, or not named by `tables` when it is set),
    else schema-only (by `schema_only_tables`), else dumped with its data.

    A pattern that matches a table's parent (a PostgreSQL partitioned table) matches the table too:
    a partition follows its parent. Exclusion wins over schema-only, which wins over inclusion.
    """
    parents = parents or {}

    def lineage(name: str) -> list[str]:
        found = [name]
        while found[-1] in parents and parents[found[-1]] not in found:
            found.append(parents[found[-1]])
        return found

    def hit(patterns: Sequence[str], name: str) -> bool:
        return any(matches(pattern, member) for pattern in patterns for member in lineage(name))

    dumped: list[str] = []
    schema_only: list[str] = []
    excluded: list[str] = []
    for name in sorted(set(names)):
        if hit(scope.exclude_tables, name) or (scope.tables is not None and not hit(scope.tables, name)):
            excluded.append(name)
        elif hit(scope.schema_only_tables, name):
            schema_only.append(name)
        else:
            dumped.append(name)
    unmatched = [
        f'{key}: "{pattern}"'
        for key, patterns in zip(
            SCOPE_KEYS, (scope.tables or (), scope.exclude_tables, scope.schema_only_tables), strict=True
        )
        for pattern in patterns
        if not any(matches(pattern, name) for name in names)
    ]
    return ResolvedScope(scope, tuple(dumped), tuple(schema_only), tuple(excluded), tuple(unmatched))


# the dump tools' own table choosers: beside a table scope they would make the manifest's lists untrue
TABLE_OPTIONS = (
    "--table", "--exclude-table", "--exclude-table-data", "--table-and-children", "--exclude-table-and-children",
    "--exclude-table-data-and-children", "--ignore-table", "--ignore-table-data", "--tables", "--no-data",
    "--collection", "--excludeCollection", "--excludeCollectionsWithPrefix", "--nsInclude", "--nsExclude",
)  # fmt: skip
_POSTGRES_SHORT_OPTIONS = ("-t", "-T")


def table_option(argument: str, engine: str) -> str | None:
    """The table-choosing option `argument` is (an extra_args item), or None."""
    name = argument.split("=", 1)[0]
    if name in TABLE_OPTIONS:
        return name
    if engine == "postgresql" and argument[:2] in _POSTGRES_SHORT_OPTIONS:
        return argument[:2]
    return None


def read_scope(
    table: ConfigTable,
    databases: tuple[str, ...] | None,
    engine: str,
    supported: bool,
    extra_args: tuple[str, ...] = (),
) -> JobScope:
    """The scope keys of a [jobs.NAME] table and its [jobs.NAME.scope."<database>"] tables; problems
    go to the table with key path and line."""
    default = _read_table_scope(table, EVERYTHING)
    overrides: dict[str, TableScope] = {}
    scope_table = table.table("scope")
    if scope_table is not None:
        for database in scope_table.data:
            inner = scope_table.table(database)
            if inner is None:
                continue
            inner.reject_unknown(SCOPE_KEYS)
            if databases is not None and database not in databases:
                scope_table.add(database, "not one of the job's databases")
            overrides[database] = _read_table_scope(inner, default)
    scope = JobScope(default, MappingProxyType(overrides))
    if not scope.is_everything:
        for argument in extra_args:
            option = table_option(argument, engine)
            if option is not None:
                table.add(
                    "extra_args",
                    f'"{option}" chooses tables beside the table scope; say it with tables, exclude_tables '
                    "or schema_only_tables instead",
                )
    if not supported and (not scope.is_everything or scope_table is not None):
        key = next((key for key in (*SCOPE_KEYS, "scope") if table.has(key)), "scope")
        table.add(key, f"engine {engine} has no tables to choose from; table scope is not supported")
    return scope


def _read_table_scope(table: ConfigTable, inherited: TableScope) -> TableScope:
    tables = inherited.tables
    if table.has("tables"):
        listed = table.strings("tables")
        if listed == ():
            table.add("tables", "must not be an empty list (leave it out to dump every table)")
        elif listed is not None:
            tables = listed
    exclude = table.strings("exclude_tables")
    schema_only = table.strings("schema_only_tables")
    return TableScope(
        tables=tables,
        exclude_tables=inherited.exclude_tables if exclude is None else exclude,
        schema_only_tables=inherited.schema_only_tables if schema_only is None else schema_only,
    )
