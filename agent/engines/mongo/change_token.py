"""MongoDB's proof that nothing changed (`skip_unchanged`): the newest write in a replica set's oplog.

Every write of a replica set member, in any database, lands in `local.oplog.rs` before it is
visible, so the newest entry that is not a no-op (`op: "n"`, the idle heartbeats a primary writes)
names the last change of the whole server: its timestamp, term and wall time, with the set's name
and, where the server tells it, the process and election (a restart or a failover) make the token.
A standalone server has no oplog: nothing can be proved, and every run dumps. A write in another
database of the set dumps too: the token is the server's, not one database's.
"""

from __future__ import annotations

from typing import Any

import pymongo

from agent.engines.base import ChangeToken


def read_token(client: pymongo.MongoClient[dict[str, Any]]) -> ChangeToken | None:
    hello = client.admin.command("hello")
    set_name = hello.get("setName")
    if not set_name or not hello.get("isWritablePrimary", hello.get("ismaster", False)):
        return None  # a standalone (no oplog), or a secondary whose oplog may still be catching up
    newest = client.local["oplog.rs"].find_one({"op": {"$ne": "n"}}, sort=[("$natural", pymongo.DESCENDING)])
    if newest is None or "ts" not in newest:
        return None
    topology = hello.get("topologyVersion") or {}
    return {
        "replica_set": str(set_name),
        "newest_write": f"{newest['ts']}/{newest.get('t', '')}/{newest.get('wall', '')}",
        "process": str(topology.get("processId", "")),
        "election": str(hello.get("electionId", "")),
    }
