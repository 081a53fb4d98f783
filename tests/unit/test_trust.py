"""agent/trust.py: who else could have changed a path, and who holds a loopback port (pure decisions)."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest

from agent import trust
from agent.trust import Entry, Listener, Trusted

AGENT = 990
SERVER = 991
STRANGER = 65534
TRUSTED = Trusted(frozenset({0, AGENT, SERVER}), frozenset({0, AGENT, SERVER}), ("postgres",))

# /proc/net/tcp and tcp6 as Linux writes them: 127.0.0.1:5432 by 991, 0.0.0.0:3306 by 65534,
# [::1]:6379 by 991, [::]:27017 by 65534, [::ffff:127.0.0.1]:8080 by 65534, one connection (state 01)
PROC_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   991        0 1 1 0 100 0 0 10 0
   1: 00000000:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000 65534        0 2 1 0 100 0 0 10 0
   2: 0100007F:1538 0100007F:D3B2 01 00000000:00000000 00:00000000 00000000 65534        0 3 1 0 100 0 0 10 0
"""
PROC_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:18EB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000   991        0 4 1 0 100 0 0 10 0
   1: 00000000000000000000000000000000:6989 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000 65534        0 5 1 0 100 0 0 10 0
   2: 0000000000000000FFFF00000100007F:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000 65534        0 6 1 0 100 0 0 10 0
"""  # noqa: E501  # the kernel's own line width
LOOPBACK_4 = [ipaddress.ip_address("127.0.0.1")]
LOOPBACK_BOTH = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]


def folder(mode: int, uid: int = 0, gid: int = 0, path: str = "/srv/f") -> Entry:
    return Entry(path, uid, gid, stat.S_IFDIR | mode)


def listeners() -> list[Listener]:
    return trust.parse_listeners(PROC_TCP) + trust.parse_listeners(PROC_TCP6)


def test_proc_net_tcp_gives_each_listening_socket_with_its_address_port_and_owner() -> None:
    found = {(str(item.address), item.port, item.uid) for item in listeners()}

    assert found == {
        ("127.0.0.1", 5432, 991),
        ("0.0.0.0", 3306, 65534),
        ("::1", 6379, 991),
        ("::", 27017, 65534),
        ("::ffff:7f00:1", 8080, 65534),
    }


def test_a_port_held_by_the_servers_account_passes() -> None:
    assert trust.port_problem(listeners(), LOOPBACK_4, 5432, TRUSTED, "localhost:5432") is None
    assert trust.port_problem(listeners(), LOOPBACK_BOTH, 6379, TRUSTED, "localhost:6379") is None


@pytest.mark.parametrize(
    ("port", "addresses"),
    [(3306, LOOPBACK_4), (27017, LOOPBACK_BOTH), (27017, LOOPBACK_4), (8080, LOOPBACK_4)],
    ids=["wildcard-v4", "wildcard-v6", "v6-wildcard-takes-v4", "v4-mapped"],
)
def test_a_port_another_user_holds_is_refused_naming_the_owner(port: int, addresses: list[object]) -> None:
    problem = trust.port_problem(listeners(), addresses, port, TRUSTED, f"localhost:{port}")  # type: ignore[arg-type]

    assert problem is not None and not problem.down
    assert f"localhost:{port} is held by" in problem.message and "not the server's" in problem.message


def test_a_port_nobody_listens_on_is_named_as_such() -> None:
    problem = trust.port_problem(listeners(), LOOPBACK_4, 6000, TRUSTED, "localhost:6000")

    assert problem is not None and problem.down and "nothing listens on localhost:6000" in problem.message


def test_an_established_connection_is_not_a_listener() -> None:
    assert all(item.uid != STRANGER or item.port != 5432 for item in listeners())


@pytest.mark.parametrize(
    ("entry", "strict", "expected"),
    [
        (folder(0o755), True, None),
        (folder(0o777), False, "writable by others"),
        (folder(0o1777), False, None),  # root's sticky /tmp
        (folder(0o1777, uid=STRANGER), False, "writable by others"),  # sticky, but not root's
        (folder(0o755, uid=STRANGER), False, None),  # the storage rule looks only at write bits
        (folder(0o755, uid=STRANGER), True, "belongs to"),
        (folder(0o775, gid=4242), True, "writable by group"),
        (folder(0o775, uid=SERVER, gid=SERVER), True, None),  # /run/postgresql: 2775 postgres:postgres
    ],
    ids=["root-0755", "0777", "root-sticky", "sticky-not-root", "other-owner-lax", "other-owner-strict",
         "group-stranger", "server-group"],
)  # fmt: skip
def test_who_may_change_a_folder(entry: Entry, strict: bool, expected: str | None) -> None:
    problem = trust.folder_problem(entry, TRUSTED, strict=strict)

    assert (problem is None) if expected is None else (problem is not None and expected in problem)


def test_in_a_folder_anyone_may_add_to_only_a_trusted_accounts_entry_counts() -> None:
    tmp = folder(0o1777, path="/tmp")
    planted = trust.Step(Entry("/tmp/mysql.sock", STRANGER, STRANGER, stat.S_IFSOCK | 0o777), tmp)
    own = trust.Step(Entry("/tmp/agent", AGENT, AGENT, stat.S_IFDIR | 0o700), tmp)

    assert "may be planted" in (trust.entry_problem(planted, TRUSTED) or "")
    assert trust.entry_problem(own, TRUSTED) is None


def test_a_socket_straight_in_tmp_is_never_the_servers_even_when_the_server_made_it() -> None:
    root = Entry("/", 0, 0, stat.S_IFDIR | 0o755)
    tmp = folder(0o1777, path="/tmp")
    walk = trust.Walk(
        (trust.Step(root, None), trust.Step(tmp, root)),
        trust.Step(Entry("/tmp/mysql.sock", SERVER, SERVER, stat.S_IFSOCK | 0o777), tmp),
    )

    assert "where anyone may create names" in (trust.socket_problem(walk, TRUSTED) or "")


def test_a_password_file_others_may_read_is_refused_and_0640_is_fine() -> None:
    def secret(mode: int) -> Entry:
        return Entry("/etc/backup-agent/db.password", 0, AGENT, stat.S_IFREG | mode)

    assert "readable by others" in (trust.secret_file_problem(secret(0o644)) or "")
    assert trust.secret_file_problem(secret(0o640)) is None
    assert trust.secret_file_problem(secret(0o600)) is None


def test_the_walk_follows_a_link_and_sees_the_folders_on_both_sides(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "file").write_text("x")
    (tmp_path / "link").symlink_to("real")

    found = trust.walk(tmp_path / "link" / "file", follow_final=True)

    paths = [step.entry.path for step in found.steps]
    assert str(tmp_path / "link") in paths and str(tmp_path / "real") in paths
    assert found.final is not None and found.final.entry.path == str(tmp_path / "real" / "file")


def test_a_program_another_user_could_replace_is_refused(tmp_path: Path) -> None:
    program = tmp_path / "hook"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    assert trust.check_program(program) is None

    program.chmod(0o757)
    assert "writable by others" in (trust.check_program(program) or "")
