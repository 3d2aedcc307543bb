"""The dashboard's HTML and SVG as pure functions: escaping, exact money, the long tail of orgs."""
from __future__ import annotations

import re

from llmgw.analytics.dashboard import BudgetUse, Spend
from llmgw.analytics.dashboard_html import meter, render_dashboard, render_login, stacked_bars, usd
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
    assert "90.0%" in page and "#e5484d" in page                                   # 90 % is red
    assert len(re.findall(r"<script", page)) == 1 and 'src="/dashboard/static/dashboard.js"' in page


def test_many_orgs_share_one_colour_past_the_palette() -> None:
    page = render_dashboard(_spend(orgs=12), [], [], admin="a", role="owner", alerts_here=False)
    legend = re.search(r'<div class="legend">(.*?)</div>', page, flags=re.S)
    assert legend is not None and "6 more" in legend.group(1)                     # 13 orgs: 7 named, 6 more
    assert "evaluated by the ledger worker" in page


def test_charts_and_login() -> None:
    svg = stacked_bars(["a", "b"], {"x": [0, 5], "y": [5, 0]}, {"x": "#111111", "y": "#222222"})
    assert svg.count("<rect") == 2 and "$0.000005" in svg
    assert 'width="140.0"' in meter(1500) and 'width="0.0"' in meter(-3)
    form = render_login("bad <key>")
    assert 'type="password"' in form and "bad &lt;key&gt;" in form and 'method="post"' in form
