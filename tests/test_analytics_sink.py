"""Sink: every field lands, integers stay exact, and re-deliveries never count twice."""
from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmgw.analytics import queries
from llmgw.analytics.sink import COLUMN_NAMES, Sink
from llmgw.core.events import ADJUSTMENT, REJECTED_BUDGET, Tokens, new_event_id
from tests.fixtures.chdb import NOV_4_MS, AnalyticsDB, usage_event

EVERYTHING = (0, 2**62)
GRAINS = ("minute", "hour", "day")


def _raw_rows(db: AnalyticsDB) -> int:
    """Stored rows before any merge, duplicates included."""
    return int(db.client.query(f"SELECT count() FROM {db.database}.usage_events").result_rows[0][0])


def _rollup_totals(db: AnalyticsDB, grain: str, org: str = "acme") -> tuple[int, int]:
    row = db.client.query(
        f"SELECT sum(requests), sum(cost_micro_usd) FROM {db.database}.usage_by_{grain} WHERE org = {{org:String}}",
        parameters={"org": org}).result_rows[0]
    return int(row[0]), int(row[1])


def _spend_total(db: AnalyticsDB, org: str | None = None) -> tuple[int, int]:
    rows = queries.spend(db.client, db.database, [], *EVERYTHING, org=org)
    return (rows[0].requests, rows[0].cost_micro_usd) if rows else (0, 0)


def test_sink_columns_match_the_table(analytics_db: AnalyticsDB) -> None:
    described = analytics_db.client.query(
        f"SELECT name, type FROM system.columns WHERE database = '{analytics_db.database}' "
        "AND table = 'usage_events' AND default_kind NOT IN ('ALIAS', 'MATERIALIZED') AND name != 'inserted_at' "
        "ORDER BY position").result_rows
    assert tuple(name for name, _ in described) == COLUMN_NAMES


def test_every_field_round_trips(analytics_db: AnalyticsDB) -> None:
    event = usage_event(1, service_tier="priority", web_search_calls=2)
    bare = usage_event(2, ttft_ms=None, tags=(), stream=False, usage_estimated=True, model_served="",
                       outcome=REJECTED_BUDGET, http_status=429, tokens=Tokens(), cost_micro_usd=0)
    assert analytics_db.sink.insert([event, bare]) == 2
    result = analytics_db.client.query(
        f"SELECT {', '.join(COLUMN_NAMES)}, model, cost_usd, total_tokens, inserted_at > '2020-01-01' "
        f"FROM {analytics_db.database}.usage_events ORDER BY event_id")
    got = [dict(zip(result.column_names, row)) for row in result.result_rows]
    assert got[0]["event_id"] == event.event_id and got[0]["org"] == "acme"
    assert got[0]["tags"] == ["project:apollo", "team:core"]
    assert got[0]["tag_map"] == {"project": "apollo", "team": "core"}
    assert (got[0]["cache_write_1h_tokens"], got[0]["reasoning_tokens"]) == (10, 7)
    assert got[0]["cost_micro_usd"] == 1_234_568 and str(got[0]["cost_usd"]) == "1.234568000"
    assert got[0]["cost_nano_usd"] == 1_234_568_000 and got[0]["schema_version"] == 2
    assert (got[0]["service_tier"], got[0]["web_search_calls"]) == ("priority", 2)
    assert (got[1]["service_tier"], got[1]["web_search_calls"], got[1]["cost_nano_usd"]) == ("", 0, 0)
    assert got[0]["total_tokens"] == event.tokens.total
    assert got[0]["model"] == "claude-sonnet-4-5" and got[1]["model"] == "claude-sonnet"   # fallback
    assert (got[0]["ttft_ms"], got[1]["ttft_ms"]) == (120, None)
    assert (got[0]["stream"], got[1]["stream"], got[1]["usage_estimated"]) == (True, False, True)
    assert got[1]["tag_map"] == {} and got[1]["outcome"] == "rejected_budget"
    ts = analytics_db.client.query(
        f"SELECT toUnixTimestamp64Milli(ts_start), toUnixTimestamp64Milli(ts_end) "
        f"FROM {analytics_db.database}.usage_events WHERE event_id = {{id:String}}",
        parameters={"id": event.event_id}).result_rows
    assert ts == [(event.ts_start_ms, event.ts_end_ms)]


