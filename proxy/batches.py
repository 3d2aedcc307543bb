"""HTTP routes of the Batch APIs: OpenAI Files + Batches, Anthropic Message Batches.

    /v1/files                              POST upload, GET list          (OpenAI)
    /v1/files/{id}[/content]               GET, DELETE                    (OpenAI)
    /v1/batches[/{id}[/cancel]]            POST create, GET, POST cancel  (OpenAI)
    /v1/messages/batches[/{id}[/cancel|/results]]                         (Anthropic)

Each call is authenticated with the caller's gateway key and forwarded to the family's default
upstream with the gateway's own credential (a batch and its files live in one provider account, so
routes and failover do not apply). A caller sees only the files and batches its workspace made
through the gateway. Creating a batch prices every request at the batch rate with its own output
limit (the worst case), refuses in the client's error shape before any upstream call if that does
not fit a budget, and holds it until the batch is charged (proxy/batch_book.py). A batch is charged
when the gateway sees it ended: on a retrieve, a list, a cancel or a results download, or when the
poller finds it ended. Listing, reading and deleting files costs nothing.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any, Awaitable, Callable, Mapping

import aiohttp
import orjson
from aiohttp import web

from llmgw.core.config import ConfigState
from llmgw.pricing import RequestShape, worst_case

from . import forward
from .adapters._batch import BatchRequest, BatchState
from .adapters.anthropic_batch import BATCHES_PATH, AnthropicBatches
from .adapters.openai_batch import OpenAIBatches, plain_id
from .call import call_tags, rejected_outcome
from .batch_book import CHARGED, CHARGING, BatchBook, Bound, Submitted, batch_event, open_batch_log, refused_event
from .context import GATEWAY, Gateway
from .errors import GatewayError, NotFound, UpstreamError
from llmgw.core.principal import Principal
from .pipeline import read_body
from .policy import Estimate
from .routing import Target, Upstream
from .transport import UpstreamResponse
from llmgw.core.settings import Settings

log = logging.getLogger("llmgw.proxy")
BOOK = web.AppKey("batch_book", BatchBook)
_OPENAI, _ANTHROPIC = OpenAIBatches(), AnthropicBatches()
_LIST_QUERY = ("after", "limit", "order", "purpose", "before_id", "after_id")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def batches_ctx(settings: Settings) -> Callable[[web.Application], Any]:
    """The batch log, loaded and followed for as long as the app runs, open batches held from the start,
    and the poller that charges the ones that end (every ``LLMGW_BATCH_POLL_S``; 0 turns it off)."""
    async def ctx(app: web.Application) -> Any:
        gw = app[GATEWAY]
        blog = open_batch_log(settings.data_dir, settings.kafka_bootstrap, settings.topic_prefix)
        book = BatchBook(blog, ConfigState())
        app[BOOK] = book
        gw.config_listeners.append(lambda: book.rehold(gw.policy))
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(_follow(gw, book), name="llmgw-batch-follow")]
        if not settings.kafka_bootstrap:             # embedded: the log is loaded before the first call
            await book.loaded.wait()
        if settings.batch_poll_s > 0:
            tasks.append(loop.create_task(poll_forever(gw, book, settings.batch_poll_s), name="llmgw-batch-poll"))
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return ctx


async def _follow(gw: Gateway, book: BatchBook) -> None:
    """Load the batch log, hold its open batches, follow it; a log that is away (Kafka down at start)
    is retried, and the gateway serves meanwhile (batch reads answer 404 until it is loaded)."""
    while True:
        try:
            book.state = await book.log.load()
            break
        except Exception:        # top of a background loop: log and retry
            log.exception("batch log unavailable; retrying", extra={"event": "batch_log_unavailable"})
            await asyncio.sleep(1.0)
    book.reconcile(gw.policy)
    book.loaded.set()
    await book.log.follow(book.state, lambda: book.reconcile(gw.policy))


# -- the upstream --------------------------------------------------------------
def _query(request: web.Request) -> str:
    return forward.client_query(request.query, _LIST_QUERY)


async def _send(gw: Gateway, up: Upstream, method: str, path: str, headers: Mapping[str, str],
                body: bytes | None = None, query: str = "") -> tuple[int, bytes, UpstreamResponse]:
    """One whole request to the upstream with the gateway's credential; the body read to the end."""
    target = Target(up, "")
    url = up.url(path, query)
    out = forward.upstream_headers(headers, target)
    await up.sign(method, url, out, body)
    try:
        async with await gw.transport_for(up).send(method, url, body, out) as resp:
            raw = await resp.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UpstreamError(f"upstream {up.name} failed: {type(exc).__name__}") from None
    return resp.status, forward.scrub_error_body(resp.status, raw, target), resp


