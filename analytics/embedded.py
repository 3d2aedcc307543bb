"""The embedded gateway's in-process analytics hook: each durable ledger batch goes to ClickHouse.

Used only with ``LLMGW_ANALYTICS_PROCESS=0`` (or an in-memory store): by default the analytics
process (``analytics/process.py``) reads the ledger log and inserts, outside the gateway.

``ledger.embedded.EmbeddedLedger(on_batch=await analytics_hook(dsn))`` calls the
hook with each batch and its log positions ``[first, end)``. The position
range is the token, as a Kafka offset range is for the sink consumer. After a
restart the ledger replays from the last position it marked, in batches cut
differently, and the sink's known-id filter keeps those from counting twice.
ClickHouse calls block, so they run in a worker thread.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from llmgw.analytics import store
from llmgw.analytics.sink import Sink
from llmgw.core.events import UsageEvent

BatchHook = Callable[[Sequence[UsageEvent], int, int], Awaitable[None]]


async def analytics_hook(dsn: str, database: str | None = None) -> BatchHook:
    """Connect, apply the schema, and return the ledger's ``on_batch`` callable."""
    client = await asyncio.to_thread(store.connect, dsn, database=database)
    sink = Sink(client, str(client.database))
    await asyncio.to_thread(sink.ensure_schema)

    async def on_batch(events: Sequence[UsageEvent], first: int, end: int) -> None:
        await asyncio.to_thread(sink.insert, events, f"embedded:{first}-{end}")

    return on_batch


__all__ = ["BatchHook", "analytics_hook"]
