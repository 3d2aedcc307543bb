"""Re-rating: correct past charges with ADJUSTMENT events, never by rewriting an event.

An event is re-rated when the price version in force at its time (``ts_start_ms``,
the instant the proxy prices a call at) is no longer the one it was charged with,
i.e. a correction was loaded with an ``effective_from`` at or before the call.
A price change effective AFTER the call does not touch it.

The adjustment carries ``cost_nano_usd = corrected - charged``, zero tokens (so
token totals are not doubled), the original's attribution fields and time, a
fresh ``event_id``, ``adjusts_event_id`` = the original's id and
``price_version`` = the version it corrects to.

Idempotence: ids in ``already_adjusted`` are skipped outright. Adjustments found
in ``events`` themselves are folded in first: the original then counts as charged
``cost + adjustments`` at the last adjustment's version, so running ``rerate``
again over its own output adds nothing, and a second correction adds only the
difference from the first.

A schema-v1 event was charged in micro-USD rounded half to even; its charge is
reproduced by that rule, and the correction is taken from what the ledger
counted for it (``cost_micro_usd x 1000`` nanos) to the exact nanos of today.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import AbstractSet, Callable, Iterable

from llmgw.core.events import ADJUSTMENT, NANO_PER_MICRO, SCHEMA_VERSION, USAGE, Tokens, UsageEvent, new_event_id
from llmgw.pricing.catalog import Catalog, UnknownModel
from llmgw.pricing.cost import cost
from llmgw.pricing.price import Price

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CallOptions:
    """How a call was billed beyond its tokens. Events record the served tier and the search
    count (``CallOptions.of``); only ``batch`` is never on the event."""

    service_tier: str | None = None
    batch: bool = False
    web_search_calls: int = 0

    @classmethod
    def of(cls, ev: UsageEvent) -> "CallOptions":
        """What the event itself says: its served tier and web-search calls."""
        return cls(service_tier=ev.service_tier or None, web_search_calls=ev.web_search_calls)


def rerate(events: Iterable[UsageEvent], catalog: Catalog, *,
           already_adjusted: AbstractSet[str] = frozenset(),
           call_options: Callable[[UsageEvent], CallOptions] | None = None,
           now_ms: int | None = None) -> list[UsageEvent]:
    """ADJUSTMENT events for the usage events whose price version ``catalog`` supersedes.

    ``call_options`` tells the service tier, batch flag and web-search calls of
    an event (default: ``CallOptions.of``, what the event records). Before correcting, the charge is recomputed from
    the version it names; an event whose charge cannot be reproduced that way
    (unknown options, a version missing from the catalog) is skipped and logged
    rather than corrected by a guess.
    """
    events = list(events)
    adjusted: dict[str, tuple[int, str]] = {}          # original id -> (sum of adjustments, last version)
    for ev in sorted((e for e in events if e.kind == ADJUSTMENT), key=lambda e: e.event_id):
        total, _ = adjusted.get(ev.adjusts_event_id, (0, ""))
        adjusted[ev.adjusts_event_id] = (total + ev.cost_nano_usd, ev.price_version)
    out: list[UsageEvent] = []
    seen: set[str] = set()
    for ev in events:
        if ev.kind != USAGE or not ev.price_version or ev.event_id in already_adjusted or ev.event_id in seen:
            continue
        seen.add(ev.event_id)
        extra, version = adjusted.get(ev.event_id, (0, ev.price_version))
        adj = _adjust(ev, extra, version, catalog,
                      call_options(ev) if call_options else CallOptions.of(ev), now_ms)
        if adj is not None:
            out.append(adj)
    return out


def _price_now(catalog: Catalog, ev: UsageEvent) -> Price | None:
    model = ev.model_served or ev.model_requested
    for provider in (ev.provider or None, None):
        try:
            return catalog.price_at(model, ev.ts_start_ms, provider)
        except UnknownModel:
            continue
    return None


def _charge(tokens: Tokens, price: Price, opts: CallOptions) -> int:
    """Nano-USD."""
    return cost(tokens, price, service_tier=opts.service_tier, batch=opts.batch,
                web_search_calls=opts.web_search_calls).nano_usd


def _v1_micro(nano: int) -> int:
    """How a schema-v1 proxy rounded a charge: to the micro, half to even."""
    q, r = divmod(nano, NANO_PER_MICRO)
    return q + (r > NANO_PER_MICRO // 2 or (r == NANO_PER_MICRO // 2 and q % 2 == 1))


def _reproduces(ev: UsageEvent, recomputed_nano: int) -> bool:
    if ev.schema_version < 2:
        return _v1_micro(recomputed_nano) == ev.cost_micro_usd
    return recomputed_nano == ev.cost_nano_usd


def _adjust(ev: UsageEvent, extra: int, charged_version: str, catalog: Catalog,
            opts: CallOptions, now_ms: int | None) -> UsageEvent | None:
    """``extra``: nanos of the adjustments already made to ``ev``."""
    current = _price_now(catalog, ev)
    if current is None or current.version == charged_version:
        return None
    old = catalog.by_version(charged_version)
    reproduced = old is not None and (
        _reproduces(ev, _charge(ev.tokens, old, opts)) if charged_version == ev.price_version
        else _charge(ev.tokens, old, opts) == ev.cost_nano_usd + extra)
    if not reproduced:
        log.warning("rerate skipped: charge not reproducible",
                    extra={"event": "rerate_skipped", "event_id": ev.event_id, "price_version": charged_version})
        return None
    delta = _charge(ev.tokens, current, opts) - (ev.cost_nano_usd + extra)
    if delta == 0:
        return None
    return ev.with_(
        event_id=new_event_id(now_ms), kind=ADJUSTMENT, adjusts_event_id=ev.event_id,
        tokens=Tokens(), cost_nano_usd=delta, price_version=current.version, schema_version=SCHEMA_VERSION,
        cost_estimated=False, latency_ms=0, ttft_ms=None,
    )
