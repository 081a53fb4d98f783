"""PostgreSQL TLS settings reach the driver and every tool (pg_dump, pg_dumpall, pg_restore for
restores and drills), as libpq environment variables: paths and a mode, never a secret in argv.

The throwaway server has `ssl = on` with a self-signed certificate (tests/servers/postgres.py);
each tool is wrapped by a script that records its arguments and the PG* settings it was given.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from agent_helpers import events_named, password_file, run_cli, write_config
from servers.common import skip_or_fail
from servers.postgres import PostgresServer

TOOLS = ("pg_dump", "pg_dumpall", "pg_restore", "psql")
WRAPPER = """#!/bin/sh
{{ echo "tool $(basename "$0")"; env | grep -E '^PG(SSL|REQUIREAUTH)' | sort; printf 'arg %s\\n' "$@"; }} >> {record}
exec {bin_dir}/$(basename "$0") "$@"
"""


def wrapped_tools(folder: Path, bin_dir: str) -> tuple[Path, Path]:
    folder.mkdir()
    record = folder / "record"
    for name in TOOLS:
        script = folder / name
        script.write_text(WRAPPER.format(record=record, bin_dir=bin_dir))
        script.chmod(0o755)
    return folder / "pg_dump", record


def runs(record: Path) -> list[list[str]]:
    """Each tool run that connects (not `--version`): its name line, its PG* settings, its arguments."""
    found: list[list[str]] = []
    for line in record.read_text().splitlines():
        if line.startswith("tool "):
            found.append([])
        found[-1].append(line)
    return [run for run in found if run[1:] != ["arg --version"]]


def tls_job(server: PostgresServer, directory: Path, database: str, **extra: object) -> dict[str, object]:
    if server.tls_ca is None:
        skip_or_fail("openssl is needed to give the test PostgreSQL a certificate")
    return {
        "engine": "postgresql",
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "password_file": str(password_file(directory, server.password)),
        "databases": [database],
        "sslmode": "verify-ca",
        "sslrootcert": server.tls_ca,
        **extra,
    }


def test_tls_settings_reach_pg_dump_pg_dumpall_restore_and_drill_with_no_secret_in_argv(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path
) -> None:
    pg_server.psql(pg_database, "CREATE TABLE t (n int); INSERT INTO t SELECT generate_series(1, 50);")
    tool, record = wrapped_tools(tmp_path / "bin", pg_server.bin_dir)
    config = write_config(tmp_path, {"main": tls_job(pg_server, tmp_path, pg_database, tool=str(tool))})

    assert run_cli(config, "backup") == 0
    assert run_cli(config, "drill", "--job", "main") == 0
    assert run_cli(config, "restore", "--job", "main", "--database", pg_database, "--into", f"{pg_database}_copy") == 0

    tools = [run[0].removeprefix("tool ") for run in runs(record)]
    assert {"pg_dump", "pg_dumpall", "pg_restore"} <= set(tools) and tools.count("pg_restore") >= 2
    for run in runs(record):
        assert "PGSSLMODE=verify-ca" in run and f"PGSSLROOTCERT={pg_server.tls_ca}" in run
        assert not any(line.startswith("PGREQUIREAUTH") for line in run)  # verified TLS: clear text may go
    assert pg_server.password not in record.read_text()
    rows = pg_server.psql(f"{pg_database}_copy", "SELECT count(*) FROM t")
    assert "50" in rows


def test_without_verified_tls_every_tool_is_told_to_refuse_clear_text(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path
) -> None:
    tool, record = wrapped_tools(tmp_path / "bin", pg_server.bin_dir)
    job = tls_job(pg_server, tmp_path, pg_database, tool=str(tool), sslmode="require")
    config = write_config(tmp_path, {"main": job})

    assert run_cli(config, "backup") == 0

    for run in runs(record):
        assert "PGSSLMODE=require" in run and "PGREQUIREAUTH=!password" in run


def test_a_server_the_configured_ca_did_not_sign_is_refused(
    pg_server: PostgresServer, pg_database: str, tmp_path: Path
) -> None:
    other_ca = tmp_path / "other-ca.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=elsewhere",
         "-keyout", str(tmp_path / "other.key"), "-out", str(other_ca)],
        check=True, capture_output=True,
    )  # fmt: skip
    config = write_config(tmp_path, {"main": tls_job(pg_server, tmp_path, pg_database, sslrootcert=str(other_ca))})

    assert run_cli(config, "backup") == 1

    [failure] = events_named(tmp_path, "backup.failed")
    assert "certificate verify failed" in str(failure["error"])


@pytest.mark.parametrize("key", ["sslcert", "sslkey"])
def test_a_client_certificate_needs_its_key_and_the_reverse(tmp_path: Path, key: str) -> None:
    job = {"engine": "postgresql", "host": "db.example", "databases": ["app"], key: "/etc/backup-agent/client.pem"}
    config = write_config(tmp_path, {"main": job})

    assert run_cli(config, "check-config", "--offline") == 78
