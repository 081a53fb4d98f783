"""A throwaway Redis server for tests, never the system instance on 6379.

``redis-server`` runs from a 0600 config file in a fresh 0755 ``/tmp/backup-agent-redis-*`` directory
(as ``redis`` when we are root), on a free loopback port and a unix socket, with persistence off
(``save ""``, no AOF) so a test decides when an RDB is written. Two ACL users: ``default`` with
an admin password (the tests' own redis-py client) and ``backup`` with only what a backup needs,
which is what the agent under test uses. ``repl-diskless-sync-delay 0`` starts each snapshot at
once instead of after the 5 s a production server waits for more replicas; debug commands are
allowed from loopback so a test can force rare encodings (plain list nodes).
"""

from __future__ import annotations

import secrets
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from .common import ServerProcess, free_port, give_to, make_base_dir, require_binaries, service_account, wait_until

__all__ = ["BACKUP_ACL", "RedisServer", "fill_every_type", "running_redis"]

_SERVER_BINARY = "redis-server"
# what the agent's backup user is granted (docs/redis.md recommends the same)
BACKUP_ACL = "resetkeys resetchannels -@all +ping +info +replconf +sync +config|get +acl|dryrun"


@dataclass
class RedisServer:
    """A running throwaway server; ``user``/``password`` is what the agent under test uses."""

    host: str
    port: int
    socket: str
    user: str
    password: str = field(repr=False)
    admin_password: str = field(repr=False)
    data_dir: Path
    config_path: Path
    _process: ServerProcess = field(repr=False, compare=False)

    def client(self, database: int = 0, **options: Any) -> redis.Redis:
        """An admin connection (the ``default`` user) over TCP."""
        return redis.Redis(
            host=self.host, port=self.port, db=database, password=self.admin_password, socket_timeout=30, **options
        )

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def is_running(self) -> bool:
        return self._process.is_running()

    def start(self) -> None:
        if self.is_running():
            return
        self._process.start()
        wait_until(self._answers, what="Redis", timeout=30, process=self._process)
        self.client().config_set("repl-diskless-sync-delay", 0)

    def stop(self) -> None:
        """SIGTERM (a normal shutdown; with `save ""` it writes nothing); killed after 10 s."""
        self._process.stop(timeout=10)

    def kill(self) -> None:
        self._process.kill()
        self._process.stop(timeout=1)

    def flush(self) -> None:
        self.start()
        self.client().flushall()

    def saved_rdb(self) -> bytes:
        """The server's own RDB of its current data (SAVE into its dir): a reference snapshot."""
        client = self.client()
        client.save()
        filename = str(client.config_get("dbfilename")["dbfilename"])
        return (self.data_dir / filename).read_bytes()

    def log_tail(self) -> str:
        return self._process.log_tail()

    def _answers(self) -> bool:
        return bool(self.client().ping())


def _config_text(base: Path, data_dir: Path, port: int, socket: Path, password: str, admin_password: str) -> str:
    return "\n".join(
        [
            f"port {port}",
            "bind 127.0.0.1",
            "protected-mode yes",
            f"unixsocket {socket}",
            "unixsocketperm 700",
            f"dir {data_dir}",
            "dbfilename dump.rdb",
            'save ""',
            "appendonly no",
            "daemonize no",
            f"pidfile {base / 'redis.pid'}",
            "databases 16",
            "repl-diskless-sync-delay 0",
            "enable-debug-command local",
            f"user default on >{admin_password} ~* &* +@all",
            f"user backup on >{password} {BACKUP_ACL}",
            "",
        ]
    )


