"""Delivering alerts to webhooks: payloads, one POST, retries with backoff.

Webhooks are config records (``type: "webhook"``, ``llmgw webhooks add URL
--format slack|json``) and two payload formats:

- ``json``: ``json_payload`` (documented in ``docs/alerts.md``);
- ``slack``: an incoming-webhook message, ``{"text": ..., "blocks": [...]}``.

A delivery is a POST with a per-attempt timeout. 2xx is an ack. Connection
errors, timeouts, 408, 425, 429 and 5xx are retried with exponential backoff
(``Retry-After`` honoured up to the backoff cap) until ``give_up_after_s``
since the alert fired; any other status (3xx, 4xx) is a rejection and is not
retried. Every POST carries ``X-Llmgw-Alert-Id`` (the alert key), the same on
every retry and redelivery, so a receiver can drop the rare duplicate.

Webhook URLs are secrets (a Slack webhook's path is its credential): logs
show the webhook id and host only.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

import aiohttp
import orjson

from llmgw.core.budgets import micro_to_usd

from .alert_store import DELIVERED, FAILED, REJECTED, Delivery
from .alerts import RUNWAY, Alert, usd_text
from llmgw.core.config import ConfigRecord
from llmgw.core.windows import iso_utc

log = logging.getLogger("llmgw.ledger.webhooks")

WEBHOOK_TYPE = "webhook"
FORMATS = ("json", "slack")
PAYLOAD_TYPE = "llmgw.budget_alert"
PAYLOAD_VERSION = 1
_RETRY_STATUSES = frozenset({408, 425, 429})


# -- configuration -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Webhook:
    id: str
    url: str
    format: str = "json"

    @staticmethod
    def id_for(url: str) -> str:
        return "wh" + hashlib.sha256(url.encode()).hexdigest()[:10]

    @classmethod
    def new(cls, url: str, format: str = "json", name: str = "") -> "Webhook":
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"a webhook URL must be http(s)://host/..., got {cls(name, url).safe_url!r}")
        if format not in FORMATS:
            raise ValueError(f"webhook format must be one of {', '.join(FORMATS)}")
        return cls(name or cls.id_for(url), url, format)

    @classmethod
    def from_record(cls, rec: ConfigRecord) -> "Webhook":
        d = rec.data or {}
        return cls(rec.id.split(":", 1)[1], str(d["url"]), str(d.get("format", "json")))

    def record(self, actor: str = "cli", reason: str = "") -> ConfigRecord:
        return ConfigRecord.put(WEBHOOK_TYPE, self.id, {"url": self.url, "format": self.format},
                                actor=actor, reason=reason)

    @property
    def safe_url(self) -> str:
        """Scheme and host only: the path and query may hold the webhook's secret."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname or ''}{':%d' % parts.port if parts.port else ''}/..."


