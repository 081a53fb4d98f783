"""The Redis engine through the CLI against a throwaway redis-server: backup, restore, drill, doctor.

Every value type in several logical databases goes out as one RDB per run and comes back with the
same keys, values and TTLs; the failures a user meets (a wrong password, a server stopping
mid-snapshot, a user without SYNC) end as one clear line and leave no file behind.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from agent_helpers import (
    data_files,
    decompressed,
    events_named,
    password_file,
    run_cli,
    stored_files,
    watching_processes,
    write_config,
)
from servers.common import ServerProcess, free_port, require_binaries, wait_until
from servers.redis import RedisServer, fill_every_type

from agent.config import load_config
from agent.errors import ConfigError
from agent.manifest import manifest_path, read_manifest
from agent.restore import choose_backup, decompressed_chunks, engine_for

pytestmark = pytest.mark.redis


def redis_job(server: RedisServer, directory: Path, **extra: Any) -> dict[str, Any]:
    return {
        "engine": "redis",
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "password_file": str(password_file(directory, server.password)),
        "databases": "*",
        **extra,
    }


def contents(client: redis.Redis) -> dict[bytes, Any]:
    """Every key of one logical database with its type, value and whether it expires."""
    found: dict[bytes, Any] = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"string":
            value: Any = client.get(key)
        elif kind == b"list":
            value = client.lrange(key, 0, -1)
        elif kind == b"set":
            value = sorted(client.smembers(key))
        elif kind == b"zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == b"hash":
            value = client.hgetall(key)
        else:
            groups = [(item["name"], item["pending"], item["last-delivered-id"]) for item in client.xinfo_groups(key)]
            value = (client.xrange(key), groups)
        found[key] = (kind, value, client.pttl(key) > 0)
    return found


def everything(server_client: Any, databases: tuple[int, ...] = (0, 3, 15)) -> dict[int, dict[bytes, Any]]:
    return {number: contents(server_client(number)) for number in databases}


@pytest.fixture
def filled(redis_empty: RedisServer) -> Iterator[tuple[RedisServer, dict[str, int]]]:
    yield redis_empty, fill_every_type(redis_empty)


@pytest.fixture
def second_server(tmp_path: Path) -> Iterator[Any]:
    """Start a plain redis-server on a given RDB file; returns a function(file) -> client(db)."""
    binaries = require_binaries(["redis-server"], hint="install redis-server")
    started: list[ServerProcess] = []

    def start(snapshot: Path) -> Any:
        port = free_port()
        process = ServerProcess(
            [
                binaries["redis-server"], "--port", str(port), "--bind", "127.0.0.1", "--dir", str(snapshot.parent),
                "--dbfilename", snapshot.name, "--save", "", "--appendonly", "no",
            ],
            log_path=tmp_path / "second.log",
            run_as=None,
            cwd=snapshot.parent,
        )  # fmt: skip
        process.start()
        started.append(process)
        wait_until(lambda: bool(redis.Redis(port=port).ping()), what="second Redis", process=process)
        return lambda number: redis.Redis(port=port, db=number)

    yield start
    for process in started:
        process.stop()


def test_a_backup_is_one_checked_rdb_per_server_with_key_counts_per_database(
    filled: tuple[RedisServer, dict[str, int]], tmp_path: Path
) -> None:
    server, counts = filled
    config = write_config(tmp_path, {"cache": redis_job(server, tmp_path)})
    assert run_cli(config, "backup") == 0
    [dump] = data_files(tmp_path / "storage")
    assert dump.name.endswith(".rdb.zst")
    assert dump.parent.name == "all"
    assert oct(dump.stat().st_mode & 0o777) == "0o440"
    manifest = read_manifest(manifest_path(dump))
    assert manifest.counts == counts
    assert manifest.counts_consistent
    assert manifest.server_version == "Redis " + str(server.client().info("server")["redis_version"])
    assert manifest.details["rdb_version"] == 10
    assert manifest.details["checksum"] == "verified"
    assert manifest.details["expires"] == {"db0": 2, "db3": 1, "db15": 0}
    assert manifest.details["info_keyspace"]["db3"] == {"keys": 201, "expires": 1}
    assert manifest.predicted_bytes is not None and manifest.predicted_bytes > 0  # from INFO used_memory_dataset
    assert decompressed(dump)[:9] == b"REDIS0010"
    assert run_cli(config, "verify") == 0


def test_restore_to_file_gives_a_plain_dump_rdb_that_loads_with_every_value_and_ttl(
    filled: tuple[RedisServer, dict[str, int]], tmp_path: Path, second_server: Any
) -> None:
    server, _ = filled
    original = everything(server.client)
    config = write_config(tmp_path, {"cache": redis_job(server, tmp_path)})
    assert run_cli(config, "backup") == 0
    restored_folder = tmp_path / "restored"
    restored_folder.mkdir()
    target = restored_folder / "dump.rdb"
    assert run_cli(config, "restore", "--job", "cache", "--database", "all", "--to-file", str(target)) == 0
    checker = require_binaries(["redis-check-rdb"], hint="install redis-tools")["redis-check-rdb"]
    report = subprocess.run([checker, str(target)], capture_output=True, text=True, check=False, timeout=60)
    assert "RDB looks OK" in report.stdout
    assert everything(second_server(target)) == original


def test_a_drill_loads_the_snapshot_into_a_throwaway_server_and_compares_every_database(
    filled: tuple[RedisServer, dict[str, int]], tmp_path: Path
) -> None:
    server, counts = filled
    config = write_config(tmp_path, {"cache": redis_job(server, tmp_path)})
    assert run_cli(config, "backup") == 0
    with watching_processes(b"redis-server", server.password.encode()) as seen:
        assert run_cli(config, "drill", "--job", "cache") == 0
    [passed] = events_named(tmp_path, "drill.passed")
    assert passed["tables"] == len(counts)
    assert seen.tool_argvs, "the drill started a redis-server"
    assert all(b"--port" not in argv and b"requirepass" not in b" ".join(argv) for argv in seen.tool_argvs)
    assert not seen.leaks
    scratch = tmp_path / "storage" / ".agent"
    assert not [path for path in scratch.rglob("*") if path.is_file() and path.suffix in (".rdb", ".sock")]
    assert not _processes_working_in(tmp_path), "the drill's redis-server is stopped"


def _processes_working_in(folder: Path) -> list[str]:
    """Processes (other than zombies) whose working folder is under `folder`: a drill server works in its."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            working = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if working.startswith(str(folder)) and state != "Z":
            found.append(entry.name)
    return found


