"""Named queries: spend, trace, chargeback CSV and rollups, against rows in a real engine."""
from __future__ import annotations

import csv
import io
from decimal import Decimal

import pytest

from llmgw.analytics import queries
from llmgw.analytics.queries import CSV_METRICS, format_usd, month_bounds_ms
from llmgw.analytics.sink import Sink
from llmgw.core.events import ADJUSTMENT, Tokens
from tests.fixtures.chdb import NOV_4_MS, AnalyticsDB, usage_event

HOUR_MS = 3_600_000
NOV_MS = month_bounds_ms("2026-11")


def _population() -> list:  # type: ignore[type-arg]
    """Two orgs, three workspaces, two models, tagged and untagged, spread over two hours."""
    events = []
    for i in range(24):
        events.append(usage_event(
            i * 300,
            org="acme" if i % 4 else "globex",
            workspace=("ws-a", "ws-b", "ws-c")[i % 3],
            user=("ada", "bob")[i % 2],
            model_served=("claude-sonnet-4-5", "gpt-5")[i % 2],
            provider=("anthropic", "openai")[i % 2],
            tags=("project:apollo",) if i % 5 else ("team:core",),
            cost_micro_usd=1_000_003 * (i + 1),
        ))
    return events


def test_spend_groups_and_filters(analytics_db: AnalyticsDB) -> None:
    events = _population()
    analytics_db.sink.insert(events)
    rows = queries.spend(analytics_db.client, analytics_db.database, ["org", "workspace", "tag:project"], *NOV_MS)
    expected: dict[tuple[str, ...], list[int]] = {}
    for e in events:
        key = (e.org, e.workspace, e.tag_map().get("project", ""))
        acc = expected.setdefault(key, [0, 0, 0])
        acc[0] += 1
        acc[1] += e.cost_micro_usd
        acc[2] += e.tokens.output
    got = {tuple(v for _, v in r.group): [r.requests, r.cost_micro_usd, r.tokens.output] for r in rows}
    assert got == expected
    assert [r.cost_micro_usd for r in rows] == sorted((r.cost_micro_usd for r in rows), reverse=True)
    assert rows[0].group[2][0] == "tag:project"

    only_acme = queries.spend(analytics_db.client, analytics_db.database, ["model"], *NOV_MS, org="acme")
    assert sum(r.requests for r in only_acme) == sum(1 for e in events if e.org == "acme")
    assert {r.dims["model"] for r in only_acme} == {"claude-sonnet-4-5", "gpt-5"}


def test_spend_window_is_half_open(analytics_db: AnalyticsDB) -> None:
    events = [usage_event(0), usage_event(3600), usage_event(7200)]
    analytics_db.sink.insert(events)
    [row] = queries.spend(analytics_db.client, analytics_db.database, [], NOV_4_MS, NOV_4_MS + 2 * HOUR_MS)
    assert row.requests == 2 and row.cost_micro_usd == events[0].cost_micro_usd + events[1].cost_micro_usd
    assert queries.spend(analytics_db.client, analytics_db.database, ["user"], 0, NOV_4_MS) == []


def test_spend_rejects_unknown_groupings(analytics_db: AnalyticsDB) -> None:
    for bad in (["colour"], ["tag:"], ["org", "org"], ["event_id"]):
        with pytest.raises(ValueError):
            queries.spend(analytics_db.client, analytics_db.database, bad, *NOV_MS)


def test_trace_orders_calls_with_running_cost(analytics_db: AnalyticsDB) -> None:
    calls = [usage_event(n, session_id="sess-42", cost_micro_usd=c) for n, c in [(30, 500), (10, 1_000), (20, 250)]]
    refund = usage_event(40, session_id="sess-42", kind=ADJUSTMENT, tokens=Tokens(), cost_micro_usd=-100)
    other = usage_event(15, session_id="sess-other")
    analytics_db.sink.insert([*calls, refund, other])
    Sink(analytics_db.client, analytics_db.database, skip_known=False).insert([calls[0]])  # a re-delivered copy
    trace = queries.trace(analytics_db.client, analytics_db.database, "sess-42")
    assert [t.ts_start_ms for t in trace] == sorted(t.ts_start_ms for t in trace)
    assert [t.cost_micro_usd for t in trace] == [1_000, 250, 500, -100]
    assert [t.running_cost_micro_usd for t in trace] == [1_000, 1_250, 1_750, 1_650]
    assert trace[0].tokens == calls[1].tokens and trace[-1].kind == ADJUSTMENT
    assert queries.trace(analytics_db.client, analytics_db.database, "nope") == []