# -- payloads ------------------------------------------------------------------------------------
def json_payload(a: Alert) -> dict[str, Any]:
    return {
        "type": PAYLOAD_TYPE,
        "version": PAYLOAD_VERSION,
        "id": a.key,
        "kind": a.kind,
        "threshold_pct": a.threshold_pct if a.kind != RUNWAY else None,
        "message": a.message,
        "budget": {"id": a.budget_id, "origin": a.budget_origin, "kind": a.budget_kind,
                   "description": a.budget_text, "action": a.action},
        "scope": {"label": a.scope, "dimension": a.dim, "entity": a.entity, "org": a.org},
        "window": {"name": a.window, "start": iso_utc(a.window_start_ms), "end": iso_utc(a.window_end_ms),
                   "start_ms": a.window_start_ms, "end_ms": a.window_end_ms, "timezone": a.tz or "UTC"},
        "spent_micro_usd": a.spent_micro_usd,
        "limit_micro_usd": a.limit_micro_usd,
        "spent_usd": usd_text(a.spent_micro_usd),
        "limit_usd": usd_text(a.limit_micro_usd),
        "percent_used": a.spent_micro_usd * 100 // a.limit_micro_usd if a.limit_micro_usd else None,
        "window_resets_at": iso_utc(a.window_end_ms),
        "projected_cap_at": iso_utc(a.projected_ms) if a.projected_ms else None,
        "fired_at": iso_utc(a.fired_ms),
    }


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def slack_payload(a: Alert) -> dict[str, Any]:
    """Slack incoming-webhook message: ``text`` (notifications, fallback) plus Block Kit blocks."""
    title = (f"Runway: {a.scope} on track to hit its {a.window} cap" if a.kind == RUNWAY
             else f"Budget {a.threshold_pct}%: {a.scope}")
    icon = ":rotating_light:" if a.kind != RUNWAY and a.spent_micro_usd >= a.limit_micro_usd else ":warning:"
    fields = [("Spent", micro_to_usd(a.spent_micro_usd)), ("Limit", micro_to_usd(a.limit_micro_usd)),
              ("Window", f"{a.window} from {iso_utc(a.window_start_ms)}"), ("Resets", iso_utc(a.window_end_ms))]
    return {
        "text": _cut(f"{icon} {a.message}", 3000),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": _cut(title, 150), "emoji": True}},
            {"type": "section", "text": {"type": "mrkdwn", "text": _cut(f"{icon} {a.message}", 3000)}},
            {"type": "section", "fields": [{"type": "mrkdwn", "text": _cut(f"*{k}*\n{v}", 2000)} for k, v in fields]},
            {"type": "context", "elements": [{"type": "mrkdwn",
                                              "text": _cut(f"{a.budget_text} · alert `{a.key}`", 3000)}]},
        ],
    }


def render(a: Alert, format: str) -> bytes:
    return orjson.dumps(slack_payload(a) if format == "slack" else json_payload(a))


# -- delivery ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RetryPolicy:
    timeout_s: float = 10.0            # per attempt, connect to last byte
    backoff_s: float = 1.0             # first retry after this, doubling
    max_backoff_s: float = 300.0
    give_up_after_s: float = 86_400.0  # since the alert fired (redeliveries after a restart count too)


ResultHook = Callable[[Alert, Webhook, Delivery], Awaitable[None]]
# Before each POST: the attempt it is (1-based, counted across restarts), to be made durable.
AttemptHook = Callable[[Alert, Webhook, int], Awaitable[None]]


async def _no_record(alert: Alert, hook: Webhook, attempt: int) -> None:
    return None


