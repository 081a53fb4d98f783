"""doctor's buffer-pool rules (pure): which settings let a dump evict the hot pages, and which grants
allow protect_buffer_pool's SET GLOBAL on MariaDB and on MySQL."""

from __future__ import annotations

from agent.engines.mysql.buffer_pool import may_set_globals, required_privilege, settings_findings
from agent.engines.mysql.grants import parse_grants
from agent.engines.mysql.versions import MARIADB, MYSQL


def test_old_blocks_time_0_is_a_warning_naming_the_fix() -> None:
    (finding,) = settings_findings(0, 37)
    assert finding.ok and finding.warning
    assert "innodb_old_blocks_time = 0" in finding.message and "= 1000" in finding.message


def test_an_old_sublist_over_half_the_pool_is_a_warning() -> None:
    (finding,) = settings_findings(1000, 80)
    assert finding.warning and "innodb_old_blocks_pct = 80" in finding.message


def test_the_defaults_are_fine() -> None:
    (finding,) = settings_findings(1000, 37)
    assert finding.ok and not finding.warning


def test_only_a_global_super_or_all_may_save_the_pool_on_mariadb() -> None:
    dump_only = parse_grants(["GRANT SELECT, SHOW VIEW, TRIGGER, EVENT, LOCK TABLES ON *.* TO `b`@`%`"])
    finer = parse_grants(["GRANT BINLOG ADMIN, CONNECTION ADMIN, READ_ONLY ADMIN, RELOAD ON *.* TO `b`@`%`"])
    on_one_database = parse_grants(["GRANT ALL PRIVILEGES ON `shop`.* TO `b`@`%`"])
    assert not may_set_globals(dump_only, MARIADB)
    assert not may_set_globals(finer, MARIADB)
    assert not may_set_globals(on_one_database, MARIADB)
    assert may_set_globals(parse_grants(["GRANT SELECT, SUPER ON *.* TO `b`@`%`"]), MARIADB)
    assert may_set_globals(parse_grants(["GRANT ALL PRIVILEGES ON *.* TO `b`@`%`"]), MARIADB)
    assert required_privilege(MARIADB) == "SUPER"


def test_mysql_also_accepts_system_variables_admin() -> None:
    grants = parse_grants(["GRANT SELECT ON *.* TO `b`@`%`", "GRANT SYSTEM_VARIABLES_ADMIN ON *.* TO `b`@`%`"])
    assert may_set_globals(grants, MYSQL)
    assert not may_set_globals(grants, MARIADB)
    assert "SYSTEM_VARIABLES_ADMIN" in required_privilege(MYSQL)
