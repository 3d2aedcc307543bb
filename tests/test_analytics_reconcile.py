"""Reconciliation: the providers' cost reports (API JSON and CSV exports) against metered spend."""
from __future__ import annotations

import argparse
import json
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from llmgw.analytics import reconcile, reconcile_cli
from llmgw.analytics.reconcile import BilledCost, DayDelta
from tests.fixtures.chdb import NOV_4_MS, AnalyticsDB, usage_event

DATA = Path(__file__).parent / "data" / "reconcile"
NOV_4, NOV_5, NOV_6 = date(2026, 11, 4), date(2026, 11, 5), date(2026, 11, 6)
DAY_MS = 86_400_000


def test_openai_costs_api_pages() -> None:
    costs = reconcile.parse_report((DATA / "openai_costs_2026-11.json").read_bytes(), "openai")
    assert len(costs) == 6 and {c.provider for c in costs} == {"openai"}
    first = costs[0]
    assert (first.day, first.line_item, first.project_id) == (NOV_4, "gpt-4o-mini-2024-07-18, input", "proj_Ab3dEf7h")
    assert first.cost_micro_usd == 1_234_568            # 1.2345678 USD, rounded once, half-even
    embeddings = next(c for c in costs if c.line_item == "text-embedding-3-small")
    assert embeddings.cost_micro_usd == 2_000_000        # 2.0000005 -> half-even to the even micro-dollar
    by_day = {d: sum(c.cost_micro_usd for c in costs if c.day == d) for d in (NOV_4, NOV_5)}
    assert by_day == {NOV_4: 3_934_568, NOV_5: 3_500_000}   # 0.2 + 3.3 exactly, no float drift


def test_anthropic_cost_report_cents() -> None:
    costs = reconcile.parse_report((DATA / "anthropic_cost_report_2026-11.json").read_text(), "anthropic")
    assert [c.cost_micro_usd for c in costs] == [1_234_500, 2_500_000, 125, 1_000_000]   # "123.45" cents = $1.2345
    assert costs[0].model == "claude-sonnet-4-5-20250929" and costs[0].project_id.startswith("wrkspc_")
    assert costs[0].line_item == "Claude Sonnet 4.5 Usage - Input Tokens"
    assert costs[2].model == "" and costs[2].project_id == ""
    assert [c.day for c in costs] == [NOV_4, NOV_4, NOV_4, NOV_5]


def test_csv_exports() -> None:
    openai = reconcile.parse_report((DATA / "openai_costs_export.csv").read_bytes(), "openai")
    assert [c.cost_micro_usd for c in openai] == [1_000_250_000, 1]
    assert reconcile.combine(openai) == [BilledCost("openai", NOV_4, "gpt-4o-mini-2024-07-18, input",
                                                    "proj_Ab3dEf7h", "", 1_000_250_001)]
    anthropic = reconcile.parse_report((DATA / "anthropic_costs_revised.csv").read_bytes(), "anthropic")
    assert [(c.day, c.project_id, c.cost_micro_usd) for c in anthropic] == [
        (NOV_5, "Default", 1_100_000), (NOV_5, "Default", 400_000)]
    cents = reconcile.parse_cost_csv("date,amount_cents\n2026-11-04,12.5\n", "openai")
    assert cents[0].cost_micro_usd == 125_000