async def post_once(session: aiohttp.ClientSession, hook: Webhook, body: bytes, alert_id: str, attempt: int,
                    timeout_s: float) -> tuple[int, str, float | None]:
    """One POST: (HTTP status or 0, error text, Retry-After seconds if given)."""
    headers = {"Content-Type": "application/json", "User-Agent": "llmgw-alerts/1",
               "X-Llmgw-Alert-Id": alert_id, "X-Llmgw-Delivery-Attempt": str(attempt)}
    try:
        async with session.post(hook.url, data=body, headers=headers, allow_redirects=False,
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            await resp.read()
            return resp.status, "" if resp.status < 300 else f"HTTP {resp.status}", _retry_after(resp)
    except TimeoutError:
        return 0, f"timeout after {timeout_s:g}s", None
    except aiohttp.ClientError as exc:
        return 0, f"{type(exc).__name__}: {exc}", None


def _retry_after(resp: aiohttp.ClientResponse) -> float | None:
    raw = resp.headers.get("Retry-After", "")
    try:
        return max(0.0, float(raw)) if raw else None
    except ValueError:
        return None


def retryable(status: int) -> bool:
    return status == 0 or status >= 500 or status in _RETRY_STATUSES


class Deliverer:
    """Owns one HTTP session and one task per (alert, webhook) delivery in flight.

    ``stop`` lets an attempt already on the wire finish (bounded by ``grace_s``) so its result is
    recorded; deliveries waiting to retry are cancelled and stay pending in the store, to be
    resumed by the next evaluator. ``on_attempt`` records each attempt before it goes out, so the
    count (and ``X-Llmgw-Delivery-Attempt``) goes on from where a crashed evaluator left it, and
    the backoff with it, rather than restarting at 1.
    """

    def __init__(self, retry: RetryPolicy, on_result: ResultHook, *,
                 clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
                 on_attempt: AttemptHook = _no_record) -> None:
        self.retry = retry
        self.on_result = on_result
        self.on_attempt = on_attempt
        self.clock_ms = clock_ms
        self._session: aiohttp.ClientSession | None = None
        self._tasks: dict[asyncio.Task[None], bool] = {}       # task -> an attempt is on the wire
        self._stopping = False
        self.attempts = 0

    async def start(self) -> None:
        # No cookie jar: many orgs' webhooks share one host (hooks.slack.com), and a cookie set in
        # answer to one org's delivery would otherwise ride along with the next org's.
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16),
                                              cookie_jar=aiohttp.DummyCookieJar())

    def submit(self, alert: Alert, hook: Webhook, attempts_made: int = 0) -> None:
        """Deliver ``alert`` to ``hook``; ``attempts_made`` by earlier evaluators (from the store)."""
        task = asyncio.get_running_loop().create_task(self._deliver(alert, hook, attempts_made),
                                                      name=f"llmgw-alert-delivery-{hook.id}")
        self._tasks[task] = False
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("alert delivery task failed", exc_info=task.exception())

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def _deliver(self, alert: Alert, hook: Webhook, attempts_made: int) -> None:
        assert self._session is not None, "start() first"
        me = asyncio.current_task()
        assert me is not None
        body = render(alert, hook.format)
        deadline_ms = alert.fired_ms + int(self.retry.give_up_after_s * 1000)
        attempt = max(0, attempts_made)
        backoff = min(self.retry.max_backoff_s, self.retry.backoff_s * 2 ** min(attempt, 32))
        while True:
            attempt += 1
            self.attempts += 1
            self._tasks[me] = True
            await self.on_attempt(alert, hook, attempt)
            status, error, after = await post_once(self._session, hook, body, alert.key, attempt,
                                                   self.retry.timeout_s)
            if 200 <= status < 300:
                result = Delivery(hook.id, DELIVERED, attempt, status, "", self.clock_ms())
            elif not retryable(status):
                result = Delivery(hook.id, REJECTED, attempt, status, error, self.clock_ms())
            elif self._stopping:
                return                   # still pending in the store: the next evaluator resumes it
            elif self.clock_ms() + backoff * 1000 > deadline_ms:
                result = Delivery(hook.id, FAILED, attempt, status, error, self.clock_ms())
            else:
                self._tasks[me] = False
                log.warning("alert %s to webhook %s (%s): attempt %d failed (%s); retrying in %.1fs",
                            alert.key, hook.id, hook.safe_url, attempt, error, backoff,
                            extra={"event": "alert_delivery_retry"})
                await asyncio.sleep(min(self.retry.max_backoff_s, max(backoff, after or 0.0))
                                    * random.uniform(0.9, 1.1))
                backoff = min(self.retry.max_backoff_s, backoff * 2)
                continue
            level = logging.INFO if result.status == DELIVERED else logging.ERROR
            log.log(level, "alert %s to webhook %s (%s): %s after %d attempt(s)%s", alert.key, hook.id,
                    hook.safe_url, result.status, attempt, f" ({error})" if error else "",
                    extra={"event": "alert_delivery", "status": result.status})
            await self.on_result(alert, hook, result)
            return

    async def stop(self, grace_s: float = 5.0) -> None:
        self._stopping = True
        waiting = [t for t, on_wire in self._tasks.items() if not on_wire]
        for t in waiting:
            t.cancel()
        tasks = list(self._tasks)
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace_s)
            for t in late:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None


__all__ = ["AttemptHook", "Deliverer", "FORMATS", "PAYLOAD_TYPE", "RetryPolicy", "WEBHOOK_TYPE", "Webhook", "json_payload",
           "post_once", "render", "retryable", "slack_payload"]