def test_totals_are_exact_integers(analytics_db: AnalyticsDB) -> None:
    # Costs that would drift as floats: 0.1 USD + 0.2 USD, and values past 2**53 micro-USD in sum.
    events = [usage_event(i, cost_micro_usd=c) for i, c in
              enumerate([100_000, 200_000, 2**52 + 1, 2**52 + 3, -7])]
    analytics_db.sink.insert(events)
    [row] = queries.spend(analytics_db.client, analytics_db.database, [], *EVERYTHING)
    assert type(row.cost_micro_usd) is int
    assert row.cost_micro_usd == sum(e.cost_micro_usd for e in events) == 2**53 + 300_000 - 3
    assert row.tokens.input == sum(e.tokens.input for e in events)
    assert row.cost_usd == queries.format_usd(2**53 + 300_000 - 3)


def test_same_event_in_two_batches_counts_once(analytics_db: AnalyticsDB) -> None:
    """Without the known-id filter both copies are stored; exact queries still count one."""
    sink = Sink(analytics_db.client, analytics_db.database, skip_known=False)
    a, b, c = usage_event(1), usage_event(2), usage_event(3)
    sink.insert([a, b], dedup_token="kafka:usage:0:10-11")
    sink.insert([b, c], dedup_token="kafka:usage:0:12-13")      # b re-delivered at a new offset
    assert _raw_rows(analytics_db) == 4                          # not merged yet
    expected = (3, a.cost_micro_usd + b.cost_micro_usd + c.cost_micro_usd)
    assert _spend_total(analytics_db) == expected
    [row] = queries.chargeback_rows(analytics_db.client, analytics_db.database, "2026-11", by=[])
    assert (row.requests, row.cost_micro_usd) == expected


def test_known_events_are_not_sent_again(analytics_db: AnalyticsDB) -> None:
    """With the filter (the default) the rollups are exact too."""
    a, b, c = usage_event(1), usage_event(2), usage_event(3)
    assert analytics_db.sink.insert([a, b], dedup_token="kafka:usage:0:10-11") == 2
    assert analytics_db.sink.insert([b, c], dedup_token="kafka:usage:0:12-13") == 1
    assert analytics_db.sink.insert([a, b, c]) == 0
    expected = (3, a.cost_micro_usd + b.cost_micro_usd + c.cost_micro_usd)
    assert _raw_rows(analytics_db) == 3
    assert _spend_total(analytics_db) == expected
    for grain in GRAINS:
        assert _rollup_totals(analytics_db, grain) == expected


def test_resent_batch_with_same_token_is_inserted_once_rollups_included(analytics_db: AnalyticsDB) -> None:
    """The token alone (known-id filter off) drops the re-sent batch everywhere."""
    sink = Sink(analytics_db.client, analytics_db.database, skip_known=False)
    batch = [usage_event(i) for i in range(5)]
    for _ in range(3):
        sink.insert(batch, dedup_token="kafka:usage:2:100-104")
    expected = (5, sum(e.cost_micro_usd for e in batch))
    assert _raw_rows(analytics_db) == 5
    for grain in GRAINS:
        assert _rollup_totals(analytics_db, grain) == expected


def test_resent_batch_across_a_month_boundary(analytics_db: AnalyticsDB) -> None:
    sink = Sink(analytics_db.client, analytics_db.database, skip_known=False)
    october = usage_event(0, ts_start_ms=NOV_4_MS - 3 * 86_400_000 - 1, event_id=new_event_id())
    batch = [october, usage_event(1), usage_event(2)]
    sink.insert(batch, dedup_token="t")
    sink.insert(list(reversed(batch)), dedup_token="t")          # order does not matter
    assert _raw_rows(analytics_db) == 3
    assert _rollup_totals(analytics_db, "day") == (3, sum(e.cost_micro_usd for e in batch))
    [oct_row] = queries.chargeback_rows(analytics_db.client, analytics_db.database, "2026-10", by=[])
    assert oct_row.cost_micro_usd == october.cost_micro_usd


def test_retry_after_a_partial_insert(analytics_db: AnalyticsDB) -> None:
    """The first attempt stored only some events; the retry adds exactly the rest."""
    batch = [usage_event(i) for i in range(6)]
    analytics_db.sink.insert(batch[:4], dedup_token="kafka:usage:1:0-5")
    assert analytics_db.sink.insert(batch, dedup_token="kafka:usage:1:0-5") == 2
    expected = (6, sum(e.cost_micro_usd for e in batch))
    assert _raw_rows(analytics_db) == 6
    assert _spend_total(analytics_db) == expected
    for grain in GRAINS:
        assert _rollup_totals(analytics_db, grain) == expected