def _answer(status: int, body: bytes, resp: UpstreamResponse) -> web.Response:
    return web.Response(status=status, body=body, headers=forward.downstream_headers(resp, {}))


def _object(raw: bytes) -> dict[str, Any] | None:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


# -- submission ----------------------------------------------------------------
def _price_worst(gw: Gateway, up: Upstream, p: Principal, reqs: list[BatchRequest], now_ms: int) -> int:
    """The batch's worst case: each request at the batch tier with its own output limit."""
    total = 0
    for r in reqs:
        gw.policy.check_model(p, r.call.model)
        price, _ = gw.price(Target(up, up.catalog_model(r.call.model)), r.call.model, now_ms)
        c = r.call
        total += worst_case(price, RequestShape(len(c.body), c.max_output_tokens, "batch", c.image_count,
                                                c.web_search, n=c.choices))
    return total


async def _admit_and_forward(request: web.Request, wire: str, api: str, endpoint: str, up: Upstream,
                             p: Principal, reqs: list[BatchRequest], path: str, body: bytes,
                             state_of: Callable[[dict[str, Any]], BatchState | None]) -> web.Response:
    gw, book = request.app[GATEWAY], request.app[BOOK]
    now_ms = int(time.time() * 1000)
    worst = _price_worst(gw, up, p, reqs, now_ms)
    stale = gw.stale_tags(p)                 # the failure policy: refuse, or tag llmgw:stale
    tags = call_tags(gw, request, p, (), stale)
    try:
        # refuses before upstream; the hold is the book's until the batch is charged, not the sweeper's
        reservation = gw.policy.reserve(p, tags, Estimate(worst, worst), now_ms, swept=False)
    except GatewayError as err:
        gw.emit(refused_event(gw, p, tags, api, up.name, reqs[0].call.model, rejected_outcome(err), err.status,
                              now_ms), request)
        raise
    kept = False
    try:
        status, raw, resp = await _send(gw, up, "POST", path, request.headers, body)
        obj = _object(raw) if status == 200 else None
        state = state_of(obj) if obj is not None else None
        if state is not None:
            models = {r.call.model for r in reqs}
            sub = Submitted(state.batch_id, wire, api, endpoint, p, tags, up.name, now_ms, worst,
                            {r.custom_id: r.call.model for r in reqs} if len(models) > 1 else {},
                            next(iter(models)), Bound.of(r.call for r in reqs))
            await book.submitted(sub, reservation)
            kept = True
        return _answer(status, raw, resp)
    finally:
        if not kept:
            gw.policy.release(reservation, 0)


async def openai_create(request: web.Request) -> web.StreamResponse:
    gw, book = request.app[GATEWAY], request.app[BOOK]
    p = gw.authenticate(request)
    body = await read_body(request, gw.settings.max_body_bytes)
    file_id, endpoint = _OPENAI.submission(body)
    if book.file_owner(file_id) != (p.org, p.workspace):
        raise NotFound(f"No such File object: {file_id}")
    up = gw.routing.default("openai")
    status, raw, _ = await _send(gw, up, "GET", f"/files/{file_id}/content", request.headers)
    if status != 200:
        raise UpstreamError(f"the gateway could not read the batch input file {file_id} back (status {status})")
    reqs = _OPENAI.requests(raw, endpoint)
    api = "batch_" + reqs[0].adapter.api
    return await _admit_and_forward(request, "openai", api, endpoint, up, p, reqs, "/batches", body, _OPENAI.state)