def test_trace_ref_by_request_id_finds_the_session_or_the_call_alone(analytics_db: AnalyticsDB) -> None:
    in_session = usage_event(1, session_id="sess-7", request_id="req-in", cost_micro_usd=300)
    alone = usage_event(2, session_id="", request_id="req-alone", cost_micro_usd=1_200)
    analytics_db.sink.insert([in_session, alone])
    [found] = queries.trace_ref(analytics_db.client, analytics_db.database, "req-in")
    assert found.event_id == in_session.event_id
    [call] = queries.trace_ref(analytics_db.client, analytics_db.database, "req-alone")
    assert (call.event_id, call.cost_micro_usd, call.running_cost_micro_usd) == (alone.event_id, 1_200, 1_200)
    assert call.cost_nano_usd == alone.cost_nano_usd
    assert queries.trace_ref(analytics_db.client, analytics_db.database, "req-none") == []


def test_chargeback_csv_total_is_the_exact_sum(analytics_db: AnalyticsDB) -> None:
    events = _population()
    october = usage_event(0, ts_start_ms=NOV_MS[0] - 1, workspace="ws-a")     # last ms of October
    december = usage_event(0, ts_start_ms=NOV_MS[1], workspace="ws-a")        # first ms of December
    analytics_db.sink.insert([*events, october, december])
    Sink(analytics_db.client, analytics_db.database, skip_known=False).insert(events[:5])  # re-delivered
    out = io.StringIO()
    total = queries.write_chargeback_csv(
        queries.chargeback_rows(analytics_db.client, analytics_db.database, "2026-11", ["workspace", "tag:project"]),
        out)
    table = list(csv.reader(io.StringIO(out.getvalue())))
    assert table[0] == ["month", "workspace", "tag:project", *CSV_METRICS]
    body, last = table[1:-1], table[-1]
    assert all(r[0] == "2026-11" for r in body)
    assert [r[1:3] for r in body] == sorted(r[1:3] for r in body)             # stable order
    assert last[:3] == ["TOTAL", "", ""]
    micro = CSV_METRICS.index("cost_micro_usd") + 3
    usd = CSV_METRICS.index("cost_usd") + 3
    assert int(last[micro]) == sum(int(r[micro]) for r in body) == sum(e.cost_micro_usd for e in events)
    assert Decimal(last[usd]) == sum(Decimal(r[usd]) for r in body) == Decimal(total.cost_micro_usd) / 10**6
    assert all(len(r[usd].split(".")[1]) == 6 for r in table[1:])
    for column, kind in zip(range(4, 10), ("input", "cache_write_5m", "cache_write_1h", "cache_read",
                                           "output", "reasoning")):
        assert int(last[column]) == sum(getattr(e.tokens, kind) for e in events)
    assert int(last[3]) == len(events) == total.requests


def test_chargeback_streams_many_groups_and_writes_header_without_rows(analytics_db: AnalyticsDB) -> None:
    events = [usage_event(i, user=f"user-{i:04d}") for i in range(1500)]
    analytics_db.sink.insert(events)
    rows = queries.chargeback_rows(analytics_db.client, analytics_db.database, "2026-11", ["user"])
    assert sum(1 for _ in rows) == 1500
    empty = io.StringIO()
    total = queries.write_chargeback_csv(
        queries.chargeback_rows(analytics_db.client, analytics_db.database, "2027-01", ["workspace"]),
        empty, by=["workspace"])
    assert empty.getvalue().splitlines() == [
        ",".join(["month", "workspace", *CSV_METRICS]), "TOTAL,," + ",".join(["0"] * 7) + ",0.000000,0,0,0"]
    assert total.cost_micro_usd == 0


def test_rollups_agree_with_spend(analytics_db: AnalyticsDB) -> None:
    events = _population()
    analytics_db.sink.insert(events)
    exact = {tuple(v for _, v in r.group): r.cost_micro_usd for r in
             queries.spend(analytics_db.client, analytics_db.database, ["org", "model"], *NOV_MS)}
    for grain in queries.GRAINS:
        series = queries.rollup(analytics_db.client, analytics_db.database, grain, *NOV_MS, by=["org", "model"])
        summed: dict[tuple[str, ...], int] = {}
        for row in series:
            key = (row.dims["org"], row.dims["model"])
            summed[key] = summed.get(key, 0) + row.cost_micro_usd
        assert summed == exact, grain
    hourly = queries.rollup(analytics_db.client, analytics_db.database, "hour", *NOV_MS, org="acme")
    assert [r.dims["hour"] for r in hourly] == ["2026-11-04 00:00:00", "2026-11-04 01:00:00"]
    with pytest.raises(ValueError):
        queries.rollup(analytics_db.client, analytics_db.database, "hour", *NOV_MS, by=["tag:project"])


@pytest.mark.parametrize("micro, text", [(0, "0.000000"), (1, "0.000001"), (1_234_567, "1.234567"),
                                         (-5, "-0.000005"), (-1_000_000, "-1.000000"),
                                         (2**63 - 1, "9223372036854.775807")])
def test_format_usd(micro: int, text: str) -> None:
    assert format_usd(micro) == text


def test_month_bounds() -> None:
    assert month_bounds_ms("2026-12") == (1_796_083_200_000, 1_798_761_600_000)
    for bad in ("2026-13", "2026-1", "26-11", "2026-11-01"):
        with pytest.raises(ValueError):
            month_bounds_ms(bad)
