"""Routes of the ops part: ``/metrics``, ``/readyz``, the observing middleware, the ledger hook.

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

from ..context import GATEWAY
from .health import is_kafka, ledger_state
from .observe import observe
from .otel import otel_hook
from .state import OPS, Ops

log = logging.getLogger("llmgw.ops")
STARTUP_WAIT_MAX_S = 30.0     # below the Kubernetes startupProbe budget (deploy/k8s/gateway.yaml: 60 s)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[OPS].metrics.registry)
    return web.Response(body=body, headers={"content-type": CONTENT_TYPE_LATEST})


async def readyz(request: web.Request) -> web.Response:
    ops = request.app[OPS]
    gw = ops.gateway
    state = ledger_state(gw.ledger if gw else None, gw is not None, ops.snapshot_max_age_s)
    return web.json_response(state.body(), status=200 if state.ready else 503)


async def ops_ctx(app: web.Application) -> AsyncIterator[None]:
    """Runs after the gateway's context (the ledger has started): watch its events."""
    ops = app[OPS]
    gw = app[GATEWAY]
    ops.bind(gw)
    await _await_snapshot(gw.ledger, min(gw.settings.snapshot_max_age_s, STARTUP_WAIT_MAX_S))
    if gw.settings.otel and (hook := otel_hook()) is not None:
        ops.hooks.append(hook)
    ledger = gw.ledger
    own = "submit" in getattr(ledger, "__dict__", {})
    inner = ledger.submit

    def submit(event):  # type: ignore[no-untyped-def]
        inner(event)
        ops.on_event(event)

    try:
        ledger.submit = submit  # type: ignore[method-assign]
    except AttributeError:
        log.error("cannot observe %s.submit: usage-event metrics are off", type(ledger).__name__,
                  extra={"event": "ops_observe_unavailable"})
    try:
        yield
    finally:
        # the gateway's context stops the ledger after this; in-flight handlers are done by now
        if getattr(ledger, "submit", None) is submit:
            if own:
                ledger.submit = inner  # type: ignore[method-assign]
            else:
                del ledger.submit
        ops.gateway = None


async def _await_snapshot(ledger: object, timeout_s: float) -> None:
    """Kafka mode: open the listener only once the budget snapshot is read (about a second), so a fresh
    replica does not refuse its first calls as "never loaded". Past ``timeout_s`` (Kafka down at start)
    it starts anyway: not ready, and the failure policy decides."""
    if not is_kafka(ledger) or getattr(ledger, "snapshot_ready", True):
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not getattr(ledger, "snapshot_ready", True):
        if loop.time() >= deadline:
            log.warning("starting without a budget snapshot after %.0f s: not ready until Kafka answers",
                        timeout_s, extra={"event": "ops_start_without_snapshot"})
            return
        await asyncio.sleep(0.05)


def register(app: web.Application) -> None:
    """Add this part's routes and middlewares to the gateway app."""
    app[OPS] = Ops()
    app.middlewares.append(observe)
    app.cleanup_ctx.append(ops_ctx)
    app.router.add_get("/metrics", metrics, allow_head=False)
    app.router.add_get("/readyz", readyz, allow_head=False)
