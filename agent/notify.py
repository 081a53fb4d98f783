"""Alerts: Healthchecks-style pings and JSON webhooks, sent so that no endpoint can hold up a backup.

Healthchecks: `URL/start` when a run starts, `URL` when it succeeds, `URL/fail` (with the run's log
tail as body) when it fails or a dump is refused, each with `?rid=` so overlapping runs pair up.
Webhooks get a JSON body with the event's fields. Every request runs in a daemon thread and is
tried 1 + `notify.retries` times, every try within `notify.timeout`; a run waits for them at most
that long in total, so a dead endpoint delays a backup by at most that. Bodies pass through the log's redaction first.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from agent import __version__
from agent.config import NotifyConfig
from agent.log import get_logger, redact

STARTED = "run.started"
SUCCEEDED = "run.succeeded"
FAILED = "run.failed"
REFUSED = "run.refused"
DRILL_FAILED = "drill.failed"
TAIL_LINES = 40
_RETRY_PAUSE_SECONDS = 0.5  # between tries, at most
_BUDGET_SHARE = 0.95  # of notify.timeout for one request's tries: the rest is the run's margin to collect them
_PAUSE_SHARE = 0.2  # of that budget, at most, spent pausing between tries
_SHORTEST_TRY_SECONDS = 0.05


def masked(value: Any) -> Any:
    """`value` with every registered secret replaced by ***."""
    return redact(None, "", {"value": value})["value"]


def masked_url(url: str) -> str:
    """Ping URLs carry their token in the path: logs name only the scheme and host."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}/…"


def ping_url(base: str, event: str, run_id: str) -> str:
    """The Healthchecks endpoint for an event, with a run id derived from the agent's."""
    suffix = {STARTED: "/start", SUCCEEDED: "", FAILED: "/fail", REFUSED: "/fail", DRILL_FAILED: "/fail"}[event]
    rid = uuid.uuid5(uuid.NAMESPACE_URL, f"backup-agent:{run_id}")
    return f"{base.rstrip('/')}{suffix}?rid={rid}"


class Notifier:
    """Sends one run's notifications in the background; `wait` bounds how long the run waits."""

    def __init__(self, settings: NotifyConfig, *, job: str, run_id: str, host: str) -> None:
        self.settings = settings
        self.job = job
        self.run_id = run_id
        self.host = host
        self.log = get_logger(job=job, run_id=run_id)
        self._threads: list[threading.Thread] = []

    @property
    def enabled(self) -> bool:
        return bool(self.settings.healthchecks_url or self.settings.webhooks)

    def send(self, event: str, fields: Mapping[str, Any], body: str = "") -> None:
        """Queue the pings and webhooks for `event`; returns at once."""
        if not self.enabled:
            return
        document = masked({"event": event, "job": self.job, "run_id": self.run_id, "host": self.host, **fields})
        text = masked(body)[-10_000:]
        requests: list[tuple[str, bytes, str]] = []
        if self.settings.healthchecks_url:
            url = ping_url(self.settings.healthchecks_url, event, self.run_id)
            requests.append((url, text.encode("utf-8"), "text/plain; charset=utf-8"))
        payload = json.dumps(document, ensure_ascii=True, default=str).encode()
        requests.extend((url, payload, "application/json") for url in self.settings.webhooks)
        for url, data, content_type in requests:
            thread = threading.Thread(
                target=self._deliver, args=(event, url, data, content_type), daemon=True, name="notify"
            )
            thread.start()
            self._threads.append(thread)

    def wait(self) -> None:
        """Give the queued requests at most `notify.timeout` in total, then leave them behind."""
        deadline = time.monotonic() + self.settings.timeout.total_seconds()
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        still = sum(1 for thread in self._threads if thread.is_alive())
        if still:
            self.log.warning("notify.pending", requests=still, timeout=self.settings.timeout.total_seconds())
        self._threads = [thread for thread in self._threads if thread.is_alive()]

    def _deliver(self, event: str, url: str, data: bytes, content_type: str) -> None:
        """1 + `retries` tries, all within `notify.timeout`: each try gets an equal share of what is left,
        so a silent endpoint is tried as often as configured before the run stops waiting."""
        attempts = self.settings.retries + 1
        budget = self.settings.timeout.total_seconds() * _BUDGET_SHARE
        pause = min(_RETRY_PAUSE_SECONDS, budget * _PAUSE_SHARE / max(1, attempts - 1))
        deadline = time.monotonic() + budget
        error = ""
        for attempt in range(1, attempts + 1):
            pauses_left = pause * (attempts - attempt)
            timeout = max(_SHORTEST_TRY_SECONDS, (deadline - time.monotonic() - pauses_left) / (attempts - attempt + 1))
            request = urllib.request.Request(  # noqa: S310 - config accepts only http(s) URLs
                url,
                data=data,
                method="POST",
                headers={"Content-Type": content_type, "User-Agent": f"backup-agent/{__version__}"},
            )
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - see above
                    response.read(1024)
                self.log.debug("notify.sent", notify_event=event, target=masked_url(url), attempt=attempt)
                return
            except urllib.error.HTTPError as failure:
                error = f"HTTP {failure.code}"
                if 400 <= failure.code < 500 and failure.code != 429:
                    break  # the endpoint says the request is wrong; repeating it changes nothing
            except (urllib.error.URLError, OSError, ValueError) as failure:
                error = str(getattr(failure, "reason", failure))
            if attempt < attempts:
                time.sleep(pause)
        self.log.warning("notify.failed", notify_event=event, target=masked_url(url), attempts=attempt, error=error)


class LogTail(logging.Handler):
    """Keeps the last log lines of one run (matched by run id), rendered and redacted, for alert bodies."""

    def __init__(self, run_id: str, lines: int = TAIL_LINES) -> None:
        super().__init__(logging.DEBUG)
        self.run_id = run_id
        self.lines: collections.deque[str] = collections.deque(maxlen=lines)

    def emit(self, record: logging.LogRecord) -> None:
        event = record.msg
        if not isinstance(event, dict) or event.get("run_id") != self.run_id:
            return
        fields = masked({key: value for key, value in event.items() if not key.startswith("_")})
        level = fields.pop("level", record.levelname.lower())
        head = f"{fields.pop('timestamp', '')} {level} {fields.pop('event', '')}"
        fields.pop("run_id", None)
        rest = " ".join(f"{key}={json.dumps(value, ensure_ascii=True, default=str)}" for key, value in fields.items())
        self.lines.append(f"{head} {rest}".strip())

    def text(self) -> str:
        return "\n".join(self.lines)

    @contextlib.contextmanager
    def capturing(self) -> Iterator[LogTail]:
        root = logging.getLogger()
        root.addHandler(self)
        try:
            yield self
        finally:
            root.removeHandler(self)
