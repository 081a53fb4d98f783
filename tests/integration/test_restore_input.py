"""`restore` refuses bad input before it touches anything: exit 2, one line naming the problem.

A target name the server could not hold, a template or system database (unless --force), and a
`--target-url` that does not parse. No server is needed: each is refused before connecting.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from agent_helpers import run_cli, write_config

JOBS = {
    "pg": {"engine": "postgresql", "host": "127.0.0.1", "port": 1, "user": "backup", "databases": ["app"]},
    "maria": {"engine": "mariadb", "host": "127.0.0.1", "port": 1, "user": "backup", "databases": ["app"]},
    "docs": {"engine": "mongodb", "uri": "mongodb://127.0.0.1:1", "databases": ["app"]},
}


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path, JOBS)


def refused(config: Path, capsys: pytest.CaptureFixture[str], job: str, *options: str) -> str:
    """The one error line of a restore that must exit 2."""
    code = run_cli(config, "restore", "--job", job, "--database", "app", *options)
    captured = capsys.readouterr()
    assert code == 2, captured
    assert "Traceback" not in captured.err
    [line] = captured.err.splitlines()
    return line


@pytest.mark.parametrize("job", sorted(JOBS))
def test_an_empty_target_name_is_refused(config: Path, capsys: pytest.CaptureFixture[str], job: str) -> None:
    assert refused(config, capsys, job, "--into", "").endswith("--into '': a database name cannot be empty")


@pytest.mark.parametrize(
    ("job", "name", "problem"),
    [
        ("pg", "a" * 64, "a PostgreSQL database name is at most 63 bytes (this one has 64)"),
        ("pg", "é" * 32, "a PostgreSQL database name is at most 63 bytes (this one has 64)"),
        ("pg", "nul\x00byte", "a database name cannot contain a NUL character"),
        ("maria", "a" * 65, "a MySQL/MariaDB database name is at most 64 characters (this one has 65)"),
        ("maria", "trailing ", "a MySQL/MariaDB database name cannot end with a space"),
        ("maria", "party🎉", "a MySQL/MariaDB database name cannot hold characters beyond U+FFFF (such as emoji)"),
        ("docs", "a" * 64, "a MongoDB database name is fewer than 64 bytes (this one has 64)"),
        ("docs", "my.app", "a MongoDB database name cannot contain '.'"),
        ("docs", "cash$ money", "a MongoDB database name cannot contain ' ' '$'"),
        ("docs", "a/b\\c", "a MongoDB database name cannot contain '/' '\\\\'"),
    ],
)
def test_a_name_the_server_could_not_hold_is_refused_with_its_rule(
    config: Path, capsys: pytest.CaptureFixture[str], job: str, name: str, problem: str
) -> None:
    assert refused(config, capsys, job, "--into", name).endswith(f"--into {name!r}: {problem}")


def test_the_longest_names_each_server_holds_pass_the_name_check(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for job, name in [("pg", "é" * 31 + "a"), ("maria", "ü" * 64), ("docs", "a" * 63)]:
        line = refused(config, capsys, job, "--into", name)  # no backup exists: the next check refuses
        assert "no good backup of 'app'" in line, line


@pytest.mark.parametrize(
    ("job", "name"),
    [
        ("pg", "template0"),
        ("pg", "template1"),
        ("pg", "postgres"),
        ("maria", "mysql"),
        ("maria", "sys"),
        ("maria", "information_schema"),
        ("maria", "PERFORMANCE_SCHEMA"),
        ("docs", "admin"),
        ("docs", "local"),
        ("docs", "config"),
    ],
)
def test_a_template_or_system_database_is_refused_unless_forced(
    config: Path, capsys: pytest.CaptureFixture[str], job: str, name: str
) -> None:
    line = refused(config, capsys, job, "--into", name)
    assert f"--into {name!r} is a template or system database" in line
    assert "pass --force" in line
    forced = refused(config, capsys, job, "--into", name, "--force")  # past that check: no backup here
    assert "no good backup of 'app'" in forced, forced


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("postgresql://backup:hunter2@db.example:99999", "--target-url: Port out of range 0-65535"),
        ("postgresql://backup:hunter2@[::1:5432", "--target-url: Invalid IPv6 URL"),
        (
            "postgresql://backup:hunter2@[fe80::zz]:5432",
            "--target-url: 'fe80::zz' does not appear to be an IPv4",
        ),
        ("postgresql://backup@db.example:port", "--target-url: Port could not be cast to integer value"),
        ("postgresql://backup@db.example:0", "--target-url: port 0 is not a port a server listens on"),
        ("postgresql://backup@:5432", "--target-url: no host"),
    ],
)
def test_a_target_url_that_does_not_parse_is_refused_without_echoing_it(
    config: Path, capsys: pytest.CaptureFixture[str], url: str, problem: str
) -> None:
    line = refused(config, capsys, "pg", "--into", "copy", "--target-url", url)
    assert problem in line
    assert "hunter2" not in line
