"""``create_app``: the composition root. Every part of the gateway is built here from plain
imports and listed in order: the middlewares, the cleanup contexts (each long-lived client
and background task has one owner), the routes. Nothing registers itself."""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
from itertools import chain
from typing import AsyncIterator, Awaitable, Callable

from aiohttp import web

from llmgw.proxy.reports import web as analytics_web
from llmgw.analytics.bodies import BodySink
from llmgw.analytics.supervisor import runs_apart
from llmgw.ledger.configlog import open_config_log
from llmgw.ledger.driver import Ledger
from llmgw.pricing import load_catalog

from . import batches, failover, holds, parts, pipeline, providers
from .admin import routes as admin_routes
from .admin.runtime import admin_ctx
from .adapters.anthropic_messages import AnthropicCountTokens, AnthropicMessages
from .adapters.openai_chat import OpenAIChat, is_codex
from .adapters.openai_embeddings import OpenAIEmbeddings
from .adapters.openai_responses import OpenAIResponses
from .context import GATEWAY, REQUEST_ID, EventObserver, Gateway, org_timezones, prices_path
from .errors import GatewayError, HeaderTooLarge, NoRoute
from .ops import routes as ops_routes
from .ops.observe import observe
from .ops.state import OPS, Ops
from .routing import RoutingTable, Target
from .transport import Transport
from llmgw.core.settings import Settings
from .types import Adapter
from .websocket import responses_ws

log = logging.getLogger("llmgw.proxy")
ADAPTER = web.RequestKey("adapter", object)
_OPENAI = OpenAIChat()
_ANTHROPIC = AnthropicMessages()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _adapter_for(request: web.Request) -> Adapter:
    a: Adapter | None = request.get(ADAPTER)
    if a is not None:
        return a
    return _ANTHROPIC if "anthropic-version" in request.headers else _OPENAI


# Request ids need uniqueness, not secrecy: they are shown to the client (x-llmgw-request-id), logged,
# and looked up only behind admin auth (/admin/trace). So, like core.events' event ids, a PRNG seeded
# from os.urandom and reseeded in a forked worker; secrets.token_hex cost a getrandom syscall a request.
_request_ids = random.Random()
os.register_at_fork(after_in_child=_request_ids.seed)


def new_request_id() -> str:
    """``req_`` and 96 random bits in hex."""
    return f"req_{_request_ids.getrandbits(96):024x}"