async def anthropic_create(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    p = gw.authenticate(request)
    body = await read_body(request, gw.settings.max_body_bytes)
    reqs = _ANTHROPIC.requests(body)
    up = gw.routing.default("anthropic")
    return await _admit_and_forward(request, "anthropic", _ANTHROPIC.api, "", up, p, reqs, BATCHES_PATH, body,
                                    _ANTHROPIC.state)


# -- charging ------------------------------------------------------------------
# What the gateway sends on the reads it makes on its own (the poller): the API version the wire needs.
_OWN_HEADERS = {"anthropic-version": "2023-06-01"}


async def charge(gw: Gateway, book: BatchBook, batch_id: str, state: BatchState,
                 headers: Mapping[str, str] = _OWN_HEADERS, results: bytes | None = None,
                 request: web.Request | None = None) -> None:
    """Charge an ended batch once: every billed result line one event, then the ``charged`` record.

    ``results``: the Anthropic results body when the client is downloading it anyway; otherwise the
    gateway reads the results itself. A read that fails leaves the batch open (held) for next time."""
    async with book.lock(batch_id):
        sub = book.batch(batch_id)
        if sub is None or sub.state == CHARGED:
            return
        up = gw.routing.upstreams.get(sub.upstream) or gw.routing.default(sub.wire)
        bodies = [results] if results is not None else await _read_results(gw, up, sub, state, headers)
        if bodies is None:
            return
        bound = sub.bound.call(sub.model)
        now_ms = int(time.time() * 1000)
        seen: set[str] = set()
        events = []
        for raw in bodies:
            lines = (_ANTHROPIC.served(raw, bound) if sub.wire == "anthropic"
                     else _OPENAI.served(raw, sub.endpoint, bound))
            for line in lines:
                if line.custom_id in seen:         # a provider repeating a line bills it once
                    continue
                seen.add(line.custom_id)
                events.append(batch_event(gw, sub, line.custom_id, line.usage, up, now_ms))
        charged_nano, billed = sum(e.cost_nano_usd for e in events), len(events)
        if sub.state == CHARGING:                  # a crash cut the last charge: only what the ledger lacks
            done = await gw.ledger.recorded({e.event_id for e in events})
            events = [e for e in events if e.event_id not in done]
        else:
            await book.put(replace(sub, state=CHARGING).record())
        for ev in events:
            gw.emit(ev, request)
        await gw.ledger.flush()                    # the events are durable before the batch is marked charged
        await book.put(replace(sub, state=CHARGED, charged_nano_usd=charged_nano,
                               events=billed, files=state.files).record())
        book.release(gw.policy, batch_id)
        log.info("batch charged", extra={"event": "batch_charged", "request_id": batch_id,
                                         "events": len(events), "worst_micro_usd": sub.worst_micro_usd})


async def _read_results(gw: Gateway, up: Upstream, sub: Submitted, state: BatchState,
                        headers: Mapping[str, str]) -> list[bytes] | None:
    paths = ([f"{BATCHES_PATH}/{sub.batch_id}/results"] if sub.wire == "anthropic"
             else [f"/files/{f}/content" for f in state.result_files])
    bodies = []
    for path in paths:
        status, raw, _ = await _send(gw, up, "GET", path, headers)
        if status != 200:
            log.warning("batch results unreadable; charged later", extra={"event": "batch_results_unread",
                                                                       "request_id": sub.batch_id, "status": status})
            return None
        bodies.append(raw)
    return bodies


async def poll_once(gw: Gateway, book: BatchBook) -> int:
    """Ask the upstream about every open batch; charge the ones that ended. Returns how many."""
    n = 0
    for sub in book.open_batches():
        up = gw.routing.upstreams.get(sub.upstream) or gw.routing.default(sub.wire)
        adapter = _OPENAI if sub.wire == "openai" else _ANTHROPIC
        path = f"/batches/{sub.batch_id}" if sub.wire == "openai" else f"{BATCHES_PATH}/{sub.batch_id}"
        status, raw, _ = await _send(gw, up, "GET", path, _OWN_HEADERS)
        obj = _object(raw) if status == 200 else None
        state = adapter.state(obj) if obj is not None else None
        if state is not None and state.ended:
            await charge(gw, book, sub.batch_id, state)
            n += 1
    return n


async def poll_forever(gw: Gateway, book: BatchBook, interval_s: float) -> None:
    """The poller's loop, owned by ``batches_ctx``: a batch is charged when it ends even if nobody
    reads it through the gateway."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await poll_once(gw, book)
        except Exception:        # top of a background loop: log and go on (the next pass retries)
            log.exception("batch poll failed", extra={"event": "batch_poll_error"})


# -- the other operations -------------------------------------------------------
def _owned_batch(request: web.Request, p: Principal, batch_id: str, not_found: str) -> Submitted:
    sub = request.app[BOOK].batch(batch_id)
    if sub is None or not sub.owned_by(p):
        raise NotFound(not_found)
    return sub


async def _batch_op(request: web.Request, wire: str, method: str, suffix: str) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    p = gw.authenticate(request)
    adapter = _OPENAI if wire == "openai" else _ANTHROPIC
    batch_id = plain_id(request.match_info["batch_id"], "batch_id")
    sub = _owned_batch(request, p, batch_id, f"No batch found with id '{batch_id}'")
    up = gw.routing.upstreams.get(sub.upstream) or gw.routing.default(wire)
    base = "/batches" if wire == "openai" else BATCHES_PATH
    status, raw, resp = await _send(gw, up, method, f"{base}/{batch_id}{suffix}", request.headers)
    if status != 200:
        return _answer(status, raw, resp)
    if suffix == "/results":
        if sub.state != CHARGED:
            await charge(gw, request.app[BOOK], batch_id, BatchState(batch_id, True), request.headers, raw, request)
        return _answer(status, raw, resp)
    obj = _object(raw)
    state = adapter.state(obj) if obj is not None else None
    if state is not None and state.ended:
        await charge(gw, request.app[BOOK], batch_id, state, request.headers, request=request)
    if wire == "anthropic" and obj is not None and _ANTHROPIC.rewrite_results_url(obj, str(request.url.origin())):
        raw = orjson.dumps(obj)
    return _answer(status, raw, resp)


async def _batch_list(request: web.Request, wire: str) -> web.StreamResponse:
    gw, book = request.app[GATEWAY], request.app[BOOK]
    p = gw.authenticate(request)
    adapter = _OPENAI if wire == "openai" else _ANTHROPIC
    up = gw.routing.default(wire)
    path = "/batches" if wire == "openai" else BATCHES_PATH
    status, raw, resp = await _send(gw, up, "GET", path, request.headers, query=_query(request))
    obj = _object(raw) if status == 200 else None
    if obj is None or not isinstance(obj.get("data"), list):
        return _answer(status, raw, resp)
    mine = []
    for item in obj["data"]:
        state = adapter.state(item) if isinstance(item, dict) else None
        sub = book.batch(state.batch_id) if state is not None else None
        if state is None or sub is None or not sub.owned_by(p):
            continue
        if state.ended and sub.state != CHARGED:
            await charge(gw, book, state.batch_id, state, request.headers, request=request)
        if wire == "anthropic":
            _ANTHROPIC.rewrite_results_url(item, str(request.url.origin()))
        mine.append(item)
    obj["data"] = mine
    return _answer(status, orjson.dumps(obj), resp)


async def file_upload(request: web.Request) -> web.StreamResponse:
    gw, book = request.app[GATEWAY], request.app[BOOK]
    p = gw.authenticate(request)
    body = await read_body(request, gw.settings.max_body_bytes)
    status, raw, resp = await _send(gw, gw.routing.default("openai"), "POST", "/files", request.headers, body)
    obj = _object(raw) if status == 200 else None
    if obj is not None and obj.get("object") == "file" and isinstance(obj.get("id"), str):
        await book.file_uploaded(obj["id"], p)
    return _answer(status, raw, resp)


async def file_list(request: web.Request) -> web.StreamResponse:
    gw, book = request.app[GATEWAY], request.app[BOOK]
    p = gw.authenticate(request)
    status, raw, resp = await _send(gw, gw.routing.default("openai"), "GET", "/files", request.headers,
                                    query=_query(request))
    obj = _object(raw) if status == 200 else None
    if obj is None or not isinstance(obj.get("data"), list):
        return _answer(status, raw, resp)
    obj["data"] = [f for f in obj["data"] if isinstance(f, dict) and isinstance(f.get("id"), str)
                   and book.file_owner(f["id"]) == (p.org, p.workspace)]
    return _answer(status, orjson.dumps(obj), resp)


def file_op(method: str, suffix: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        gw, book = request.app[GATEWAY], request.app[BOOK]
        p = gw.authenticate(request)
        file_id = plain_id(request.match_info["file_id"], "file_id")
        if book.file_owner(file_id) != (p.org, p.workspace):
            raise NotFound(f"No such File object: {file_id}")
        status, raw, resp = await _send(gw, gw.routing.default("openai"), method, f"/files/{file_id}{suffix}",
                                        request.headers)
        return _answer(status, raw, resp)
    return handler


def add_routes(r: web.UrlDispatcher, adapter_key: Any) -> None:
    """``adapter_key``: the app's request key for the adapter its error edge renders with."""

    def shaped(adapter: Any, handler: Handler) -> Handler:
        async def h(request: web.Request) -> web.StreamResponse:
            request[adapter_key] = adapter
            return await handler(request)
        return h

    o, a = _OPENAI, _ANTHROPIC
    r.add_post("/v1/files", shaped(o, file_upload))
    r.add_get("/v1/files", shaped(o, file_list), allow_head=False)
    r.add_get("/v1/files/{file_id}", shaped(o, file_op("GET", "")), allow_head=False)
    r.add_delete("/v1/files/{file_id}", shaped(o, file_op("DELETE", "")))
    r.add_get("/v1/files/{file_id}/content", shaped(o, file_op("GET", "/content")), allow_head=False)
    r.add_post("/v1/batches", shaped(o, openai_create))
    r.add_get("/v1/batches", shaped(o, lambda q: _batch_list(q, "openai")), allow_head=False)
    r.add_get("/v1/batches/{batch_id}", shaped(o, lambda q: _batch_op(q, "openai", "GET", "")), allow_head=False)
    r.add_post("/v1/batches/{batch_id}/cancel", shaped(o, lambda q: _batch_op(q, "openai", "POST", "/cancel")))
    r.add_post(BATCHES_PATH, shaped(a, anthropic_create))
    r.add_get(BATCHES_PATH, shaped(a, lambda q: _batch_list(q, "anthropic")), allow_head=False)
    r.add_get(BATCHES_PATH + "/{batch_id}", shaped(a, lambda q: _batch_op(q, "anthropic", "GET", "")),
              allow_head=False)
    r.add_delete(BATCHES_PATH + "/{batch_id}", shaped(a, lambda q: _batch_op(q, "anthropic", "DELETE", "")))
    r.add_post(BATCHES_PATH + "/{batch_id}/cancel",
               shaped(a, lambda q: _batch_op(q, "anthropic", "POST", "/cancel")))
    r.add_get(BATCHES_PATH + "/{batch_id}/results",
              shaped(a, lambda q: _batch_op(q, "anthropic", "GET", "/results")), allow_head=False)


__all__ = ["BOOK", "add_routes", "batches_ctx", "charge", "poll_once"]