@contextmanager
def running_redis() -> Iterator[RedisServer]:
    """Write a config, start the server and wait for it; stop it and delete everything on exit."""
    binaries = require_binaries([_SERVER_BINARY], hint="install redis-server")
    run_as = service_account("redis")
    base = make_base_dir("backup-agent-redis-", run_as)
    try:
        data_dir = base / "data"
        data_dir.mkdir(mode=0o750)
        give_to(data_dir, run_as)
        port = free_port()
        socket = base / "redis.sock"
        password = "pw-" + secrets.token_hex(8)
        admin_password = "admin-" + secrets.token_hex(8)
        config_path = base / "redis.conf"
        config_path.touch(mode=0o600)
        config_path.write_text(_config_text(base, data_dir, port, socket, password, admin_password))
        give_to(config_path, run_as)
        process = ServerProcess(
            [binaries[_SERVER_BINARY], str(config_path)],
            log_path=base / "redis.log",
            run_as=run_as,
            cwd=base,
            stop_signal=signal.SIGTERM,
        )
        server = RedisServer(
            host="127.0.0.1",
            port=port,
            socket=str(socket),
            user="backup",
            password=password,
            admin_password=admin_password,
            data_dir=data_dir,
            config_path=config_path,
            _process=process,
        )
        try:
            server.start()
            yield server
        finally:
            process.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def fill_every_type(server: RedisServer, *, scale: int = 1) -> dict[str, int]:
    """Every value type in every encoding a Redis 7 RDB carries, over three logical databases.

    Returns the key count per database as the manifest names them (``db0``...). ``scale``
    multiplies the big collections (the round trip uses 1; the check's property test too).
    """
    server.start()
    main = server.client(0)
    main.execute_command("DEBUG", "QUICKLIST-PACKED-THRESHOLD", "1000")  # lists with plain nodes
    pipe = main.pipeline(transaction=False)
    pipe.set("string:int", 12345)  # integer-encoded
    pipe.set("string:negative", -7)
    pipe.set("string:big-int", 2**40)
    pipe.set("string:short", "hello")
    pipe.set("string:compressible", "abc" * 200)  # LZF
    pipe.set("string:binary", bytes(range(256)) * 4)
    pipe.set("string:large", secrets.token_bytes(200_000))  # longer than one read
    pipe.set("string:empty", "")
    pipe.set("string:unicode", "Grüße, 世界")
    pipe.set("expiring:ms", "soon", px=3_600_000)
    pipe.set("expiring:s", "later", ex=86_400)
    pipe.rpush("list:small", "a", "b", "c", 1, 2, 3)  # one listpack node
    pipe.rpush("list:big", *[f"item-{index}-{'x' * (index % 50)}" for index in range(3000 * scale)])  # many nodes
    pipe.rpush("list:plain-nodes", b"p" * 5000, "small", b"q" * 3000)  # plain (unpacked) nodes
    pipe.sadd("set:intset", *range(100))
    pipe.sadd("set:strings", *[f"member-{index}" for index in range(50)])
    pipe.sadd("set:big", *range(1000 * scale))  # past set-max-intset-entries: a hash table
    pipe.zadd("zset:small", {"one": 1, "two": 2.5, "minus": -3, "inf": float("inf")})
    pipe.zadd("zset:big", {f"player-{index}": index * 1.5 for index in range(500 * scale)})  # skiplist
    pipe.hset("hash:small", mapping={"field": "value", "number": 42})
    pipe.hset("hash:big", mapping={f"field-{index}": f"value-{index}" for index in range(1000 * scale)})
    pipe.hset("hash:long-value", mapping={"long": "v" * 1000})  # a long value: a hash table
    pipe.execute()
    for index in range(300 * scale):
        main.xadd("stream:events", {"kind": "click", "index": index})
    main.xgroup_create("stream:events", "workers", id="0")
    main.xreadgroup("workers", "alice", {"stream:events": ">"}, count=5)
    main.xreadgroup("workers", "bob", {"stream:events": ">"}, count=3)
    main.xack("stream:events", "workers", main.xrange("stream:events", count=1)[0][0])
    main.xadd("stream:empty-group", {"a": 1})
    main.xgroup_create("stream:empty-group", "idle", id="$")
    library = "#!lua name=backuplib\nredis.register_function('echo', function(k, a) return a[1] end)"
    main.execute_command("FUNCTION", "LOAD", "REPLACE", library)
    second = server.client(3)
    second.mset({f"db3:{index}": index for index in range(200)})
    second.set("db3:expiring", "x", px=7_200_000)
    last = server.client(15)
    last.rpush("db15:list", "only")
    return {f"db{number}": int(server.client(number).dbsize()) for number in (0, 3, 15)}
