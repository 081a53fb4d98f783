"""Which built-in MongoDB roles let a restore (or a drill) write into one database."""

from __future__ import annotations

import pytest

from agent.engines.mongo.privileges import missing_restore_roles


@pytest.mark.parametrize(
    ("roles", "missing"),
    [
        ([("readWrite", "shop_copy"), ("dbAdmin", "shop_copy")], []),
        ([("readWriteAnyDatabase", "admin"), ("dbAdminAnyDatabase", "admin")], []),
        ([("dbOwner", "shop_copy")], []),
        ([("root", "admin")], []),
        ([("readWrite", "shop_copy")], ["dbAdmin"]),
        ([("readWrite", "shop"), ("dbAdmin", "shop")], ["readWrite", "dbAdmin"]),  # another database's roles
        ([("dbOwner", "shop")], ["readWrite", "dbAdmin"]),
        ([("backup", "admin")], ["readWrite", "dbAdmin"]),  # the backup role only reads
        ([("readWriteAnyDatabase", "shop_copy")], ["readWrite", "dbAdmin"]),  # any-database roles live in admin
    ],
)
def test_the_roles_a_restore_into_shop_copy_lacks(roles: list[tuple[str, str]], missing: list[str]) -> None:
    assert missing_restore_roles(roles, "shop_copy") == missing


def test_a_custom_role_is_not_guessed_at() -> None:
    assert missing_restore_roles([("appRestorer", "admin")], "shop_copy") is None
