"""Writes captured bodies (``core/capture.py``) to ClickHouse's ``call_bodies``, in batches.

The composition root (``proxy/app.py``) builds one when analytics is on and
hands it to the gateway as its ``capture_sink``. Capture is a debugging aid, not the ledger: a batch that
cannot be written is logged and dropped, never retried at the cost of memory.
"""
from __future__ import annotations

import asyncio
import logging

from llmgw.analytics import store
from llmgw.core.capture import CapturedCall

log = logging.getLogger("llmgw.capture")
_COLUMNS = ("event_id", "ts", "org", "workspace", "api", "request", "response", "truncated")


class BodySink:
    def __init__(self, dsn: str, max_pending: int = 10_000) -> None:
        self.dsn = dsn
        self.max_pending = max_pending
        self.pending: list[CapturedCall] = []
        self.dropped = 0
        self._migrated = False

    def put(self, call: CapturedCall) -> None:
        if len(self.pending) >= self.max_pending:
            self.dropped += 1
            return
        self.pending.append(call)

    def _insert(self, batch: list[CapturedCall]) -> None:
        client = store.connect(self.dsn)
        if not self._migrated:
            store.migrate(client, str(client.database))
            self._migrated = True
        rows = [[c.event_id, c.ts_ms, c.org, c.workspace, c.api, c.request, c.response, c.truncated]
                for c in batch]
        client.insert("call_bodies", rows, column_names=_COLUMNS, database=str(client.database),
                      column_type_names=["String", "DateTime64(3, 'UTC')", "LowCardinality(String)",
                                         "LowCardinality(String)", "LowCardinality(String)", "String", "String",
                                         "Bool"])

    async def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        try:
            await asyncio.to_thread(self._insert, batch)
        except Exception:
            log.exception("dropped %d captured bodies: the analytics store failed", len(batch))

    async def run(self, interval_s: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.flush()
