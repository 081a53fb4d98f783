"""The MySQL engine's pure pieces: tool/server versions, option-file quoting, the stream rewriters.

No server needed; the behaviour against a real server is in test_mysql.py.
"""

from __future__ import annotations

import pytest

from agent.engines.mysql.engine import TRAILER, MysqlEngine
from agent.engines.mysql.grants import parse_grants, privilege_gaps
from agent.engines.mysql.option_file import option_file_text
from agent.engines.mysql.sql_stream import AlterDatabaseRewriter, keep_own_password, strip_definers
from agent.engines.mysql.versions import (
    MARIADB,
    MYSQL,
    Version,
    compatibility_problem,
    parse_server_version,
    parse_tool_version,
    supports_system_users,
)
from agent.errors import VerificationError
from agent.secrets import Secret


@pytest.mark.parametrize(
    ("output", "vendor", "numbers"),
    [
        ("mariadb-dump  Ver 10.19 Distrib 10.11.19-MariaDB, for debian-linux-gnu (x86_64)", MARIADB, (10, 11, 19)),
        ("mysqldump  Ver 10.17 Distrib 10.4.32-MariaDB, for Linux (x86_64)", MARIADB, (10, 4, 32)),
        ("mariadb-dump from 11.4.2-MariaDB, client 10.19 for debian-linux-gnu (x86_64)", MARIADB, (11, 4, 2)),
        ("mysqldump  Ver 8.0.36 for Linux on x86_64 (MySQL Community Server - GPL)", MYSQL, (8, 0, 36)),
        ("mysqldump  Ver 8.4.0 for Linux on x86_64 (MySQL Community Server - GPL)", MYSQL, (8, 4, 0)),
        ("mysqldump  Ver 10.13 Distrib 5.7.44, for Linux (x86_64)", MYSQL, (5, 7, 44)),
        ("mysqldump  Ver 8.0.35-27 for Linux on x86_64 (Percona Server (GPL), Release '27')", MYSQL, (8, 0, 35)),
    ],
)
def test_tool_versions_of_every_known_shape_are_read(output: str, vendor: str, numbers: tuple[int, int, int]) -> None:
    version = parse_tool_version(output + "\n")
    assert version is not None
    assert (version.vendor, version.numbers) == (vendor, numbers)


def test_an_unrecognisable_version_line_is_not_guessed() -> None:
    assert parse_tool_version("dumper 3") is None


def test_server_versions_name_their_vendor() -> None:
    assert parse_server_version("10.11.19-MariaDB-0+deb12u1").family == (10, 11)
    assert parse_server_version("10.11.19-MariaDB-0+deb12u1").vendor == MARIADB
    assert parse_server_version("8.0.36").vendor == MYSQL
    assert parse_server_version("8.0.35-27").numbers == (8, 0, 35)


def _version(vendor: str, numbers: tuple[int, int, int]) -> Version:
    return Version(vendor, numbers, "")


@pytest.mark.parametrize(
    ("tool", "server", "refused"),
    [
        (_version(MARIADB, (10, 11, 2)), _version(MARIADB, (10, 11, 19)), False),  # same series, older patch
        (_version(MARIADB, (11, 4, 2)), _version(MARIADB, (10, 11, 19)), False),  # newer tool
        (_version(MARIADB, (10, 6, 18)), _version(MARIADB, (10, 11, 19)), True),  # older series
        (_version(MARIADB, (10, 11, 9)), _version(MARIADB, (11, 4, 2)), True),
        (_version(MYSQL, (8, 0, 36)), _version(MYSQL, (8, 4, 0)), True),
        (_version(MYSQL, (8, 4, 0)), _version(MYSQL, (8, 0, 36)), False),
        (_version(MYSQL, (8, 0, 36)), _version(MARIADB, (10, 11, 19)), True),  # vendors never mix
        (_version(MARIADB, (11, 4, 2)), _version(MYSQL, (8, 0, 36)), True),
    ],
)
def test_a_tool_is_refused_for_an_older_series_or_another_vendor(tool: Version, server: Version, refused: bool) -> None:
    problem = compatibility_problem("mariadb-dump", tool, server)
    assert (problem is not None) == refused
    if problem is not None:
        assert "install" in problem


def test_system_users_dumps_need_a_recent_enough_mariadb_tool() -> None:
    assert supports_system_users(_version(MARIADB, (10, 11, 19)))
    assert supports_system_users(_version(MARIADB, (10, 5, 9)))
    assert not supports_system_users(_version(MARIADB, (10, 5, 8)))
    assert not supports_system_users(_version(MARIADB, (10, 1, 48)))
    assert not supports_system_users(_version(MYSQL, (8, 0, 36)))


def test_option_file_values_are_quoted_and_escaped() -> None:
    text = option_file_text("odd user", Secret('a#b "c" \\d\ne'))
    assert text == '[client]\nuser="odd user"\npassword="a#b \\"c\\" \\\\d\\ne"\n'
    assert option_file_text(None, None) == "[client]\n"


def _rewrite(database: str, chunks: list[bytes]) -> tuple[bytes, int]:
    out: list[bytes] = []
    rewriter = AlterDatabaseRewriter(database, out.append)
    for chunk in chunks:
        rewriter.feed(chunk)
    rewriter.flush()
    return b"".join(out), rewriter.rewritten


