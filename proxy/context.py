"""The gateway's long-lived state, owned by the app and handed to the pipeline.

One ``Gateway`` per process: settings, the routing table, the price catalog,
the config state followed from the config log, the ledger (embedded or
Kafka), the budget and failure policies, the observers every usage event is
shown to, and one pooled HTTP session per upstream. The composition root
(``proxy/app.py``) builds it; nothing sets its parts from outside afterwards.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import aiohttp
from aiohttp import web

from llmgw.core.config import ConfigState
from llmgw.core.events import UsageEvent, normalize_tags
from llmgw.ledger.driver import Ledger
from llmgw.core.windows import org_zones
from llmgw.pricing import Catalog, Price, UnknownModel

from llmgw.core.capture import CapturedCall
from .errors import AuthError, BadRequest
from .failure import FailurePolicy, stale_tags
from llmgw.core.principal import Principal
from llmgw.proxy.keys import authenticate, presented_key
from .policy import Policy
from .routing import RoutingTable, Target, Upstream
from .h1 import H1Transport
from .transport import AiohttpTransport, Transport
from llmgw.core.settings import Settings


class KeySession(Protocol):
    """A long-lived connection made with one gateway key (a Responses WebSocket): the Gateway asks
    it to re-check its key whenever the config changes, and it ends itself if the key is gone."""

    key_id: str

    def recheck(self) -> None: ...


class CaptureSink(Protocol):
    """Where opted-in request/response bodies go (``analytics/bodies.py``)."""

    def put(self, call: CapturedCall) -> None: ...


EventObserver = Callable[[UsageEvent], None]


@dataclass
class Gateway:
    settings: Settings
    routing: RoutingTable
    catalog: Catalog
    ledger: Ledger
    config: ConfigState
    policy: Policy = field(init=False)
    sessions: dict[str, aiohttp.ClientSession] = field(default_factory=dict)
    org_timezones: dict[str, str] = field(default_factory=dict)
    capture_sink: CaptureSink | None = None     # None: bodies cannot be stored (no analytics)
    # Shown every usage event right after the ledger took it (metrics, OpenTelemetry); must not raise.
    observers: tuple[EventObserver, ...] = ()
    failure: FailurePolicy = field(init=False)
    # open WebSocket sessions by key id: each registers on open and leaves on close (proxy/websocket.py)
    key_sessions: dict[str, set[KeySession]] = field(default_factory=dict)
    # False while the config came from the local cache (Kafka away at start; ledger/config_cache.py)
    config_current: bool = True
    # Every upstream's HTTP calls go through this one instead of the network (tests: proxy/transport.py).
    transport: Transport | None = None
    _transports: dict[str, H1Transport | AiohttpTransport] = field(default_factory=dict)   # to the network
    # called after every config change, once the policy has reloaded (the batch book holds open batches again)
    config_listeners: list[Callable[[], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._refresh_zones()
        self.policy = Policy.from_config(self.ledger.view, self.config, self.tz_of,
                                         self.settings.file_config.get("policy"))
        self.failure = FailurePolicy.from_config(self.settings.file_config)

    def emit(self, event: UsageEvent, request: web.Request | None = None) -> None:
        """The one way a usage event leaves a call: to the ledger, then to each observer, and to
        the request's own list for its access log line. Synchronous: safe in a ``finally``."""
        self.ledger.submit(event)
        for observe in self.observers:
            observe(event)
        if request is not None and (mine := request.get(CALL_EVENTS)) is not None:
            mine.append(event)

    def stale_tags(self, principal: Principal) -> tuple[str, ...]:
        """The failure policy for a call while the spend snapshot may be stale: () as usual,
        ``llmgw:stale`` to serve blind (fail_open), or ``LedgerUnavailable`` (fail_closed)."""
        return stale_tags(self.failure, self.ledger.health(), principal)

    def tz_of(self, org: str) -> str:
        return self.org_timezones.get(org, "UTC")

    def _refresh_zones(self) -> None:
        """In place: the ledger was handed this same dict (proxy/app.py), so it folds by the new zone too."""
        zones = org_timezones(dict(self.settings.file_config), self.config)
        if zones != self.org_timezones:
            self.org_timezones.clear()
            self.org_timezones.update(zones)

    def config_changed(self) -> None:
        """Rebuild indexes derived from the config log (called by the follower, on every replica),
        and have every open session re-check its key: a revoked or expired key's sessions end."""
        self._refresh_zones()
        self.policy.reload(self.config)
        for listen in self.config_listeners:
            listen()
        for sessions in list(self.key_sessions.values()):
            for s in list(sessions):
                s.recheck()

    def session_opened(self, s: KeySession) -> None:
        self.key_sessions.setdefault(s.key_id, set()).add(s)

    def session_closed(self, s: KeySession) -> None:
        sessions = self.key_sessions.get(s.key_id)
        if sessions is not None:
            sessions.discard(s)
            if not sessions:
                del self.key_sessions[s.key_id]

    def authenticate(self, request: web.Request) -> Principal:
        key = presented_key(request.headers)
        if not key:
            raise AuthError("missing API key: send your gateway key as `x-api-key` or `Authorization: Bearer`")
        p = authenticate(self.config, key, int(time.time() * 1000))
        if p is None:
            raise AuthError("invalid, revoked or expired gateway API key")
        return p

    @staticmethod
    def header_tags(request: web.Request) -> tuple[str, ...]:
        raw = request.headers.get("x-llmgw-tags", "")
        return normalize_tags([t for t in raw.split(",") if t.strip()]) if raw else ()

    @classmethod
    def client_tags(cls, request: web.Request, body_tags: tuple[str, ...]) -> tuple[str, ...]:
        """Tags the caller chose (header and body metadata). Names starting with
        ``llmgw`` are the gateway's own (e.g. ``llmgw:stale``): a client cannot set them."""
        return tuple(t for t in (*body_tags, *cls.header_tags(request)) if not t.startswith("llmgw"))

    def price(self, target: Target, model: str, ts_ms: int) -> tuple[Price, bool]:
        s = self.settings
        try:
            return self.catalog.resolve(target.price_model, ts_ms, provider=target.upstream.price_provider,
                                        policy=s.unknown_model,  # type: ignore[arg-type]
                                        fallback_entry=s.fallback_price or None)
        except UnknownModel:
            # 400, not 404: the model may well exist upstream, and clients such as
            # Claude Code show a 400's message where they hide a 404 behind "model not found"
            raise BadRequest(f"model {model!r} has no price in the gateway's catalog, so its cost cannot be capped; "
                           "add it with `llmgw pricing import` or set LLMGW_UNKNOWN_MODEL=fallback "
                           "with LLMGW_FALLBACK_PRICE") from None

    def session(self, upstream: Upstream) -> aiohttp.ClientSession:
        s = self.sessions.get(upstream.name)
        if s is None:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.settings.connect_timeout_s,
                                            sock_read=self.settings.first_byte_timeout_s)
            # No cookie jar: a session is shared by every caller, so a cookie one caller's
            # response set (Cloudflare's __cf_bm) would otherwise ride on the next caller's call.
            s = aiohttp.ClientSession(timeout=timeout, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
                                      connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300))
            self.sessions[upstream.name] = s
        return s

    def transport_for(self, upstream: Upstream) -> Transport:
        """How a call reaches ``upstream`` over HTTP: its pooled connections, unless a transport was given."""
        if self.transport is not None:
            return self.transport
        t = self._transports.get(upstream.name)
        if t is None:
            s = self.settings          # upstream_client is one of the two: Settings checks it
            t = self._transports[upstream.name] = (
                H1Transport(s.connect_timeout_s, s.first_byte_timeout_s) if s.upstream_client == "h1"
                else AiohttpTransport(self.session(upstream)))
        return t

    async def close_sessions(self) -> None:
        for s in self.sessions.values():
            await s.close()
        self.sessions.clear()
        for t in self._transports.values():
            t.close()
        self._transports.clear()


def org_timezones(file_config: dict[str, Any], state: ConfigState | None = None) -> dict[str, str]:
    """Each org's time zone (``core.windows.org_zones``): its org record's, else the config file's."""
    return org_zones(file_config, [r.data for r in state.of_type("org")] if state is not None else ())


def prices_path(settings: Settings) -> Path | None:
    if settings.prices:
        return Path(settings.prices)
    p = Path(settings.data_dir) / "prices.json"
    return p if p.exists() else None


GATEWAY = web.AppKey("gateway", Gateway)
REQUEST_ID = web.RequestKey("request_id", str)
# The usage events a request produced, for its access log line (set by the ops middleware).
CALL_EVENTS = web.RequestKey("call_events", list)
