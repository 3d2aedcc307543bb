"""Calls through the real gateway land in ClickHouse, and spend read back there (CLI functions and the
admin endpoints) agrees with the ledger's folded totals to the micro-dollar."""
from __future__ import annotations

import asyncio
import csv
import io
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from llmgw.analytics import queries, store
from llmgw.core import events as E
from llmgw.core.windows import window_start
from tests.admin_support import OWNER_KEY, Api, admin_with_role
from tests.fake_provider import Reply, Usage
from tests.fixtures.chdb import usage_event
from tests.gateway_harness import GatewayHarness

CALLS = [  # (workspace, user, tags, usage)
    ("backend", "alice", "project:apollo", Usage(input=1200, cache_read=300, output=250)),
    ("backend", "alice", "project:apollo", Usage(input=90, output=15_000, reasoning=900)),
    ("backend", "bob", "project:zeus", Usage(input=4321, output=123)),
    ("ml", "carol", "", Usage(input=77_777, cache_write_5m=1000, cache_write_1h=2000, output=5)),
    ("ml", "alice", "project:apollo", Usage(input=10, output=10)),
]


class Gateway:
    def __init__(self, harness: GatewayHarness, database: str, http: aiohttp.ClientSession) -> None:
        self.h, self.database = harness, database
        self.owner = Api(http, harness.url, OWNER_KEY)
        self.client = store.connect(harness.settings.analytics_dsn)

    async def landed(self, count: int, timeout_s: float = 30.0) -> list[E.UsageEvent]:
        """The ledger's events, once ClickHouse holds all ``count`` of them (the hook inserts after the fold)."""
        events = await self.h.events()
        assert len(events) == count
        async with asyncio.timeout(timeout_s):
            while True:
                rows = await asyncio.to_thread(queries.spend, self.client, self.database, [], 0, 2**62)
                if rows and rows[0].requests == count:
                    return events
                await asyncio.sleep(0.05)


@pytest.fixture
async def gateway(fake_provider: Any, tmp_path: Any, chdb_dsn: str) -> AsyncIterator[Gateway]:
    database = f"t_{uuid.uuid4().hex[:12]}"
    h = GatewayHarness(fake_provider, tmp_path, analytics=True, admin_key=OWNER_KEY,
                       clickhouse_dsn=f"{chdb_dsn}?database={database}")
    await h.start()
    try:
        async with aiohttp.ClientSession() as http:
            yield Gateway(h, database, http)
    finally:
        await h.stop()
        store.connect(chdb_dsn).command(f"DROP DATABASE IF EXISTS {database} SYNC")
        store.disconnect(chdb_dsn, database=database)


