"""Routes of the ops part: ``/metrics``, ``/readyz``, the observing middleware.

``/healthz`` (liveness: the process answers) stays in ``proxy/app.py``.
``/readyz`` is readiness: 200 when this replica can decide budgets, 503 with
a JSON ``reason`` otherwise (the ledger has not started; in Kafka mode the
snapshot is not caught up yet, or is older than ``LLMGW_SNAPSHOT_MAX_AGE_S``).
"""
from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from llmgw.ledger.driver import Ledger

from ..context import GATEWAY
from .health import NOT_STARTED, ledger_state
from .otel import otel_hook
from .state import OPS

log = logging.getLogger("llmgw.ops")
STARTUP_WAIT_MAX_S = 30.0     # below the Kubernetes startupProbe budget (deploy/k8s/gateway.yaml: 60 s)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[OPS].metrics.registry)
    return web.Response(body=body, headers={"content-type": CONTENT_TYPE_LATEST})


async def readyz(request: web.Request) -> web.Response:
    ops = request.app[OPS]
    gw = ops.gateway
    state = ledger_state(gw.ledger.health() if gw else NOT_STARTED, gw is not None, ops.snapshot_max_age_s)
    return web.json_response(state.body(), status=200 if state.ready else 503)


async def ops_ctx(app: web.Application) -> AsyncIterator[None]:
    """Runs after the gateway's context (the ledger has started); the gateway already shows
    ``Ops.on_event`` every usage event (the composition root made it an observer)."""
    ops = app[OPS]
    gw = app[GATEWAY]
    ops.bind(gw)
    await _await_snapshot(gw.ledger, min(gw.settings.snapshot_max_age_s, STARTUP_WAIT_MAX_S))
    if gw.settings.otel and (hook := otel_hook()) is not None:
        ops.hooks.append(hook)
    try:
        yield
    finally:
        ops.gateway = None


async def _await_snapshot(ledger: Ledger, timeout_s: float) -> None:
    """Kafka mode: open the listener only once the budget snapshot is read (about a second), so a fresh
    replica does not refuse its first calls as "never loaded". Past ``timeout_s`` (Kafka down at start)
    it starts anyway: not ready, and the failure policy decides."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not ledger.health().snapshot_ready:
        if loop.time() >= deadline:
            log.warning("starting without a budget snapshot after %.0f s: not ready until Kafka answers",
                        timeout_s, extra={"event": "ops_start_without_snapshot"})
            return
        await asyncio.sleep(0.05)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/metrics", metrics, allow_head=False)
    router.add_get("/readyz", readyz, allow_head=False)