def test_no_child_ever_sees_the_password_during_backup_and_drill(
    filled: tuple[RedisServer, dict[str, int]], tmp_path: Path
) -> None:
    server, _ = filled
    config = write_config(tmp_path, {"cache": redis_job(server, tmp_path)})
    with watching_processes(b"redis", server.password.encode()) as seen:
        assert run_cli(config, "backup") == 0
        assert run_cli(config, "drill", "--job", "cache") == 0
        assert run_cli(config, "doctor") == 0
    assert not seen.leaks
    log = (tmp_path / "agent.log").read_text()
    assert server.password not in log


def test_a_wrong_password_fails_the_run_in_one_line_and_leaves_no_file(
    filled: tuple[RedisServer, dict[str, int]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, _ = filled
    job = redis_job(server, tmp_path)
    job["password_file"] = str(password_file(tmp_path, "wrong-" + server.password))
    config = write_config(tmp_path, {"cache": job})
    assert run_cli(config, "backup") != 0
    output = capsys.readouterr()
    assert "WRONGPASS" in output.out + output.err
    assert "Traceback" not in output.out + output.err
    assert server.password not in output.out + output.err + (tmp_path / "agent.log").read_text()
    assert data_files(tmp_path / "storage") == []


def test_a_server_stopping_mid_snapshot_fails_the_run_and_removes_the_partial(
    redis_empty: RedisServer, tmp_path: Path
) -> None:
    client = redis_empty.client()
    client.config_set("rdbcompression", "no")
    client.execute_command("DEBUG", "POPULATE", 150_000, "big", 1000)
    config = write_config(tmp_path, {"cache": redis_job(redis_empty, tmp_path)})
    partial_seen = threading.Event()

    def stop_once_writing() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            partials = [path for path in (tmp_path / "storage").rglob("*.partial") if path.name.count(".") > 2]
            if any(path.stat().st_size > 0 for path in partials if path.exists()):  # data is flowing
                partial_seen.set()
                redis_empty.kill()
                return
            time.sleep(0.005)

    stopper = threading.Thread(target=stop_once_writing)
    stopper.start()
    try:
        assert run_cli(config, "backup") != 0
    finally:
        stopper.join()
        redis_empty.start()
        redis_empty.client().config_set("rdbcompression", "yes")
    assert partial_seen.is_set()
    assert stored_files(tmp_path / "storage") == []
    [failed] = events_named(tmp_path, "backup.failed")
    assert "ended early" in failed["error"] or "Connection reset" in failed["error"]


def test_restore_into_refuses_a_server_holding_keys_and_with_force_puts_the_snapshot_where_it_loads(
    filled: tuple[RedisServer, dict[str, int]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, counts = filled
    original = everything(server.client)
    admin = {**redis_job(server, tmp_path), "user": "default"}
    admin["password_file"] = str(password_file(tmp_path, server.admin_password))
    config = write_config(tmp_path, {"cache": admin})
    assert run_cli(config, "backup") == 0
    server.client().flushall()
    server.client().set("written-after-the-backup", "x")
    restore = ("restore", "--job", "cache", "--database", "all", "--into", "all")
    assert run_cli(config, *restore) != 0  # the server holds a key
    assert server.client().exists("written-after-the-backup")
    assert run_cli(config, *restore, "--force", "--dry-run") == 0
    assert "SHUTDOWN NOSAVE" in capsys.readouterr().out
    assert server.is_running()
    assert run_cli(config, *restore, "--force") == 0
    wait_until(lambda: not server.is_running(), what="Redis to stop", timeout=30)
    kept = [path.name for path in server.data_dir.iterdir() if ".before-restore-" in path.name]
    assert len(kept) <= 1
    server.start()  # what its supervisor would do: it loads the restored snapshot
    assert everything(server.client) == original
    assert {f"db{number}": int(server.client(number).dbsize()) for number in (0, 3, 15)} == counts


def test_doctor_passes_the_backup_user_and_names_what_a_user_without_sync_lacks(
    redis_empty: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, {"cache": redis_job(redis_empty, tmp_path)})
    assert run_cli(config, "doctor") == 0
    out = capsys.readouterr().out
    assert "may run PING, INFO, REPLCONF, SYNC" in out
    assert "no RDB saves configured" in out
    client = redis_empty.client()
    allowed = ["-@all", "+ping", "+info", "+acl|dryrun"]
    client.acl_setuser("nosync", enabled=True, passwords=["+nosync-pw"], commands=allowed)
    try:
        job = {**redis_job(redis_empty, tmp_path), "user": "nosync"}
        job["password_file"] = str(password_file(tmp_path, "nosync-pw"))
        other = tmp_path / "other"
        other.mkdir()
        assert run_cli(write_config(other, {"cache": job}), "doctor") != 0
    finally:
        client.acl_deluser("nosync")
    out = capsys.readouterr().out
    assert "nosync may not run" in out
    assert "SYNC" in out


@pytest.mark.parametrize(
    ("extra", "key", "words"),
    [
        ({"databases": ["0"]}, "databases", 'use databases = "*"'),
        ({"extra_args": ["--rdb"]}, "extra_args", "no dump tool"),
        ({"ssl_ca": "/etc/ca.pem"}, "ssl_ca", "only used with tls = true"),
        ({"tls": True, "ssl_key": "/k.pem"}, "ssl_key", "needs ssl_cert"),
        ({"tls": True, "ssl_ca": "ca.pem"}, "ssl_ca", "absolute path"),
        ({"include_globals": True}, "include_globals", "not a setting of engine redis"),
    ],
)
def test_redis_settings_are_checked_with_their_key_path(
    redis_server: RedisServer, tmp_path: Path, extra: dict[str, Any], key: str, words: str
) -> None:
    job = {**redis_job(redis_server, tmp_path), **extra}
    with pytest.raises(ConfigError) as raised:
        load_config(write_config(tmp_path, {"cache": job}))
    assert any(problem.startswith(f"jobs.cache.{key}") and words in problem for problem in raised.value.problems), (
        raised.value.problems
    )


def test_a_unix_socket_job_backs_up_too(filled: tuple[RedisServer, dict[str, int]], tmp_path: Path) -> None:
    server, counts = filled
    job = redis_job(server, tmp_path)
    del job["host"], job["port"]
    job["socket"] = server.socket
    config = write_config(tmp_path, {"cache": job})
    assert run_cli(config, "backup") == 0
    [dump] = data_files(tmp_path / "storage")
    assert read_manifest(manifest_path(dump)).counts == counts
    assert os.path.basename(dump.parent) == "all"


def test_a_drill_removes_what_a_crashed_drill_left_and_stops_its_server(
    filled: tuple[RedisServer, dict[str, int]], tmp_path: Path
) -> None:
    server, _ = filled
    config = write_config(tmp_path, {"cache": redis_job(server, tmp_path, timeout="2s")})
    assert run_cli(config, "backup") == 0
    loaded = load_config(config)
    chosen = choose_backup(loaded, "cache", "all")
    crashed = engine_for(loaded, "cache")
    crashed.create_database("all__drill_20260101T000000Z")
    crashed.restore(
        decompressed_chunks(chosen.record.path, chosen.manifest.compression),
        chosen.manifest,
        "all__drill_20260101T000000Z",
        drill=True,
    )  # and the agent dies here: the folder and its server stay
    leftover = crashed.drills_folder() / "all__drill_20260101T000000Z"
    pid = int((leftover / "redis.pid").read_text())
    time.sleep(2.5)  # older than the job's timeout: no live drill can own it
    assert run_cli(config, "drill", "--job", "cache") == 0
    assert not leftover.exists()
    wait_until(lambda: not Path(f"/proc/{pid}/cmdline").exists() or not Path(f"/proc/{pid}/cmdline").read_bytes(),
               what="the leftover drill server to be gone", timeout=10)  # fmt: skip


def _certificates(folder: Path, openssl: str) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it."""
    ca_key, ca, key, request, certificate = (folder / name for name in ("ca.key", "ca.crt", "s.key", "s.csr", "s.crt"))
    steps = [
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2",
         "-subj", "/CN=backup-agent test CA"],
        [openssl, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", request, "-subj", "/CN=127.0.0.1"],
        [openssl, "x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", certificate,
         "-days", "2", "-extfile", folder / "san.cnf"],
    ]  # fmt: skip
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    for step in steps:
        subprocess.run([str(part) for part in step], capture_output=True, check=True, timeout=60)
    return ca, certificate, key


def test_a_tls_endpoint_is_backed_up_when_its_certificate_verifies_and_refused_when_not(
    tmp_path: Path, second_server: Any
) -> None:
    binaries = require_binaries(["redis-server", "openssl"], hint="install redis-server and openssl")
    ca, certificate, key = _certificates(tmp_path, binaries["openssl"])
    port = free_port()
    data = tmp_path / "tls-data"
    data.mkdir()
    process = ServerProcess(
        [
            binaries["redis-server"], "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
            "--tls-cert-file", str(certificate), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
            "--tls-auth-clients", "no", "--dir", str(data), "--save", "", "--appendonly", "no",
            "--repl-diskless-sync-delay", "0",
        ],
        log_path=tmp_path / "tls.log",
        run_as=None,
        cwd=data,
    )  # fmt: skip
    process.start()
    try:
        client = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(ca))
        wait_until(lambda: bool(client.ping()), what="TLS Redis", process=process)
        client.mset({"a": 1, "b": 2})
        job = {"engine": "redis", "host": "127.0.0.1", "port": port, "databases": "*", "tls": True, "ssl_ca": str(ca)}
        assert run_cli(write_config(tmp_path, {"cache": job}), "backup") == 0
        [dump] = data_files(tmp_path / "storage")
        assert read_manifest(manifest_path(dump)).counts == {"db0": 2}
        other = tmp_path / "untrusted"
        other.mkdir()
        _, stranger, _ = _certificates(other, binaries["openssl"])  # a CA that did not sign the server
        refused = {**job, "ssl_ca": str(stranger)}
        assert run_cli(write_config(other, {"cache": refused}), "backup") != 0
        [failed] = events_named(other, "backup.failed")
        assert "CERTIFICATE_VERIFY_FAILED" in failed["error"] or "certificate verify failed" in failed["error"]
    finally:
        process.stop()


def test_the_password_never_goes_to_a_socket_others_could_have_planted_nor_in_clear_text_off_the_machine(
    redis_server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    open_folder = tmp_path / "open"
    open_folder.mkdir()
    open_folder.chmod(0o1777)  # like /tmp: anyone may create a name here while the server is down
    planted = open_folder / "redis.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(planted))
    listener.listen(1)
    listener.setblocking(False)
    job = redis_job(redis_server, tmp_path)
    del job["host"], job["port"]
    job["socket"] = str(planted)
    try:
        assert run_cli(write_config(tmp_path, {"cache": job}), "backup") != 0
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected: no password was sent
    finally:
        listener.close()
    remote = tmp_path / "remote"
    remote.mkdir()
    job = {**redis_job(redis_server, remote), "host": "192.0.2.1"}  # refused before any connection is made
    assert run_cli(write_config(remote, {"cache": job}), "backup") != 0
    output = capsys.readouterr().out
    assert "refusing to connect" in output
    assert "AUTH sends it in clear text" in output
