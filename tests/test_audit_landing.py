"""Config changes land in ClickHouse's audit_log from the running embedded gateway."""
from __future__ import annotations

import asyncio
import uuid

from analytics import audit, store
from ledger.configlog import ConfigRecord
from tests.gateway_harness import GatewayHarness


async def test_budget_change_lands_in_the_audit_table(fake_provider, tmp_path, chdb_dsn):
    database = "audit_" + uuid.uuid4().hex[:8]
    dsn = f"{chdb_dsn}?database={database}"
    h = GatewayHarness(fake_provider, tmp_path, analytics=True, clickhouse_dsn=dsn)
    await h.start()
    try:
        h.budget("user:alice", "day", "25")
        typo = h.budget("user:bob", "day", "5000")
        h._put(ConfigRecord.put("budget", typo.record_name, None, actor="ops", reason="remove the typo"))
        client = store.connect(dsn)
        rows: list = []
        for _ in range(100):
            rows = await asyncio.to_thread(audit.recent, client, database, 50, ("budget",))
            if len(rows) >= 3:
                break
            await asyncio.sleep(0.2)
        assert len(rows) == 3, rows
        alice = [r for r in rows if "user:alice" in r["id"]][0]
        assert alice["after"]["limit_micro_usd"] == 25_000_000 and alice["before"] is None
        [deletion] = [r for r in rows if r["after"] is None]
        assert deletion["before"]["limit_micro_usd"] == 5_000_000_000
        assert deletion["reason"] == "remove the typo" and deletion["actor"] == "ops"
        await asyncio.sleep(5.5)                              # a second landing pass adds nothing
        again = await asyncio.to_thread(audit.recent, client, database, 50, ("budget",))
        assert len(again) == 3
    finally:
        await h.stop()
