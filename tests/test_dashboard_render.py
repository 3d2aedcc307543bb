"""The dashboard's HTML and SVG as pure functions: escaping, exact money, the long tail of orgs."""
from __future__ import annotations

import re

from llmgw.analytics.dashboard import BudgetUse, Spend
from llmgw.analytics.dashboard_html import (axis_step, dollars, meter, money, render_dashboard, render_login,
                                            stacked_bars, usd)
from llmgw.analytics.queries import UsageRow
from llmgw.core.events import Tokens

NOW_MS = 1_793_800_000_000


def _spend(orgs: int = 2) -> Spend:
    minutes = [f"2026-11-04 13:{m:02d}:00" for m in range(60)]
    per_minute = {f"org-{i}": {minutes[-1]: 1_000_000 * (i + 1)} for i in range(orgs)}
    per_minute['<script>alert("x")</script>'] = {minutes[-2]: 7}
    row = UsageRow((("day", "2026-11-04"), ("user", "<b>mallory</b>")), 3, Tokens(input=1), 2**53 + 1)
    return Spend(NOW_MS, NOW_MS - 3_600_000, minutes, per_minute, 4, 9_000_007, 4, 2**53 + 1,
                 today={"user": [row]}, last_hour={"user": {"<b>mallory</b>": 5}})


def test_everything_from_data_is_escaped_and_money_is_exact() -> None:
    budgets = [BudgetUse('user acme/"quoted"', "text", "day", "budget", 3_000_000, 2_700_000, NOW_MS)]
    page = render_dashboard(_spend(), budgets, [], admin="<i>eve</i>", role="finance", alerts_here=True)
    assert "<script>alert" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "<b>mallory</b>" not in page and "&lt;b&gt;mallory&lt;/b&gt;" in page
    assert "<i>eve</i>" not in page
    assert usd(2**53 + 1) == "$9007199254.740993" and usd(2**53 + 1) in page        # no float anywhere
    assert money(2**53 + 1) in page and ">$9,007,199,254.74<" in page               # shown in cents, exact on hover
    assert "90.0%" in page and "#e5484d" in page                                   # 90 % is red
    assert len(re.findall(r"<script", page)) == 1 and 'src="/dashboard/static/dashboard.js"' in page


def test_many_orgs_share_one_colour_past_the_palette() -> None:
    page = render_dashboard(_spend(orgs=12), [], [], admin="a", role="owner", alerts_here=False)
    legend = re.search(r'<div class="legend">(.*?)</div>', page, flags=re.S)
    assert legend is not None and "6 more" in legend.group(1)                     # 13 orgs: 7 named, 6 more
    assert "evaluated by the ledger worker" in page


def test_money_reads_in_cents_and_never_looks_free() -> None:
    assert money(1_234_567_891) == '<span class="money" title="$1234.567891 exactly">$1,234.57</span>'
    assert ">&lt;$0.01<" in money(4_999) and ">$0.01<" in money(5_000) and ">$0.00<" in money(0)
    assert dollars(-1_005_000) == "-$1.01"


def test_chart_axes_step_by_round_amounts() -> None:
    assert [axis_step(p) for p in (1, 3, 5, 75_300, 100_000, 150_001, 9_000_007)] == [
        1, 2, 5, 50_000, 50_000, 100_000, 5_000_000]
    svg = stacked_bars(["a", "b"], {"x": [0, 75_300]}, {"x": "#111111"})
    ticks = re.findall(r'class="axis" text-anchor="end">([^<]*)<', svg)
    assert ticks == ["$0.00", "$0.05", "$0.10"]                                  # not $0.037650 / $0.075300
    tiny = stacked_bars(["a"], {"x": [3]}, {"x": "#111111"})
    assert re.findall(r'class="axis" text-anchor="end">([^<]*)<', tiny) == ["$0.00", "$0.000002", "$0.000004"]


def test_charts_and_login() -> None:
    svg = stacked_bars(["a", "b"], {"x": [0, 5], "y": [5, 0]}, {"x": "#111111", "y": "#222222"})
    assert svg.count("<rect") == 2 and "$0.000005" in svg
    assert 'width="140.0"' in meter(1500) and 'width="0.0"' in meter(-3)
    form = render_login("bad <key>")
    assert 'type="password"' in form and "bad &lt;key&gt;" in form and 'method="post"' in form
