"""Re-rating: correct past charges with ADJUSTMENT events, never by rewriting an event.

An event is re-rated when the price version in force at its time (``ts_start_ms``,
the instant the proxy prices a call at) is no longer the one it was charged with,
i.e. a correction was loaded with an ``effective_from`` at or before the call.
A price change effective AFTER the call does not touch it.

The adjustment carries ``cost_micro_usd = corrected - charged``, zero tokens (so
token totals are not doubled), the original's attribution fields and time, a
fresh ``event_id``, ``adjusts_event_id`` = the original's id and
``price_version`` = the version it corrects to.

Idempotence: ids in ``already_adjusted`` are skipped outright. Adjustments found
in ``events`` themselves are folded in first: the original then counts as charged
``cost + adjustments`` at the last adjustment's version, so running ``rerate``
again over its own output adds nothing, and a second correction adds only the
difference from the first.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import AbstractSet, Callable, Iterable

from ledger.events import ADJUSTMENT, USAGE, Tokens, UsageEvent, new_event_id
from pricing.catalog import Catalog, UnknownModel
from pricing.cost import cost
from pricing.price import Price

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CallOptions:
    """How a call was billed beyond its tokens; the usage event does not record these."""

    service_tier: str | None = None
    batch: bool = False
    web_search_calls: int = 0


def rerate(events: Iterable[UsageEvent], catalog: Catalog, *,
           already_adjusted: AbstractSet[str] = frozenset(),
           call_options: Callable[[UsageEvent], CallOptions] | None = None,
           now_ms: int | None = None) -> list[UsageEvent]:
    """ADJUSTMENT events for the usage events whose price version ``catalog`` supersedes.

    ``call_options`` tells the service tier, batch flag and web-search calls of
    an event (default: none). Before correcting, the charge is recomputed from
    the version it names; an event whose charge cannot be reproduced that way
    (unknown options, a version missing from the catalog) is skipped and logged
    rather than corrected by a guess.
    """
    events = list(events)
    adjusted: dict[str, tuple[int, str]] = {}          # original id -> (sum of adjustments, last version)
    for ev in sorted((e for e in events if e.kind == ADJUSTMENT), key=lambda e: e.event_id):
        total, _ = adjusted.get(ev.adjusts_event_id, (0, ""))
        adjusted[ev.adjusts_event_id] = (total + ev.cost_micro_usd, ev.price_version)
    out: list[UsageEvent] = []
    seen: set[str] = set()
    for ev in events:
        if ev.kind != USAGE or not ev.price_version or ev.event_id in already_adjusted or ev.event_id in seen:
            continue
        seen.add(ev.event_id)
        extra, version = adjusted.get(ev.event_id, (0, ev.price_version))
        adj = _adjust(ev, ev.cost_micro_usd + extra, version, catalog,
                      call_options(ev) if call_options else CallOptions(), now_ms)
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
    return cost(tokens, price, service_tier=opts.service_tier, batch=opts.batch,
                web_search_calls=opts.web_search_calls).micro_usd


def _adjust(ev: UsageEvent, charged: int, charged_version: str, catalog: Catalog,
            opts: CallOptions, now_ms: int | None) -> UsageEvent | None:
    current = _price_now(catalog, ev)
    if current is None or current.version == charged_version:
        return None
    old = catalog.by_version(charged_version)
    if old is None or _charge(ev.tokens, old, opts) != charged:
        log.warning("rerate skipped: charge not reproducible",
                    extra={"event": "rerate_skipped", "event_id": ev.event_id, "price_version": charged_version})
        return None
    delta = _charge(ev.tokens, current, opts) - charged
    if delta == 0:
        return None
    return ev.with_(
        event_id=new_event_id(now_ms), kind=ADJUSTMENT, adjusts_event_id=ev.event_id,
        tokens=Tokens(), cost_micro_usd=delta, price_version=current.version,
        cost_estimated=False, latency_ms=0, ttft_ms=None,
    )