@pytest.mark.parametrize("text, provider, message", [
    ('{"data": [{"starting_at": "2026-11-04T00:00:00Z", "results": []}]}', "openai", "no start_time"),
    ('{"object": "page", "data": [{"start_time": 1793750400, "results": [{"amount": "1"}]}]}', "openai",
     "without an `amount` object"),
    ('{"data": [{"start_time": 1793750400, "results": []}]}', "anthropic", "no starting_at"),
    ('{"data": [{"starting_at": "2026-11-04", "results": [{"amount": "1", "currency": "EUR"}]}]}', "anthropic",
     "only USD"),
    ("when,howmuch\n2026-11-04,1\n", "openai", "not recognised"),
    ("date,cost\n2026-11-04,lots\n", "openai", "not an amount"),
    ("{}", "mistral", "provider must be one of"),
])
def test_reports_that_are_refused(text: str, provider: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        reconcile.parse_report(text, provider)


def _metered(analytics_db: AnalyticsDB) -> None:
    """Gateway traffic: OpenAI on Nov 4 and 5, Anthropic on Nov 4 and 6 (none on Nov 5)."""
    spec = [("openai", 0, 1_000_000), ("openai", 0, 2_000_000), ("openai", 1, 3_500_000),
            ("anthropic", 0, 3_700_000), ("anthropic", 2, 500_000)]
    events = [usage_event(n, provider=provider, ts_start_ms=NOV_4_MS + day * DAY_MS + 3_600_000 + n,
                          cost_micro_usd=cost) for n, (provider, day, cost) in enumerate(spec)]
    analytics_db.sink.insert(events)
    analytics_db.sink.insert(events[:2])                  # a re-delivery does not change the metered side


def test_report_per_day_and_provider(analytics_db: AnalyticsDB) -> None:
    _metered(analytics_db)
    db, client = analytics_db.database, analytics_db.client
    for name in ("openai_costs_2026-11.json", "anthropic_cost_report_2026-11.json"):
        provider = name.split("_")[0]
        reconcile.import_costs(client, db, reconcile.parse_report((DATA / name).read_bytes(), provider), name)
    rows = reconcile.report(client, db, NOV_4, date(2026, 11, 7))
    assert rows == [
        DayDelta(NOV_4, "anthropic", 3_700_000, 3_734_625, 1),
        DayDelta(NOV_4, "openai", 3_000_000, 3_934_568, 2),
        DayDelta(NOV_5, "anthropic", 0, 1_000_000, 0),        # all of it bypassed the gateway
        DayDelta(NOV_5, "openai", 3_500_000, 3_500_000, 1),
        DayDelta(NOV_6, "anthropic", 500_000, 0, 1),           # not billed (yet)
    ]
    assert [r.delta_micro_usd for r in rows] == [34_625, 934_568, 1_000_000, 0, -500_000]
    assert reconcile.report(client, db, NOV_5, NOV_6, providers=["openai"]) == [rows[3]]


def test_a_later_import_supersedes_the_days_it_covers(analytics_db: AnalyticsDB) -> None:
    db, client = analytics_db.database, analytics_db.client
    report_json = reconcile.parse_report((DATA / "anthropic_cost_report_2026-11.json").read_bytes(), "anthropic")
    reconcile.import_costs(client, db, report_json, "report.json", imported_at_ms=NOV_4_MS + 10 * DAY_MS)
    reconcile.import_costs(client, db, report_json, "report.json", imported_at_ms=NOV_4_MS + 11 * DAY_MS)
    revised = reconcile.parse_report((DATA / "anthropic_costs_revised.csv").read_bytes(), "anthropic")
    reconcile.import_costs(client, db, revised, "revised.csv", imported_at_ms=NOV_4_MS + 12 * DAY_MS)
    billed = {r.day: r.billed_micro_usd for r in reconcile.report(client, db, NOV_4, NOV_6)}
    assert billed == {NOV_4: 3_734_625, NOV_5: 1_500_000}    # Nov 4 imported twice, counted once


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="llmgw")
    reconcile_cli.register(parser.add_subparsers(dest="command", required=True), environ={})
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_import_and_report(analytics_db: AnalyticsDB, capsys: pytest.CaptureFixture[str]) -> None:
    _metered(analytics_db)
    where = ["--dsn", analytics_db.dsn, "--database", analytics_db.database]
    assert _run(["reconcile", "import", str(DATA / "openai_costs_2026-11.json"), "--provider", "openai", *where]) == 0
    assert "imported 6 openai cost lines (2026-11-04..2026-11-05, $7.434568)" in capsys.readouterr().out
    assert _run(["reconcile", "report", "--since", "2026-11-04", "--until", "2026-11-06", "--provider", "openai",
                 *where]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["day", "provider", "requests", "metered_usd", "billed_usd", "delta_usd", "delta_pct"]
    assert lines[1].split() == ["2026-11-04", "openai", "2", "3.000000", "3.934568", "0.934568", "+23.8%"]
    assert lines[2].split() == ["2026-11-05", "openai", "1", "3.500000", "3.500000", "0.000000", "+0.0%"]
    assert _run(["reconcile", "report", "--since", "2026-11-04", "--until", "2026-11-05", "--json", *where]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(o["provider"], o["delta_micro_usd"]) for o in out] == [("anthropic", -3_700_000), ("openai", 934_568)]
    assert _run(["reconcile", "import", str(DATA / "openai_costs_2026-11.json"), "--provider", "anthropic",
                 *where]) == 2
    assert "no starting_at" in capsys.readouterr().err


def test_amount_rounding_is_exact() -> None:
    assert reconcile.usd_to_micro(Decimal("0.0000005")) == 0 and reconcile.usd_to_micro(Decimal("0.0000015")) == 2
    assert reconcile.cents_to_micro(Decimal("0.00005")) == 0 and reconcile.cents_to_micro(Decimal("-12.3")) == -123_000