def test_alter_database_lines_lose_the_source_name_even_across_chunk_boundaries() -> None:
    dump = (
        b"-- header\nALTER DATABASE `we``ird` CHARACTER SET latin1 COLLATE latin1_swedish_ci ;\n"
        b"INSERT INTO `t` VALUES ('ALTER DATABASE `we``ird` CHARACTER SET x');\n"
        b"ALTER DATABASE `we``ird` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci ;\n-- Dump completed\n"
    )
    expected = dump.replace(b"\nALTER DATABASE `we``ird` CHARACTER SET", b"\nALTER DATABASE CHARACTER SET")
    for size in (1, 2, 7, 30, len(dump)):
        chunks = [dump[index : index + size] for index in range(0, len(dump), size)]
        assert _rewrite("we`ird", chunks) == (expected, 2)
    assert _rewrite("other", [dump]) == (dump, 0)


def test_definers_are_stripped_from_ddl_lines_but_never_from_data() -> None:
    lines = [
        b"/*!50013 DEFINER=`root`@`localhost` SQL SECURITY DEFINER */\n",
        b"CREATE DEFINER=`odd``name`@`%` PROCEDURE `p`()\n",
        b"/*!50003 CREATE*/ /*!50017 DEFINER=`admin`@`10.0.0.%`*/ /*!50003 TRIGGER t\n",
        b"CREATE DEFINER=`some_role` FUNCTION `f`()\n",
        b"INSERT INTO `t` VALUES ('DEFINER=`root`@`localhost`');\n",
    ]
    assert list(strip_definers(lines)) == [
        b"/*!50013 SQL SECURITY DEFINER */\n",
        b"CREATE PROCEDURE `p`()\n",
        b"/*!50003 CREATE*/ /*!50017*/ /*!50003 TRIGGER t\n",
        b"CREATE FUNCTION `f`()\n",
        lines[4],
    ]


def test_restoring_grants_keeps_the_agents_own_password() -> None:
    lines = [
        b"GRANT ALL PRIVILEGES ON *.* TO `backup`@`%` IDENTIFIED BY PASSWORD '*AAA' WITH GRANT OPTION;\n",
        b"GRANT USAGE ON *.* TO `app`@`%` IDENTIFIED BY PASSWORD '*BBB';\n",
        b"CREATE USER IF NOT EXISTS `backup`@`%` IDENTIFIED BY PASSWORD '*AAA';\n",
    ]
    assert list(keep_own_password(lines, "backup")) == [
        b"GRANT ALL PRIVILEGES ON *.* TO `backup`@`%` WITH GRANT OPTION;\n",
        lines[1],
        lines[2],
    ]


def test_the_check_wants_the_completion_line_among_the_last_lines() -> None:
    check = MysqlEngine.new_check("mysql-sql")
    check.feed(b"-- MariaDB dump\nCREATE TABLE t (a int);\n" + TRAILER + b" on 2026-01-01\n\n/*M! trailing */\n")
    check.finish()
    truncated = MysqlEngine.new_check("mysql-sql")
    truncated.feed(b"-- MariaDB dump\nINSERT INTO t VALUES (1),(2")
    with pytest.raises(VerificationError, match="truncated"):
        truncated.finish()
    with pytest.raises(VerificationError, match="unknown"):
        MysqlEngine.new_check("postgresql-custom")


def _gaps(lines: list[str], database: str = "shop_1") -> list[str]:
    return privilege_gaps(parse_grants(lines), database)


def test_an_account_that_sees_every_trigger_and_routine_has_no_privilege_gaps() -> None:
    assert _gaps(["GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` WITH GRANT OPTION"]) == []
    assert _gaps(["GRANT SELECT, SHOW VIEW, TRIGGER, EVENT, LOCK TABLES ON *.* TO `backup`@`%`"]) == []
    assert (
        _gaps(
            [
                "GRANT USAGE ON *.* TO `b`@`%`",
                "GRANT SELECT ON `mysql`.`proc` TO `b`@`%`",
                "GRANT SELECT, TRIGGER ON `shop\\_%`.* TO `b`@`%`",  # a LIKE pattern with an escaped underscore
            ]
        )
        == []
    )
    assert _gaps(["GRANT SELECT, SHOW_ROUTINE ON *.* TO `b`@`%`", "GRANT TRIGGER ON `shop_1`.* TO `b`@`%`"]) == []


def test_missing_trigger_or_routine_privileges_are_named() -> None:
    only_database = ["GRANT SELECT, SHOW VIEW, EVENT ON `shop_1`.* TO `b`@`%`"]
    assert [gap.split()[1] for gap in _gaps(only_database)] == ["TRIGGER", "SELECT,"]
    assert len(_gaps(["GRANT SELECT, TRIGGER ON `shop\\_%`.* TO `b`@`%`"], "shopx1")) == 2  # `\_` is literal
    assert len(_gaps(["GRANT SELECT, TRIGGER ON `other`.* TO `b`@`%`"])) == 2
    assert _gaps(["GRANT `reader` TO `b`@`%`"]) != []  # a role's privileges come from its own lines
