"""Every ```sql block of analytics/README.md runs as written, against the documented tables."""
from __future__ import annotations

import re
from datetime import date
from pathlib import Path

from llmgw.analytics import audit, reconcile, store
from llmgw.analytics.reconcile import BilledCost
from llmgw.core.config import ConfigRecord
from llmgw.core.events import REJECTED_BUDGET, Tokens
from llmgw.core.budgets import Budget
from tests.fixtures.chdb import AnalyticsDB, usage_event

README = Path(__file__).resolve().parents[1] / "analytics" / "README.md"
SQL_BLOCKS = re.findall(r"```sql\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_readme_has_example_queries() -> None:
    assert len(SQL_BLOCKS) >= 5


def test_readme_queries_run_as_written(analytics_db: AnalyticsDB) -> None:
    events = [usage_event(i * 600, workspace=("ws-a", "ws-b")[i % 2], user=("ada", "bob")[i % 3 % 2],
                          service_tier=("", "priority", "flex")[i % 3], web_search_calls=i % 2)
              for i in range(12)]
    events.append(usage_event(8000, cost_micro_usd=0, cost_nano_usd=240))      # a sub-micro call
    events.append(usage_event(9000, outcome=REJECTED_BUDGET, model_served="", tokens=Tokens(), cost_micro_usd=0))
    analytics_db.sink.insert(events)
    analytics_db.sink.insert(events[:3])                  # a re-delivery changes nothing below
    budget = Budget("workspace", "ws-a", "month", 100_000_000, org="acme").record(actor="admin:ops", reason="Q4")
    raised = ConfigRecord(budget.id, "budget", {**(budget.data or {}), "limit_micro_usd": 150_000_000},
                          budget.ts_ms + 1, "admin:finance", "launch")
    audit.insert_records(analytics_db.client, analytics_db.database, [budget, raised])
    billed = [BilledCost("anthropic", date(2026, 11, 4), "Claude Sonnet 4.5 Usage - Input Tokens", "wrkspc_1",
                         "claude-sonnet-4-5", 20_000_000)]
    reconcile.import_costs(analytics_db.client, analytics_db.database, billed, "report.json")
    client = store.connect(analytics_db.dsn, database=analytics_db.database)   # README queries are unqualified
    results = {}
    for sql in SQL_BLOCKS:
        result = client.query(sql)
        assert result.result_rows, f"no rows from:\n{sql}"
        results[sql] = [dict(zip(result.column_names, row)) for row in result.result_rows]

    by_workspace = next(rows for sql, rows in results.items() if "GROUP BY workspace" in sql)
    nanos = sum(e.cost_nano_usd for e in events)
    assert sum(r["cost_nano_usd"] for r in by_workspace) == nanos
    assert sum(r["requests"] for r in by_workspace) == len(events)
    assert all(r["cost_usd"] * 10**9 == r["cost_nano_usd"] for r in by_workspace)
    by_tier = next(rows for sql, rows in results.items() if "GROUP BY service_tier" in sql)
    assert {r["service_tier"] for r in by_tier} == {"", "priority", "flex"}
    assert sum(r["cost_nano_usd"] for r in by_tier) == nanos
    assert sum(r["web_search_calls"] for r in by_tier) == 6
    reconciliation = next(rows for sql, rows in results.items() if "AS diff" in sql)
    assert [r["diff"] for r in reconciliation] == [0]
    session = next(rows for sql, rows in results.items() if "running_cost_nano_usd" in sql)
    assert session[-1]["running_cost_nano_usd"] == nanos
    changes = next(rows for sql, rows in results.items() if "FROM audit_log" in sql)
    assert [(r["limit_before"], r["limit_after"]) for r in changes] == [(100_000_000, 150_000_000), (0, 100_000_000)]
    [day] = next(rows for sql, rows in results.items() if "delta_micro_usd" in sql)
    assert day["delta_micro_usd"] == 20_000_000 - -(-nanos // 1000)
