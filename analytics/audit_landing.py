"""Landing the audit trail in ClickHouse, next to the usage events.

The config log is the truth for who changed what; ClickHouse keeps it after
Kafka compaction has dropped superseded records. A task re-reads the log's
history every few seconds and lands whatever is new: ``insert_records``
skips entries already stored, so re-landing the same history adds nothing.
The embedded gateway runs it in-process; in Kafka mode ``llmgw sink`` does.
"""
from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

from aiohttp import web

from analytics import audit, store
from ledger.configlog import ConfigLog, open_config_log
from proxy.admin.audit import read_history
from proxy.context import GATEWAY

log = logging.getLogger("llmgw.audit")


async def land_forever(config_log: ConfigLog, dsn: str, database: str | None = None,
                       interval_s: float = 5.0) -> None:
    landed = -1
    while True:
        try:
            records = await read_history(config_log)
            if len(records) != landed:
                client = await asyncio.to_thread(store.connect, dsn, database=database)
                n = await asyncio.to_thread(audit.insert_records, client, str(client.database), records)
                landed = len(records)
                if n:
                    log.info("landed %d audit entries in ClickHouse", n)
        except Exception:          # keep trying: the log and the store are both allowed to be away
            log.exception("could not land the audit log in ClickHouse; retrying")
        await asyncio.sleep(interval_s)


def register(app: web.Application) -> None:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        s = app[GATEWAY].settings
        if not (s.embedded and s.analytics):
            yield
            return
        task = asyncio.get_running_loop().create_task(
            land_forever(open_config_log(s.data_dir), s.analytics_dsn), name="llmgw-audit-landing")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    app.cleanup_ctx.append(ctx)