def test_duplicates_inside_one_batch_and_bad_events(analytics_db: AnalyticsDB) -> None:
    a = usage_event(1)
    assert analytics_db.sink.insert([a, a, a]) == 1
    assert analytics_db.sink.insert([]) == 0
    with pytest.raises(ValueError, match="negative token count"):
        analytics_db.sink.insert([usage_event(2, tokens=Tokens(input=-1))])
    with pytest.raises(ValueError, match="without event_id"):
        analytics_db.sink.insert([usage_event(3, event_id="")])
    assert _raw_rows(analytics_db) == 1


def test_adjustments_and_refusals(analytics_db: AnalyticsDB) -> None:
    call = usage_event(1)
    refund = usage_event(2, kind=ADJUSTMENT, adjusts_event_id=call.event_id, tokens=Tokens(),
                         cost_micro_usd=-34_567)
    refused = usage_event(3, outcome=REJECTED_BUDGET, model_served="", tokens=Tokens(), cost_micro_usd=0)
    analytics_db.sink.insert([call, refund, refused])
    assert _spend_total(analytics_db) == (2, call.cost_micro_usd - 34_567)   # an adjustment is not a request
    assert _rollup_totals(analytics_db, "hour") == (2, call.cost_micro_usd - 34_567)
    rejected = analytics_db.client.query(
        f"SELECT sum(requests_rejected), sum(requests_ok) FROM {analytics_db.database}.usage_by_day").result_rows
    assert rejected == [(1, 1)]


# Replays, splits and overlaps of one set of events: totals stay those of the unique events.
_batches = st.lists(st.lists(st.integers(0, 11), min_size=1, max_size=8), min_size=1, max_size=6)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=_batches, resend=st.lists(st.integers(0, 5), max_size=3), skip_known=st.booleans())
def test_redelivery_never_double_counts(analytics_db: AnalyticsDB, batches: list[list[int]],
                                        resend: list[int], skip_known: bool) -> None:
    org = f"org-{new_event_id()}"          # each example in its own org: one database serves them all
    pool = [usage_event(i, org=org, event_id=new_event_id()) for i in range(12)]
    sink = Sink(analytics_db.client, analytics_db.database, skip_known=skip_known)
    sent = [[pool[i] for i in batch] for batch in batches]
    for n, batch in enumerate(sent):
        sink.insert(batch, dedup_token=f"kafka:usage:0:{n}")
    for n in resend:                        # a consumer restart re-sends batches with their tokens
        if n < len(sent):
            sink.insert(sent[n], dedup_token=f"kafka:usage:0:{n}")
    unique = {e.event_id: e for batch in sent for e in batch}
    expected = (len(unique), sum(e.cost_micro_usd for e in unique.values()))
    assert _spend_total(analytics_db, org=org) == expected
    if skip_known:                          # the rollups are exact when the sink filters known events
        for grain in GRAINS:
            assert _rollup_totals(analytics_db, grain, org=org) == expected


def test_token_names_the_caller_month_and_events() -> None:
    from llmgw.analytics.sink import _token  # the token format is internal; check its shape once
    token = _token("kafka:usage:0:1-2", "202611", [usage_event(1), usage_event(2)])
    assert re.fullmatch(r"kafka:usage:0:1-2\|202611\|2\|[0-9a-f]{32}", token)
    assert token != _token("kafka:usage:0:1-2", "202611", [usage_event(1), usage_event(3)])


@given(st.integers(min_value=-(10 ** 12), max_value=253_402_300_799_999))
def test_the_month_of_an_event_is_the_utc_month_of_its_start(ts_start_ms: int) -> None:
    """The month names the partition and is part of the dedup token: it must not change with how it
    is computed (per day, cached)."""
    from datetime import datetime, timezone

    from llmgw.analytics.sink import _month
    expected = datetime.fromtimestamp(ts_start_ms // 1000, tz=timezone.utc).strftime("%Y%m")
    assert _month(usage_event(0, ts_start_ms=ts_start_ms)) == expected


async def test_embedded_hook_inserts_ledger_batches(analytics_db: AnalyticsDB) -> None:
    from llmgw.analytics.embedded import analytics_hook
    on_batch = await analytics_hook(f"{analytics_db.dsn}?database={analytics_db.database}")
    batch = [usage_event(i) for i in range(3)]
    await on_batch(batch, 0, 900)
    await on_batch(batch, 0, 900)                 # the ledger retries a batch
    await on_batch(batch[1:], 300, 900)           # a replay after restart, cut differently
    assert _raw_rows(analytics_db) == 3
    assert _rollup_totals(analytics_db, "minute") == (3, sum(e.cost_micro_usd for e in batch))