async def _traffic(g: Gateway) -> int:
    """The CALLS through both SDKs, plus one refused call; returns the number of events."""
    keys = {}
    for workspace, user, _, _ in CALLS:
        if (workspace, user) not in keys:
            keys[(workspace, user)] = g.h.key("acme", workspace, user)[0]
    g.h.budget("user:dave", "day", "0.000001")
    dave, _ = g.h.key("acme", "backend", "dave")
    for n, (workspace, user, tags, usage) in enumerate(CALLS):
        g.h.fake.script(Reply(usage=usage))
        headers = {"x-llmgw-tags": tags, "x-llmgw-session": f"sess-{user}"} if tags else {}
        if n % 2:
            client = anthropic.AsyncAnthropic(base_url=g.h.url, api_key=keys[(workspace, user)], max_retries=0)
            await client.messages.create(model="claude-haiku-4-5", max_tokens=20_000, extra_headers=headers,
                                         messages=[{"role": "user", "content": "hi"}])
        else:
            oai = openai.AsyncOpenAI(base_url=g.h.url + "/v1", api_key=keys[(workspace, user)], max_retries=0)
            await oai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                              extra_headers=headers)
    with pytest.raises(anthropic.RateLimitError):
        await anthropic.AsyncAnthropic(base_url=g.h.url, api_key=dave, max_retries=0).messages.create(
            model="claude-haiku-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}])
    return len(CALLS) + 1


async def test_spend_and_chargeback_agree_with_the_ledger(gateway: Gateway) -> None:
    g = gateway
    events = await g.landed(await _traffic(g))
    assert [e.outcome for e in events].count(E.REJECTED_BUDGET) == 1
    folded = g.h.gw.ledger.view.folded
    now_ms = events[-1].ts_start_ms
    days = {window_start("day", e.ts_start_ms) for e in events}
    for day in days:                                        # one day, unless the test straddles midnight UTC
        for dim in ("user", "workspace"):
            rows = queries.spend(g.client, g.database, [dim], day, day + 86_400_000, org="acme")
            assert rows, dim
            for row in rows:
                ledger = folded.get(f"{dim}|acme/{row.dims[dim]}|day|{day}")
                assert row.cost_micro_usd == (ledger.spend_micro_usd if ledger else 0), (dim, row)
            stored = {f"{dim}|acme/{row.dims[dim]}|day|{day}" for row in rows}
            keys = [k for k in folded if k.startswith(f"{dim}|acme/") and k.endswith(f"|day|{day}")]
            assert keys and set(keys) <= stored                 # and nothing the ledger counted is missing
    month_start = window_start("month", now_ms)
    month = time.strftime("%Y-%m", time.gmtime(now_ms / 1000))
    out = io.StringIO()
    total = queries.write_chargeback_csv(
        queries.chargeback_rows(g.client, g.database, month, ["workspace", "tag:project"], org="acme"), out)
    ledger_month = folded[f"org|acme|month|{month_start}"]
    assert total.cost_nano_usd == ledger_month.spend_nano_usd == sum(e.cost_nano_usd for e in events)
    assert total.cost_micro_usd == ledger_month.spend_micro_usd
    assert total.requests == ledger_month.requests + 1      # the refusal is a row (cost 0), not spend

    # The same over HTTP, as finance reads it.
    finance = await admin_with_role(g.owner, "fin", "finance")
    status, body = await finance.get(f"/admin/spend?by=user&since={day}&until={day + 86_400_000}&org=acme")
    assert status == 200, body
    assert {r["user"]: r["cost_micro_usd"] for r in body["rows"]} == {
        r.dims["user"]: r.cost_micro_usd for r in queries.spend(g.client, g.database, ["user"], day,
                                                                 day + 86_400_000, org="acme")}
    assert body["total"]["cost_micro_usd"] == sum(r["cost_micro_usd"] for r in body["rows"])
    assert all(type(r["cost_micro_usd"]) is int for r in body["rows"])
    status, text = await finance.get(f"/admin/chargeback.csv?month={month}&by=workspace,tag:project&org=acme")
    assert status == 200
    assert text == out.getvalue()                           # byte for byte what `llmgw chargeback` writes
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[-1]["month"] == "TOTAL" and int(rows[-1]["cost_micro_usd"]) == ledger_month.spend_micro_usd


async def test_roles_and_scopes(gateway: Gateway) -> None:
    g = gateway
    await g.landed(await _traffic(g))
    viewer = await admin_with_role(g.owner, "vic", "viewer")
    ml_admin = await admin_with_role(g.owner, "mia", "workspace_admin", "acme/ml")
    assert (await viewer.get("/admin/spend?by=workspace"))[0] == 200
    status, body = await viewer.get("/admin/chargeback.csv?month=2026-11")
    assert status == 403 and body["error"]["type"] == "permission_error"
    status, body = await ml_admin.get("/admin/spend?by=workspace,user")
    assert status == 200 and {r["workspace"] for r in body["rows"]} == {"ml"}
    status, body = await g.owner.as_(None).get("/admin/spend")
    assert status == 401 and "admin credential" in body["error"]["message"]
    client_key, _ = g.h.key("acme", "backend", "eve")
    assert (await g.owner.as_(client_key).get("/admin/spend"))[0] == 401
    status, body = await g.owner.get("/admin/spend?by=colour")
    assert status == 400 and "cannot group by 'colour'" in body["error"]["message"]
    assert (await g.owner.get("/admin/spend?since=yesterday"))[0] == 400
    assert (await g.owner.get("/admin/chargeback.csv?month=2026-13"))[0] == 400
    # one workspace, as the API prints it (ORG/NAME), or NAME with org; a bare NAME is refused with that form
    for query in ("workspace=acme/backend", "workspace=workspace:acme/backend", "workspace=backend&org=acme"):
        status, body = await viewer.get(f"/admin/spend?by=workspace,user&{query}")
        assert status == 200 and {r["workspace"] for r in body["rows"]} == {"backend"}, (query, body)
        assert {r["user"] for r in body["rows"]} == {"alice", "bob", "dave"}
    status, body = await viewer.get("/admin/spend?workspace=backend")
    assert status == 400 and "ORG/NAME" in body["error"]["message"] and "acme/backend" in body["error"]["message"]
    status, body = await ml_admin.get("/admin/spend?workspace=acme/backend")
    assert status == 403 and "outside this admin's scope" in body["error"]["message"]
    month = time.strftime("%Y-%m", time.gmtime())
    status, text = await g.owner.get(f"/admin/chargeback.csv?month={month}&by=workspace&workspace=acme/ml")
    assert status == 200 and [r["workspace"] for r in csv.DictReader(io.StringIO(text))] == ["ml", ""]


async def test_chargeback_streams_a_large_month(gateway: Gateway) -> None:
    g = gateway
    sink_events = [usage_event(i, workspace=f"ws-{i:05d}", tags=(f"project:p{i % 7}",)) for i in range(4000)]
    await asyncio.to_thread(_insert, g, sink_events)
    out = io.StringIO()
    queries.write_chargeback_csv(queries.chargeback_rows(g.client, g.database, "2026-11",
                                                         ["workspace", "tag:project"]), out)
    url = f"{g.h.url}/admin/chargeback.csv?month=2026-11&by=workspace,tag:project"
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers={"Authorization": f"Bearer {OWNER_KEY}"}) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/csv")
            assert resp.headers.get("Transfer-Encoding") == "chunked"       # streamed, not buffered whole
            assert 'filename="chargeback-2026-11.csv"' in resp.headers["Content-Disposition"]
            text = await resp.text()
    assert len(text) > 200_000 and text == out.getvalue()
    assert text.splitlines()[-1].startswith("TOTAL,,,4000,")
    # A client that leaves mid-stream does not wedge the export client.
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers={"Authorization": f"Bearer {OWNER_KEY}"}) as resp:
            await resp.content.read(1000)
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers={"Authorization": f"Bearer {OWNER_KEY}"}) as resp:
            assert await resp.text() == out.getvalue()


def _insert(g: Gateway, events: list[E.UsageEvent]) -> None:
    from llmgw.analytics.sink import Sink
    Sink(g.client, g.database).insert(events)