@web.middleware
async def error_edge(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place a ``GatewayError`` becomes a response, in the caller's API shape."""
    request[REQUEST_ID] = rid = new_request_id()
    try:
        _check_header_sizes(request)
        resp = await handler(request)
    except GatewayError as err:
        resp = _render(request, err)
    except web.HTTPNotFound:
        resp = _render(request, NoRoute(f"no route for {request.method} {request.path}: the gateway serves "
                                        "/v1/chat/completions, /v1/responses, /v1/embeddings, /v1/messages and "
                                        "/v1/models (is the client's base URL right?)"))
    except web.HTTPMethodNotAllowed:
        resp = _render(request, NoRoute(f"no route for {request.method} {request.path} "
                                        f"({request.method} is not supported there)"))
    if not resp.prepared:
        resp.headers["x-llmgw-request-id"] = rid
    return resp


# aiohttp's parser refuses a header over 8190 bytes by closing the connection at once; with the
# rest of the request still unread, the kernel then resets it, and the client (seen on Python 3.12)
# gets ECONNRESET instead of the 400. So the parser takes up to 1 MiB and the gateway answers 431
# itself, in the caller's API shape, after reading the request like any other refusal.
PARSER_MAX_FIELD_BYTES = 1024 * 1024
HEADER_MAX_BYTES = 8190


def _check_header_sizes(request: web.Request) -> None:
    # All of a request's header bytes within the limit (the usual case, counted in C) leave no
    # single header over it: a decoded name or value is never longer than its bytes.
    if sum(map(len, chain.from_iterable(request.raw_headers))) <= HEADER_MAX_BYTES:
        return
    for name, value in request.headers.items():
        if len(name) + len(value) > HEADER_MAX_BYTES:
            raise HeaderTooLarge(f"header {name[:64]} is {len(value)} bytes; the gateway takes at most "
                                 f"{HEADER_MAX_BYTES} per header")


def _render(request: web.Request, err: GatewayError) -> web.Response:
    adapter = _adapter_for(request)
    err.client = "codex" if is_codex(request.headers) else ""
    resp = web.Response(status=err.status, body=adapter.error_body(err), content_type="application/json",
                        headers=err.response_headers())
    if err.close_connection:
        resp.force_close()
    return resp


def model_route(adapter: Adapter) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        request[ADAPTER] = adapter
        return await pipeline.handle(request, adapter)
    return handler


async def list_models(request: web.Request) -> web.StreamResponse:
    """``GET /v1/models`` is asked by both SDKs: the anthropic-version header tells which."""
    gw = request.app[GATEWAY]
    adapter = _adapter_for(request)
    request[ADAPTER] = adapter
    gw.authenticate(request)
    up = gw.routing.default(adapter.family)
    path = "/v1/models" if adapter.family == "anthropic" else "/models"
    return await pipeline.passthrough(request, gw, Target(up, ""), path)


async def probe(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def gateway_ctx(settings: Settings, ledger: Ledger | None, observers: tuple[EventObserver, ...] = (),
                capture_sink: BodySink | None = None,
                transport: Transport | None = None) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        config_log = open_config_log(settings.data_dir, settings.kafka_bootstrap, settings.topic_prefix)
        if settings.embedded:
            state, current = await config_log.load(), True
        else:    # Kafka away at start: the last config this replica applied, and the failure policy
            from llmgw.ledger.config_cache import ConfigCache, follow_cached, load_or_cached
            cache = ConfigCache(settings.data_dir, f"{settings.topic_prefix}.config")
            state, current = await load_or_cached(config_log, cache)
        tzs = org_timezones(dict(settings.file_config), state)
        led = ledger or await _default_ledger(settings, tzs)
        gw = Gateway(settings, RoutingTable.from_settings(settings), load_catalog(prices_path(settings)),
                     led, state, org_timezones=tzs, capture_sink=capture_sink, observers=observers,
                     transport=transport)
        gw.config_current = current
        app[GATEWAY] = gw
        await led.start()
        follow = (config_log.follow(state, gw.config_changed) if settings.embedded else
                  follow_cached(config_log, cache, state, current, gw.config_changed,
                                on_current=lambda: setattr(gw, "config_current", True)))
        follower = asyncio.get_running_loop().create_task(follow, name="llmgw-config-follow")
        try:
            yield
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
            await led.stop()
            await gw.close_sessions()
    return ctx


async def hold_sweeper_ctx(app: web.Application) -> AsyncIterator[None]:
    """Frees holds nobody settled (proxy/holds.py) for as long as the gateway runs."""
    gw = app[GATEWAY]
    sweeper = asyncio.get_running_loop().create_task(holds.sweep_forever(gw.policy, holds.hold_max_age_s(gw.settings)),
                                                     name="llmgw-hold-sweeper")
    try:
        yield
    finally:
        sweeper.cancel()
        await asyncio.gather(sweeper, return_exceptions=True)


# CPython runs a young-generation collection every 700 net container allocations, and one call
# allocates hundreds that reference counting frees anyway (parsed JSON, events, dicts): at 64
# concurrent chat calls the collector took ~8% of the gateway's CPU (gc.callbacks over 10 s of
# load: 717 young collections). At 10,000 the same load ran 10, and the collector took under 1%.
# Cyclic garbage waits longer before it is freed: at most this many objects' worth.
GC_YOUNG_THRESHOLD = 10_000


async def young_gc_ctx(app: web.Application) -> AsyncIterator[None]:
    """The collector's young threshold raised to ``GC_YOUNG_THRESHOLD`` (never lowered) while the
    gateway serves, the process's own restored after (tests run many gateways in one process)."""
    before = gc.get_threshold()
    gc.set_threshold(max(before[0], GC_YOUNG_THRESHOLD), *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


async def _default_ledger(settings: Settings, tzs: dict[str, str]) -> Ledger:
    tz_of = lambda org: tzs.get(org, "UTC")  # noqa: E731
    if settings.embedded:
        from llmgw.ledger.embedded import EmbeddedLedger
        hook = None
        if settings.analytics and not runs_apart(settings):     # else the analytics process reads the log
            from llmgw.analytics.embedded import analytics_hook
            hook = await analytics_hook(settings.analytics_dsn)
        return EmbeddedLedger(settings.data_dir, tz_of=tz_of, on_batch=hook)
    from llmgw.ledger.kafka_ledger import KafkaLedger
    return KafkaLedger.from_settings(settings, tz_of=tz_of)


def create_app(settings: Settings, ledger: Ledger | None = None, transport: Transport | None = None) -> web.Application:
    ops = Ops()
    # Bodies can be captured (per workspace, opt-in) wherever an analytics store is reachable.
    capture = BodySink(settings.analytics_dsn) if settings.analytics or not settings.embedded else None
    # error_edge renders every GatewayError in the caller's API shape; admin paths have their own
    # shape; observe (access log, metrics) sees model-API errors before error_edge renders them, and
    # admin answers after admin_errors has, so an admin 400/403/409 counts by its real status.
    app = web.Application(middlewares=[error_edge, observe, admin_routes.admin_errors],
                          client_max_size=settings.max_body_bytes,
                          handler_args={"max_field_size": PARSER_MAX_FIELD_BYTES})
    app[OPS] = ops
    app[parts.ALERTS] = parts.AlertsSlot()
    app.cleanup_ctx.extend([
        parts.analytics_process_ctx(settings),
        gateway_ctx(settings, ledger, observers=(ops.on_event,), capture_sink=capture, transport=transport),
        batches.batches_ctx(settings),
        admin_ctx,
        ops_routes.ops_ctx,
        parts.alerts_ctx,
        parts.audit_landing_ctx,
        parts.capture_ctx(capture),
        parts.presence_ctx,
        hold_sweeper_ctx,
        young_gc_ctx,
    ])
    r = app.router
    r.add_route("HEAD", "/", probe)
    r.add_route("HEAD", "/api/hello", probe)
    r.add_get("/healthz", healthz)
    r.add_post("/v1/messages", model_route(AnthropicMessages()))
    r.add_post("/v1/messages/count_tokens", model_route(AnthropicCountTokens()))
    r.add_post("/v1/chat/completions", model_route(OpenAIChat()))
    r.add_post("/v1/responses", model_route(OpenAIResponses()))
    r.add_post("/v1/embeddings", model_route(OpenAIEmbeddings()))
    r.add_get("/v1/models", list_models, allow_head=False)
    r.add_get("/v1/responses", responses_ws, allow_head=False)
    admin_routes.add_routes(r)
    ops_routes.add_routes(r)
    analytics_web.add_routes(app)
    providers.add_routes(r, ADAPTER)
    batches.add_routes(r, ADAPTER)
    ops.metrics.registry.register(failover.HealthCollector(app))     # upstream health, read at scrape
    return app
