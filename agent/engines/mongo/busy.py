"""How busy a MongoDB server is: operations queued for a lock (agent/busy.py).

`serverStatus().globalLock.currentQueue.total` counts the operations waiting for a lock right
now; the dump's own reads are not among them while they run. A server whose serverStatus has no
such figure (the SecantusDB stand-in used in tests) cannot be sampled: the sampler says so once.
"""

from __future__ import annotations

from typing import Any

DEFAULT_THRESHOLD = 2  # operations waiting for a lock: the application's queries already queue


def queued_operations(status: dict[str, Any]) -> int | None:
    """The queue's total from a serverStatus reply, or None when the server does not report one."""
    queue = status.get("globalLock", {}).get("currentQueue") if isinstance(status.get("globalLock"), dict) else None
    if not isinstance(queue, dict):
        return None
    total = queue.get("total")
    if isinstance(total, int) and not isinstance(total, bool):
        return total
    readers, writers = queue.get("readers"), queue.get("writers")
    if isinstance(readers, int) and isinstance(writers, int):
        return readers + writers
    return None


class QueuedOperations:
    """`BusyProbe` over its own client."""

    signal = "queued operations"

    def __init__(self, client: Any, threshold: int) -> None:
        self._client = client
        self.threshold = threshold

    def sample(self) -> int | None:
        status = self._client.admin.command("serverStatus", globalLock=1)
        return queued_operations(dict(status))

    def close(self) -> None:
        self._client.close()
