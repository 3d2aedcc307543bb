"""The "call started" record: what a crash must not erase.

A call's usage event is built when the call ends. A gateway killed mid-stream
(``kill -9``, an OOM kill, a lost node) never builds it, yet the provider
served and bills the call. So before the upstream request is opened the
gateway writes a ``CallStarted`` record to the same durable log its usage
events go to (the embedded ledger's log; in Kafka mode the usage topic, with
the same key as the usage event, ``usage_key``, so both land in one partition
and fold in order). The usage event closes it: same ``event_id``.

A started record that nothing closes is an **orphan**. It is charged its
reservation, the worst case the gateway held for the call before forwarding
it (``pricing.worst_case``: the request's size and ``max_tokens`` at the
model's prices), as a usage event with outcome ``orphaned``, the call's own
``event_id`` and ``cost_estimated``. That event is the close: charging twice
is impossible because a charged call is no longer open, and a real event that
still arrives later has the same ``event_id``, which the Kafka fold counts
once (the first of the two wins; the orphan charge is an upper bound).

On the wire the id sits under ``started_event_id``, never ``event_id``: a
reader that knows only usage events (an older ledger worker, an analytics
consumer) finds no ``event_id`` and folds nothing, instead of taking the id
as seen and then dropping the real usage event as its duplicate.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import orjson

from llmgw.core.events import ORPHANED, UsageEvent, decode

STARTED_KEY = "started_event_id"
GATEWAY_CRASH = "gateway_crash"     # error_type of an orphan charge


@dataclass(frozen=True, slots=True)
class CallStarted:
    started_event_id: str          # the event_id the call's usage event will carry
    ts_ms: int                     # the call's start (its usage event's ts_start_ms)
    org: str
    workspace: str
    user: str
    key_id: str
    provider: str
    api: str
    model: str                     # the model forwarded (after a downgrade)
    reserved_micro_usd: int        # the reservation: what an orphan is charged
    gateway_id: str = ""
    model_requested: str = ""
    tags: tuple[str, ...] = ()     # budgets by tag (project) count the orphan too
    stream: bool = False

    @property
    def ledger_key(self) -> str:
        """Same key as the call's usage event (its API key): one partition, folded in order."""
        return self.key_id

    def orphan_event(self) -> UsageEvent:
        """The charge for a call whose usage event never came: its reservation, flagged."""
        tags = self.tags
        return UsageEvent(
            event_id=self.started_event_id, ts_start_ms=self.ts_ms, ts_end_ms=self.ts_ms,
            org=self.org, workspace=self.workspace, user=self.user, key_id=self.key_id,
            provider=self.provider, api=self.api, model_requested=self.model_requested or self.model,
            model_served=self.model, cost_micro_usd=self.reserved_micro_usd, outcome=ORPHANED,
            http_status=0, project=dict(t.split(":", 1) for t in tags).get("project", ""), tags=tags,
            gateway_id=self.gateway_id, stream=self.stream, usage_estimated=True, cost_estimated=True,
            error_type=GATEWAY_CRASH)


Record = UsageEvent | CallStarted


def record_id(rec: Record) -> str:
    """Unique per record (a call's started record and its usage event share ``event_id``)."""
    return f"started:{rec.started_event_id}" if isinstance(rec, CallStarted) else rec.event_id


# How the usage topic is keyed (``LLMGW_USAGE_KEY``, docs/ledger.md "No hot organization"):
# - "key", the default: by the call's API key. An organization's keys spread over every partition;
#   a key's (and so mostly a user's) spend keys stay in one partition, so the snapshot holds about
#   one partial per spend key, as with org keying.
# - "call": by the call's event id. Even one key's calls spread over every partition, for a single
#   key hotter than a worker folds; its spend keys then hold up to one partial per partition.
# - "org": the keying before, for a rolling upgrade while gateways that take one partition's
#   totals as a key's whole are still running.
KEY_KEY, CALL_KEY, ORG_KEY = "key", "call", "org"
USAGE_KEYS = (KEY_KEY, CALL_KEY, ORG_KEY)


def usage_key(rec: Record, keying: str = KEY_KEY) -> bytes:
    """The usage-topic key of a record. A pure function of the record and the keying, so every copy
    of it (the spool's re-sends) lands in the partition of the first, and a call's started record and
    its usage event share one partition, in order: the two things the per-partition fold needs."""
    if keying == KEY_KEY:
        return rec.key_id.encode()
    if keying == CALL_KEY:
        return (rec.started_event_id if isinstance(rec, CallStarted) else rec.event_id).encode()
    if keying == ORG_KEY:
        return rec.org.encode()
    raise ValueError(f"usage key {keying!r}: expected one of {', '.join(USAGE_KEYS)}")


def encode_record(rec: Record) -> bytes:
    """orjson writes both slotted dataclasses natively (``started_event_id`` first for a started record)."""
    return orjson.dumps(rec)


def is_started(raw: Mapping[str, Any]) -> bool:
    return isinstance(raw.get(STARTED_KEY), str)


def decode_started(raw: Mapping[str, Any]) -> CallStarted:
    return CallStarted(
        started_event_id=str(raw[STARTED_KEY]), ts_ms=int(raw["ts_ms"]), org=str(raw["org"]),
        workspace=str(raw["workspace"]), user=str(raw["user"]), key_id=str(raw["key_id"]),
        provider=str(raw["provider"]), api=str(raw["api"]), model=str(raw["model"]),
        reserved_micro_usd=int(raw["reserved_micro_usd"]), gateway_id=str(raw.get("gateway_id") or ""),
        model_requested=str(raw.get("model_requested") or ""), tags=tuple(raw.get("tags") or ()),
        stream=bool(raw.get("stream", False)))


def usage_event_of(value: bytes) -> UsageEvent | None:
    """The usage event a usage-topic value holds; None for a started record or a worker's tick."""
    raw = orjson.loads(value)
    if not isinstance(raw, Mapping) or "event_id" not in raw:
        return None
    return decode(raw)


def decode_record(data: bytes | str | Mapping[str, Any]) -> Record:
    """A line of the embedded log or the spool, or a usage-topic value: either kind of record."""
    raw = orjson.loads(data) if isinstance(data, (bytes, str)) else data
    if not isinstance(raw, Mapping):
        raise ValueError("a ledger record is a JSON object")
    return decode_started(raw) if is_started(raw) else decode(raw)


__all__ = ["CALL_KEY", "CallStarted", "GATEWAY_CRASH", "KEY_KEY", "ORG_KEY", "Record", "STARTED_KEY",
           "USAGE_KEYS", "decode_record", "decode_started", "encode_record", "is_started", "record_id",
           "usage_event_of", "usage_key"]
