"""The one reading of SHOW GRANTS: what doctor reports and what the dump warns about must agree."""

from __future__ import annotations

import pytest

from agent.engines.mysql.grants import (
    DUMP_PRIVILEGES,
    ROUTINES,
    granted_roles,
    missing_privileges,
    parse_grants,
    pattern_matches,
    privilege_gaps,
)

DUMPER = "SELECT, SHOW VIEW, TRIGGER, LOCK TABLES, EVENT"
PROC = "GRANT SELECT ON `mysql`.`proc` TO `b`@`%`"
TRIGGER_GAP = "the TRIGGER privilege on it (triggers)"


@pytest.mark.parametrize(
    ("scope", "database", "covered"),
    [
        ("`app\\_%`.*", "app_one", True),  # the case doctor and the engine once disagreed on
        ("`app\\_%`.*", "appxone", False),  # `\_` is a literal underscore
        ("`app_%`.*", "appxone", True),  # an unescaped `_` is any one character
        ("`app_%`.*", "app", False),
        ("`app%`.*", "app", True),
        ("`app\\%`.*", "app%", True),  # `\%` is a literal percent sign
        ("`app\\%`.*", "app1", False),
        ("`shop_1`.*", "shop_1", True),
        ("`shop\\_1`.*", "shopx1", False),
        ("`my shop`.*", "my shop", True),  # names with spaces are one scope
        ("`we``ird`.*", "we`ird", True),  # doubled backticks are one backtick
        ("`shop`.`orders`", "shop", False),  # a table grant does not cover the database
        ("*.*", "anything", True),
    ],
)
def test_doctor_and_the_dump_agree_on_which_databases_a_grant_covers(scope: str, database: str, covered: bool) -> None:
    grants = parse_grants([f"GRANT {DUMPER} ON {scope} TO `b`@`%`", PROC])

    doctor_missing = [name for name in missing_privileges(grants, database) if name in DUMP_PRIVILEGES]
    dump_gaps = privilege_gaps(grants, database)

    assert (doctor_missing == []) is covered
    assert (TRIGGER_GAP not in dump_gaps) is covered
    assert ("TRIGGER" in doctor_missing) == (TRIGGER_GAP in dump_gaps)


def test_all_privileges_on_an_escaped_pattern_covers_the_databases_it_names_and_only_those() -> None:
    grants = parse_grants(["GRANT ALL PRIVILEGES ON `app\\_%`.* TO `b`@`%`", PROC])
    assert missing_privileges(grants, "app_one") == []
    assert privilege_gaps(grants, "app_one") == []
    assert missing_privileges(grants, "appxone") == [*DUMP_PRIVILEGES]
    assert privilege_gaps(grants, "appxone") == [TRIGGER_GAP]


def test_wildcards_follow_the_manual_for_like_patterns() -> None:
    assert pattern_matches("a_c", "abc") and not pattern_matches("a_c", "abbc")
    assert pattern_matches("a%", "a") and pattern_matches("a%", "a.b-c")
    assert pattern_matches("a\\_c", "a_c") and not pattern_matches("a\\_c", "abc")
    assert pattern_matches("a.c", "a.c") and not pattern_matches("a.c", "abc")  # no regex leaks through


def test_routines_need_a_global_read_or_mysql_proc_not_a_database_level_all() -> None:
    database_all = parse_grants(["GRANT ALL PRIVILEGES ON `shop`.* TO `b`@`%`"])
    assert missing_privileges(database_all, "shop") == [ROUTINES]
    assert missing_privileges(parse_grants(["GRANT SELECT ON `mysql`.* TO `b`@`%`"]), "shop")[-1] != ROUTINES
    shown = parse_grants([f"GRANT {DUMPER}, SHOW CREATE ROUTINE ON `shop`.* TO `b`@`%`"])  # MariaDB 11.3+
    assert missing_privileges(shown, "shop") == []


def test_column_grants_and_role_grants_are_read_without_confusing_the_lists() -> None:
    grants = parse_grants(["GRANT SELECT (`a`, `b`), INSERT ON `shop`.`t` TO `b`@`%`"])
    assert [sorted(grant.privileges) for grant in grants] == [["INSERT", "SELECT"]]
    assert granted_roles(["GRANT `reader` TO `b`@`%`", "GRANT `admin`@`%` TO `b`@`%`"]) == ["`reader`", "`admin`@`%`"]
    assert parse_grants(["GRANT `reader` TO `b`@`%`", "GRANT PROXY ON ''@'%' TO `b`@`%`"]) == []


def test_mysql_grants_are_read_per_database() -> None:
    everything = parse_grants(["GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` WITH GRANT OPTION"])
    assert missing_privileges(everything, "shop") == []
    partial = parse_grants(
        [
            "GRANT USAGE ON *.* TO `backup`@`%`",
            "GRANT SELECT, SHOW VIEW, LOCK TABLES ON `shop`.* TO `backup`@`%`",
        ]
    )
    missing = missing_privileges(partial, "shop")
    assert missing[:2] == ["TRIGGER", "EVENT"] and missing[2].startswith("routines")
    assert "SELECT" in missing_privileges(partial, "other")
    dumper = parse_grants(["GRANT SELECT, SHOW VIEW, TRIGGER, LOCK TABLES, EVENT ON *.* TO `backup`@`%`"])
    assert missing_privileges(dumper, "any") == []
