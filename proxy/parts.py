"""The background parts a gateway runs beside serving, one aiohttp cleanup context each.

Each part is built here, from the settings and the gateway, and nowhere else:
the analytics process (embedded mode), the alert evaluator (embedded mode), the audit trail landing in ClickHouse
(embedded mode with analytics), the captured-bodies writer, and the proxy count
from Kafka heartbeats. The parts themselves (``ledger.alerting``,
``analytics.audit_landing``, ``analytics.bodies``, ``ledger.presence``) know
nothing of the app; ``create_app`` lists these contexts in order.
"""
from __future__ import annotations

import asyncio
from typing import AsyncIterator, Callable, Coroutine

from aiohttp import web

from llmgw.analytics import store
from llmgw.analytics.audit_landing import land_forever
from llmgw.analytics.bodies import BodySink
from llmgw.analytics.supervisor import AnalyticsProcess, runs_apart
from llmgw.ledger.alerting import AlertEngine, AlertOptions, AlertsSlot, supervise
from llmgw.ledger.alert_store import FileAlertStore
from llmgw.ledger.configlog import open_config_log
from llmgw.ledger.presence import Presence
from llmgw.core.settings import Settings

from .context import GATEWAY

CleanupContext = Callable[[web.Application], AsyncIterator[None]]
# The embedded alert evaluator, for the dashboard to read its fired alerts.
ALERTS = web.AppKey("alerts", AlertsSlot)


async def _owned(coro: Coroutine[None, None, None], name: str) -> AsyncIterator[None]:
    """Run ``coro`` for the app's lifetime: cancelled and awaited when the app stops."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def analytics_process_ctx(settings: Settings) -> CleanupContext:
    """Embedded mode with analytics: ClickHouse and its inserts in a child process
    (``analytics/process.py``), up before the ledger starts and stopped after it flushed."""
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        if not runs_apart(settings):
            yield
            return
        location = store.serve_through(settings.analytics_dsn)
        proc = AnalyticsProcess(settings)
        try:
            await proc.start()
            async for _ in _owned(proc.supervise(), "llmgw-analytics-process"):
                yield
        finally:
            await proc.stop()
            store.stop_serving_through(location)
    return ctx


async def alerts_ctx(app: web.Application) -> AsyncIterator[None]:
    """Embedded mode: the alert evaluator on the embedded ledger's folded spend
    (Kafka mode runs it apart: ``llmgw alerts run``)."""
    gw = app[GATEWAY]
    options = AlertOptions.from_file_config(gw.settings.file_config)
    if not gw.settings.embedded or not options.enabled:
        yield
        return
    data_dir = gw.settings.data_dir
    engine = supervise(lambda: AlertEngine(FileAlertStore(data_dir), options, gw.tz_of),
                       lambda: gw.ledger.view.folded, gw.config, slot=app[ALERTS])
    async for _ in _owned(engine, "llmgw-alerts"):
        yield


async def audit_landing_ctx(app: web.Application) -> AsyncIterator[None]:
    """Embedded mode with analytics: config changes land in ClickHouse's audit_log
    (Kafka mode: ``llmgw sink`` does it)."""
    s = app[GATEWAY].settings
    if not (s.embedded and s.analytics):
        yield
        return
    async for _ in _owned(land_forever(open_config_log(s.data_dir), s.analytics_dsn), "llmgw-audit-landing"):
        yield


def capture_ctx(sink: BodySink | None) -> CleanupContext:
    """Opted-in bodies are written in batches; the last batch is flushed at shutdown."""
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        if sink is None:
            yield
            return
        async for _ in _owned(sink.run(), "llmgw-capture"):
            yield
        await sink.flush()
    return ctx


async def presence_ctx(app: web.Application) -> AsyncIterator[None]:
    """Kafka mode: the budget policy's proxy count follows the heartbeats of live gateways
    (unless the config file pins ``policy.proxies``)."""
    gw = app[GATEWAY]
    s = gw.settings
    if s.embedded or "proxies" in (s.file_config.get("policy") or {}):
        yield
        return
    opts = s.file_config.get("presence") or {}
    presence = Presence(s.kafka_bootstrap, f"{s.topic_prefix}.proxies", s.gateway_id, gw.policy.proxies.set,
                        float(opts.get("interval_s", 2.0)), float(opts.get("ttl_s", 10.0)))
    async for _ in _owned(presence.run(), "llmgw-presence"):
        yield


__all__ = ["ALERTS", "AlertsSlot", "alerts_ctx", "analytics_process_ctx", "audit_landing_ctx", "capture_ctx", "presence_ctx"]
