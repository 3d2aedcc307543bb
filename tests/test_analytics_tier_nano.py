"""Schema v2 in ClickHouse: the cost to the nano-USD, the served tier and web-search calls.

Before migration 006 the tier and the searches never reached ClickHouse, so spend
could not be split or re-rated by them, and a sub-micro call was stored as $0.
"""
from __future__ import annotations

import csv
import io

from llmgw.analytics import queries, store
from llmgw.analytics.queries import month_bounds_ms
from llmgw.core.events import Tokens
from llmgw.ledger.fold import fold_all
from tests.fixtures.chdb import NOV_4_MS, AnalyticsDB, usage_event

NOV_MS = month_bounds_ms("2026-11")


def _mixed() -> list:  # type: ignore[type-arg]
    """Tiny embeddings (240 nano-USD each) and chat calls at three tiers, some with web searches."""
    events = [usage_event(i, api="embeddings", model_served="text-embedding-3-small", provider="openai",
                          tokens=Tokens(input=12), cost_micro_usd=0, cost_nano_usd=240)
              for i in range(5_000)]
    tiers = ("", "priority", "flex", "priority")
    for i in range(40):
        events.append(usage_event(10_000 + i, service_tier=tiers[i % 4], web_search_calls=i % 3,
                                  workspace=("ws-a", "ws-b")[i % 2], cost_micro_usd=0,
                                  cost_nano_usd=1_234_567_891 + i))
    return events


def test_rows_carry_tier_searches_and_nanos_and_a_tier_split_sums_to_the_total(analytics_db: AnalyticsDB) -> None:
    db, client = analytics_db.database, analytics_db.client
    events = _mixed()
    assert analytics_db.sink.insert(events) == len(events)
    [[tiers, searches, nanos]] = client.query(
        f"SELECT groupUniqArray(service_tier), sum(web_search_calls), sum(cost_nano_usd) FROM {db}.usage_events FINAL"
    ).result_rows
    assert sorted(tiers) == ["", "flex", "priority"]
    assert searches == sum(e.web_search_calls for e in events) == 39
    exact = sum(e.cost_nano_usd for e in events)
    assert nanos == exact
    # 5,000 embeddings of 12 tokens: $0.0012 exactly, not the $0 that micro-USD per event gave
    [embed] = queries.spend(client, db, ["api"], *NOV_MS, org="acme")[-1:]
    assert (embed.dims["api"], embed.cost_nano_usd, embed.cost_usd) == ("embeddings", 1_200_000, "0.001200")

    by_tier = queries.spend(client, db, ["tier"], *NOV_MS)
    want: dict[str, int] = {}
    for e in events:
        want[e.service_tier] = want.get(e.service_tier, 0) + e.web_search_calls
    assert {r.dims["tier"]: r.web_search_calls for r in by_tier} == want == {"": 9, "priority": 19, "flex": 11}
    assert sum(r.cost_nano_usd for r in by_tier) == exact
    assert sum(r.requests for r in by_tier) == len(events)

    out = io.StringIO()
    total = queries.write_chargeback_csv(
        queries.chargeback_rows(client, db, "2026-11", ["workspace", "tier"]), out, by=["workspace", "tier"])
    table = list(csv.DictReader(io.StringIO(out.getvalue())))
    body, [last] = table[:-1], table[-1:]
    assert {(r["workspace"], r["tier"]) for r in body} >= {("ws-a", ""), ("ws-a", "flex"), ("ws-b", "priority")}
    assert sum(int(r["cost_nano_usd"]) for r in body) == int(last["cost_nano_usd"]) == total.cost_nano_usd == exact
    assert sum(int(r["web_search_calls"]) for r in body) == int(last["web_search_calls"]) == 39
    assert sum(int(r["requests"]) for r in body) == int(last["requests"]) == len(events)
    assert last["month"] == "TOTAL" and int(last["cost_micro_usd"]) == -(-exact // 1000)

    # the ledger folds the same nanos
    org_month = [t for k, t in fold_all(events).items() if k.startswith("org|acme|month|")]
    assert [t.spend_nano_usd for t in org_month] == [exact]
    # and the rollups carry them too (a dashboard sums nanos, not rounded-up micros)
    for grain in queries.GRAINS:
        rows = queries.rollup(client, db, grain, *NOV_MS)
        assert sum(r.cost_nano_usd for r in rows) == exact, grain
        assert sum(r.web_search_calls for r in rows) == 39, grain


def test_migration_006_keeps_rows_written_before_it(analytics_db: AnalyticsDB) -> None:
    """A store at migration 005 holding a v1 row: after 006 the row reads its micro-USD as
    nanos, standard tier and no searches, in the raw table and in the rollups."""
    client, db = analytics_db.client, f"{analytics_db.database}_old"
    try:
        old = [m for m in store.load_migrations() if m.version <= 5]
        assert store.migrate(client, db, old) == [1, 2, 3, 4, 5]
        client.command(
            f"INSERT INTO {db}.usage_events (event_id, ts_start, ts_end, org, workspace, user, key_id, provider,"
            " api, model_requested, model_served, input_tokens, output_tokens, cost_micro_usd, outcome, kind,"
            " schema_version) VALUES ('e-old', fromUnixTimestamp64Milli(toInt64({t})), fromUnixTimestamp64Milli("
            "toInt64({t})), 'acme', 'ws-a', 'ada', 'k', 'openai', 'chat', 'gpt-5', 'gpt-5', 10, 5, 4321, 'ok',"
            " 'usage', 1)".format(t=NOV_4_MS))
        assert store.migrate(client, db) == [6, 7]
        [[nano, tier, searches, usd, anomalous]] = client.query(
            f"SELECT cost_nano_usd, service_tier, web_search_calls, toString(cost_usd), usage_anomalous"
            f" FROM {db}.usage_events").result_rows
        assert (nano, tier, searches, usd, anomalous) == (4_321_000, "", 0, "0.004321", False)
        [day] = queries.rollup(client, db, "day", *NOV_MS)
        assert (day.cost_nano_usd, day.requests) == (4_321_000, 1)
        # a v2 row lands next to it, in the raw table and the (altered) rollup views
        from llmgw.analytics.sink import Sink
        Sink(client, db).insert([usage_event(1, cost_micro_usd=0, cost_nano_usd=240, service_tier="flex")])
        [day] = queries.rollup(client, db, "day", *NOV_MS)
        assert (day.cost_nano_usd, day.requests) == (4_321_240, 2)
        assert {r.dims["tier"]: r.cost_nano_usd for r in queries.spend(client, db, ["tier"], *NOV_MS)} == {
            "": 4_321_000, "flex": 240}
        assert store.migrate(client, db) == []
    finally:
        client.command(f"DROP DATABASE IF EXISTS {db} SYNC")


def test_an_anomalous_usage_flag_reaches_clickhouse(analytics_db: AnalyticsDB) -> None:
    """An analyst finds every call whose usage the gateway clamped (migration 007)."""
    db, client = analytics_db.database, analytics_db.client
    events = [usage_event(i, usage_anomalous=i % 3 == 0, cost_micro_usd=0, cost_nano_usd=1_000 + i) for i in range(9)]
    assert analytics_db.sink.insert(events) == len(events)
    rows = client.query(f"SELECT event_id, usage_anomalous FROM {db}.usage_events FINAL ORDER BY event_id").result_rows
    assert {eid: flag for eid, flag in rows} == {e.event_id: e.usage_anomalous for e in events}
    assert sum(flag for _, flag in rows) == 3
