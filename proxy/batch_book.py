"""Batches the gateway admitted: who submitted each one, what it holds, and whether it is charged.

A batch is answered hours after it is submitted, possibly by another gateway process, so what the
gateway must remember of it is durable: one record per batch id in the batch log (the config log's
machinery: ``<data_dir>/batches.jsonl`` embedded, the compacted ``<prefix>.batches`` topic with
Kafka; the latest record of an id wins). A record names the submitting key, user, workspace and
org, the batch's worst case, its models, and its state: ``open`` until the gateway has charged its
results, then ``charged``. Files uploaded through the gateway are recorded there too, so only
their owner can read them or submit them.

Holds. Every process holds the worst case of every ``open`` batch in the log against the
submitter's budgets, from submission (or its own start) until the batch is charged: the holds are
a function of the log (``reconcile``), so a restart or a peer's charge never leaks or keeps one,
and they are placed again whenever the config changes (``rehold``), so a budget set while a batch
runs counts it. A batch is held, and charged, in the budget window it was submitted in.
They are not in the open-hold sweeper's list (proxy/holds.py): a batch may legitimately run for
24 hours, and its release is the charge, not a timeout.

Charging. When the gateway sees a batch ended (``charge``), it reads the results from the
upstream with its own credential, turns each billed line into one usage event whose ``event_id``
is derived from the batch id and the line's ``custom_id``, waits until the ledger has them durably,
then writes the ``charged`` record and releases the hold. Seeing the batch again charges nothing.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from llmgw.core import events as E
from llmgw.ledger.configlog import ConfigLog, FileConfigLog
from llmgw.core.config import ConfigRecord, ConfigState
from llmgw.pricing import cost

from llmgw.core.principal import Principal
from .policy import Estimate, Reservation
from .routing import Target, Upstream
from .types import Call, Usage
from .usage import report

log = logging.getLogger("llmgw.proxy")

BATCH, FILE = "batch", "file"
# ``charging``: its events are being written. A batch found in it after a crash is charged again
# with only the events the ledger does not hold yet (``Ledger.recorded``): never twice, never none.
OPEN, CHARGING, CHARGED = "open", "charging", "charged"
_UNCHARGED = (OPEN, CHARGING)


def open_batch_log(data_dir: str, kafka_bootstrap: str = "", topic_prefix: str = "llmgw") -> ConfigLog:
    if kafka_bootstrap:
        from llmgw.ledger.kafka_config import KafkaConfigLog
        return KafkaConfigLog(kafka_bootstrap, f"{topic_prefix}.batches")
    return FileConfigLog(Path(data_dir) / "batches.jsonl")


def batch_event_id(batch_id: str, custom_id: str, submitted_ms: int) -> str:
    """UUIDv7-shaped like every event id (the submission's milliseconds first), the rest a hash
    of the batch id and the request's ``custom_id``: reading the results again mints the same id."""
    digest = int.from_bytes(hashlib.sha256(f"{batch_id}\0{custom_id}".encode()).digest()[:10], "big")
    return E.uuid7_of(submitted_ms, digest)


@dataclass(frozen=True, slots=True)
class Bound:
    """The largest of a batch's requests: a meter's sanity checks take it as every line's request."""

    body_bytes: int = 0
    max_output_tokens: int | None = 0
    image_count: int = 0
    web_search: bool = False
    choices: int = 1

    @classmethod
    def of(cls, calls: Iterable[Call]) -> "Bound":
        body = images = 0
        out: int | None = 0
        web, n = False, 1
        for c in calls:
            body, images, n = max(body, len(c.body)), max(images, c.image_count), max(n, c.choices)
            out = None if out is None or c.max_output_tokens is None else max(out, c.max_output_tokens)
            web = web or c.web_search
        return cls(body, out, images, web, n)

    def call(self, model: str) -> Call:
        return Call(model=model, stream=False, body=bytes(self.body_bytes), max_output_tokens=self.max_output_tokens,
                    image_count=self.image_count, web_search=self.web_search, choices=self.choices)

    def data(self) -> dict[str, Any]:
        return {"body_bytes": self.body_bytes, "max_output_tokens": self.max_output_tokens,
                "image_count": self.image_count, "web_search": self.web_search, "choices": self.choices}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> "Bound":
        return cls(int(d.get("body_bytes", 0)), d.get("max_output_tokens"), int(d.get("image_count", 0)),
                   bool(d.get("web_search")), int(d.get("choices", 1)))


@dataclass(frozen=True, slots=True)
class Submitted:
    """A batch's durable record: attribution, worst case, models and state."""

    batch_id: str
    wire: str                      # "openai" or "anthropic"
    api: str                       # the events' api: batch_messages, batch_chat, ...
    endpoint: str                  # OpenAI: the API every line calls ("" for Anthropic)
    principal: Principal
    tags: tuple[str, ...]
    upstream: str
    submitted_ms: int
    worst_micro_usd: int
    models: dict[str, str]         # custom_id -> model, when the batch mixes models
    model: str                     # the one model otherwise
    bound: Bound
    state: str = OPEN
    charged_nano_usd: int = 0
    events: int = 0
    files: tuple[str, ...] = ()    # OpenAI: the batch's output and error files (readable by its owner)

    def model_of(self, custom_id: str) -> str:
        return self.models.get(custom_id, self.model)

    def record(self) -> ConfigRecord:
        p = self.principal
        return ConfigRecord.put(BATCH, self.batch_id, {
            "wire": self.wire, "api": self.api, "endpoint": self.endpoint, "org": p.org, "workspace": p.workspace,
            "user": p.user, "key_id": p.key_id, "tags": list(self.tags), "upstream": self.upstream,
            "submitted_ms": self.submitted_ms, "worst_micro_usd": self.worst_micro_usd, "models": self.models,
            "model": self.model, "bound": self.bound.data(), "state": self.state,
            "charged_nano_usd": self.charged_nano_usd, "events": self.events, "files": list(self.files)},
            actor="gateway")

    @classmethod
    def from_record(cls, rec: ConfigRecord) -> "Submitted":
        d = rec.data or {}
        p = Principal(d["key_id"], d["org"], d["workspace"], d["user"])
        return cls(rec.id.split(":", 1)[1], d["wire"], d["api"], d.get("endpoint", ""), p,
                   tuple(d.get("tags", ())), d["upstream"], int(d["submitted_ms"]), int(d["worst_micro_usd"]),
                   dict(d.get("models") or {}), d.get("model", ""), Bound.from_data(d.get("bound") or {}),
                   d.get("state", OPEN), int(d.get("charged_nano_usd", 0)), int(d.get("events", 0)),
                   tuple(d.get("files", ())))

    def owned_by(self, p: Principal) -> bool:
        return (self.principal.org, self.principal.workspace) == (p.org, p.workspace)


class BatchBook:
    """The batch log as state, and the holds it implies on this process."""

    def __init__(self, log_: ConfigLog, state: ConfigState) -> None:
        self.log, self.state = log_, state
        self.held: dict[str, Reservation] = {}
        self.loaded = asyncio.Event()          # set once the log is read (proxy/batches.py follows it)
        self._locks: dict[str, asyncio.Lock] = {}

    # -- records ---------------------------------------------------------------
    def batch(self, batch_id: str) -> Submitted | None:
        rec = self.state.get(BATCH, batch_id)
        return Submitted.from_record(rec) if rec is not None else None

    def file_owner(self, file_id: str) -> tuple[str, str] | None:
        rec = self.state.get(FILE, file_id)
        if rec is not None and rec.data:
            return rec.data["org"], rec.data["workspace"]
        for b in self.state.of_type(BATCH):          # a batch's output and error files are its owner's
            if rec is None and file_id in (b.data or {}).get("files", ()):
                return b.data["org"], b.data["workspace"]  # type: ignore[index]
        return None

    async def put(self, rec: ConfigRecord) -> None:
        await self.log.append(rec)           # durable first (fsync'd / acked), then visible here
        self.state.apply(rec)

    async def file_uploaded(self, file_id: str, p: Principal) -> None:
        await self.put(ConfigRecord.put(FILE, file_id, {"org": p.org, "workspace": p.workspace,
                                                        "key_id": p.key_id}, actor="gateway"))

    async def submitted(self, sub: Submitted, reservation: Reservation) -> None:
        """Remember a batch the upstream accepted; its hold (placed before forwarding) is now the book's."""
        await self.put(sub.record())
        self.held[sub.batch_id] = reservation

    def open_batches(self) -> list[Submitted]:
        return [sub for rec in self.state.of_type(BATCH) if (sub := Submitted.from_record(rec)).state in _UNCHARGED]

    def lock(self, batch_id: str) -> asyncio.Lock:
        return self._locks.setdefault(batch_id, asyncio.Lock())

    # -- holds -----------------------------------------------------------------
    def reconcile(self, policy: Any) -> None:
        """Hold every open batch of the log, release every hold whose batch is charged (or gone)."""
        open_ids = set()
        for rec in self.state.of_type(BATCH):
            sub = Submitted.from_record(rec)
            if sub.state not in _UNCHARGED:
                continue
            open_ids.add(sub.batch_id)
            if sub.batch_id not in self.held:
                # in the windows the batch was submitted in: its events carry that time (the fold's window)
                r = policy.reserve(sub.principal, sub.tags, Estimate(sub.worst_micro_usd, sub.worst_micro_usd),
                                   sub.submitted_ms, force=True, swept=False)   # released by the charge
                self.held[sub.batch_id] = r
        for batch_id in [b for b in self.held if b not in open_ids]:
            policy.release(self.held.pop(batch_id), 0)

    def rehold(self, policy: Any) -> None:
        """Hold every open batch again, against the budgets now in force (a budget added, changed or
        removed after a batch was submitted sees it like every other call in flight)."""
        for batch_id in list(self.held):
            policy.release(self.held.pop(batch_id), 0)
        self.reconcile(policy)

    def release(self, policy: Any, batch_id: str) -> None:
        r = self.held.pop(batch_id, None)
        self._locks.pop(batch_id, None)        # a waiter holding it finds the batch charged
        if r is not None:
            policy.release(r, 0)

    @property
    def held_micro_usd(self) -> int:
        return sum(r.amount_micro_usd for r in self.held.values() if r.open)


def refused_event(gw: Any, p: Principal, tags: tuple[str, ...], api: str, upstream: str, model: str,
                  outcome: str, status: int, now_ms: int) -> E.UsageEvent:
    """A batch refused at submission, as every refused call is: an event that costs nothing."""
    return E.UsageEvent(
        event_id=E.new_event_id(now_ms), ts_start_ms=now_ms, ts_end_ms=now_ms, org=p.org, workspace=p.workspace,
        user=p.user, key_id=p.key_id, provider=upstream, api=api, model_requested=model, model_served=model,
        outcome=outcome, http_status=status, project=dict(t.split(":", 1) for t in tags).get("project", ""),
        tags=tags, gateway_id=gw.settings.gateway_id, service_tier="batch")


def batch_event(gw: Any, sub: Submitted, custom_id: str, usage: Usage, upstream: Upstream,
                now_ms: int) -> E.UsageEvent:
    """One served request of a batch as its usage event, priced at the batch rate of the model it
    asked for, as the catalog priced it when the batch was submitted."""
    model = sub.model_of(custom_id)
    price, price_estimated = gw.price(Target(upstream, upstream.catalog_model(model)), model, sub.submitted_ms)
    report(usage, sub.api, model, sub.batch_id, upstream.name)
    priced = cost(usage.tokens, price, batch=True, web_search_calls=usage.web_search_calls)
    p, tags = sub.principal, sub.tags
    return E.UsageEvent(
        event_id=batch_event_id(sub.batch_id, custom_id, sub.submitted_ms), ts_start_ms=sub.submitted_ms,
        ts_end_ms=now_ms, org=p.org, workspace=p.workspace, user=p.user, key_id=p.key_id,
        provider=upstream.name, api=sub.api, model_requested=model, model_served=usage.model_served or model,
        tokens=usage.tokens, cost_nano_usd=priced.nano_usd, price_version=priced.price_version, outcome=E.OK,
        http_status=200, latency_ms=max(now_ms - sub.submitted_ms, 0),
        project=dict(t.split(":", 1) for t in tags).get("project", ""), tags=tags,
        request_id=sub.batch_id, gateway_id=gw.settings.gateway_id, stream=False,
        usage_estimated=not usage.complete and usage.tokens.total > 0,
        cost_estimated=price_estimated or priced.tier_unpriced, service_tier="batch",
        web_search_calls=usage.web_search_calls, usage_anomalous=bool(usage.anomalies))


__all__ = ["BATCH", "BatchBook", "Bound", "CHARGED", "CHARGING", "FILE", "OPEN", "Submitted", "batch_event", "refused_event",
           "batch_event_id", "open_batch_log"]
