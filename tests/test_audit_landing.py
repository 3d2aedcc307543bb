"""Config changes land in ClickHouse's audit_log from the running embedded gateway."""
from __future__ import annotations

import asyncio
import uuid

from llmgw.analytics import audit, store
from llmgw.analytics.audit_landing import AuditLanding
from llmgw.core.config import ConfigRecord
from llmgw.ledger.configlog import FileConfigLog
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
        # a landing started afresh (a restart) reads the history once and stores nothing again
        restarted = AuditLanding(FileConfigLog(tmp_path / "config.jsonl"), dsn)
        assert await restarted.land_new() == 0
        again = await asyncio.to_thread(audit.recent, client, database, 50, ("budget",))
        assert len(again) == 3
    finally:
        await h.stop()


async def test_landing_reads_only_what_was_appended(tmp_path, chdb_dsn):
    """An idle log costs nothing: a pass after the first decodes no record; a new record lands alone,
    with its ``before`` taken from the history the landing already read."""
    database = "audit_" + uuid.uuid4().hex[:8]
    dsn = f"{chdb_dsn}?database={database}"
    store.migrate(store.connect(dsn), database)
    log = FileConfigLog(tmp_path / "config.jsonl")
    for usd in (1, 2):
        log.append_sync(ConfigRecord.put("budget", "user:alice:day", {"limit_micro_usd": usd * 1_000_000}))
    landing = AuditLanding(log, dsn)
    assert await landing.land_new() == 2
    size = log.path.stat().st_size
    assert landing.position == size
    log.path.write_bytes(log.path.read_bytes() + b'{"id": "budget:x", "type": "budget", "data": {"torn"')
    assert await landing.land_new() == 0 and landing.position == size     # a torn line waits
    log.path.write_bytes(log.path.read_bytes()[:size])
    log.append_sync(ConfigRecord.put("budget", "user:alice:day", None, actor="ops"))
    assert await landing.land_new() == 1
    rows = await asyncio.to_thread(audit.recent, store.connect(dsn), database, 50, ("budget",))
    [deletion] = [r for r in rows if r["after"] is None]
    assert deletion["before"] == {"limit_micro_usd": 2_000_000} and deletion["actor"] == "ops"
