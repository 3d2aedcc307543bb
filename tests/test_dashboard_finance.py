"""The finance view in headless Chromium: month to date by workspace and by project, a date range, the org's
time zone (picked on the page), money in dollars and cents, estimated usage flagged, a CSV of exactly what is
shown, and a budget set by an admin under their own name and role.

Screenshots land in docs/ (docs/dashboard-finance*.png) when LLMGW_SCREENSHOTS=docs, as the README shows."""
from __future__ import annotations

import csv
import io
import os
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from llmgw.analytics import store
from llmgw.proxy.reports.dashboard_finance import dollars, parse_range
from llmgw.analytics.queries import format_usd
from tests.admin_support import OWNER_KEY
from tests.fake_provider import Reply, Usage
from tests.gateway_harness import GatewayHarness
from tests.test_dashboard_browser import Browser, _traffic, png_pixels
from tests.waits import until

DOCS = Path(__file__).resolve().parents[1] / "docs"


async def _events_at_least(h: GatewayHarness, n: int) -> bool:
    return len(await h.events()) >= n


def test_dollars_round_to_the_cent_and_group_thousands():
    assert dollars(1_234_567_891) == "$1,234.57" and dollars(4_999) == "$0.00" and dollars(5_000) == "$0.01"
    assert dollars(-1_005_000) == "-$1.01" and dollars(0) == "$0.00"


def test_the_default_range_is_month_to_date_in_the_orgs_zone():
    # 2026-12-01 03:00 UTC is still November 30 in New York
    now_ms = int(datetime(2026, 12, 1, 3, 0, tzinfo=ZoneInfo("UTC")).timestamp() * 1000)
    ny = parse_range({}, "America/New_York", now_ms)
    assert (ny.since.isoformat(), ny.until.isoformat()) == ("2026-11-01", "2026-11-30")
    assert ny.bounds_ms()[1] == int(datetime(2026, 12, 1, 5, 0, tzinfo=ZoneInfo("UTC")).timestamp() * 1000)
    utc = parse_range({}, "UTC", now_ms)
    assert (utc.since.isoformat(), utc.until.isoformat()) == ("2026-12-01", "2026-12-01")
    with pytest.raises(ValueError):
        parse_range({"since": "2026-12-02", "until": "2026-12-01"}, "UTC", now_ms)


@pytest.fixture
async def gateway(fake_provider: Any, tmp_path: Path, chdb_dsn: str) -> AsyncIterator[GatewayHarness]:
    database = f"t_{uuid.uuid4().hex[:12]}"
    h = GatewayHarness(fake_provider, tmp_path / "gw", analytics=True, admin_key=OWNER_KEY,
                       clickhouse_dsn=f"{chdb_dsn}?database={database}",
                       file_config={"orgs": {"acme": {"timezone": "America/New_York"}}})
    await h.start()
    try:
        yield h
    finally:
        await h.stop()
        store.connect(chdb_dsn).command(f"DROP DATABASE IF EXISTS {database} SYNC")
        store.disconnect(chdb_dsn, database=database)


async def test_finance_view_in_chromium(gateway: GatewayHarness, tmp_path: Path) -> None:
    h = gateway
    events = await _traffic(h)
    # one more call whose client leaves mid-stream, before the usage block: its usage is estimated
    key, _ = h.key("acme", "backend", "alice")
    h.fake.script(Reply(usage=Usage(input=1000, output=500), chunks=40, chunk_delay_s=0.05))
    async with aiohttp.ClientSession() as http:
        async with http.post(h.url + "/v1/messages", headers={"x-api-key": key, "anthropic-version": "2023-06-01",
                             "x-llmgw-tags": "project:hermes"},
                             json={"model": "claude-haiku-4-5", "stream": True, "max_tokens": 500,
                                   "messages": [{"role": "user", "content": "go"}]}) as r:
            for _ in range(8):                          # message_start (input tokens) and a delta, then gone
                await r.content.readline()
            r.close()
    await until(lambda: _events_at_least(h, len(events) + 1))
    events = await h.events()
    assert sum(1 for e in events if e.usage_estimated or e.cost_estimated) == 1, [(e.outcome, e.usage_estimated, e.tags) for e in events]

    async def landed() -> bool:
        async with aiohttp.ClientSession() as http:
            async with http.get(h.url + "/admin/spend?by=org", headers={"x-api-key": OWNER_KEY}) as r:
                return sum(row["requests"] for row in (await r.json())["rows"]) == sum(
                    1 for e in events if e.kind == "usage")
    await until(landed)

    shots = DOCS if os.environ.get("LLMGW_SCREENSHOTS") == "docs" else tmp_path
    browser = Browser(tmp_path / "chromium-profile")
    await browser.start()
    try:
        await browser.goto(h.url + "/dashboard/login")
        await browser.evaluate("document.getElementById('key').focus()")
        await browser.send("Input.insertText", {"text": OWNER_KEY}, session=True)
        await browser.navigated(browser.evaluate("document.querySelector('form').requestSubmit()"))
        await browser.goto(h.url + "/dashboard/finance")                  # as the README's link leads there
        default_shown = await browser.evaluate("document.querySelector('header .asof').innerText")
        picker = await browser.evaluate("Array.from(document.querySelectorAll('select[name=org] option'))"
                                        ".map(o => o.innerText)")
        await browser.navigated(browser.evaluate(
            "document.querySelector('select[name=org]').value = 'acme';"
            "document.querySelector('form.range').requestSubmit()"))
        tz_shown = await browser.evaluate("document.querySelector('header .asof').innerText")
        cells = ("Array.from(document.querySelectorAll('table.finance tbody tr')).map("
                 "r => Array.from(r.cells).map(c => [c.innerText.trim(), c.title]))")
        by_ws = await browser.evaluate(cells)
        flag = await browser.evaluate("(document.querySelector('.flag') || {innerText: ''}).innerText")
        csv_href = await browser.evaluate("document.querySelector('a.csv').href")
        png = await browser.screenshot(shots / "dashboard-finance.png")
        await browser.navigated(browser.evaluate(
            "document.querySelector('select[name=by]').value = 'project';"
            "document.querySelector('form.range').requestSubmit()"))
        by_project = await browser.evaluate(cells)
        await browser.screenshot(shots / "dashboard-finance-by-project.png")
        await browser.navigated(browser.evaluate(
            "const f = document.querySelector('form[action=\"/dashboard/budgets\"]');"
            "f.scope.value = 'workspace:backend'; f.window.value = 'month'; f.limit_usd.value = '1500';"
            "f.org.value = 'acme'; f.reason.value = 'Q1 plan'; f.requestSubmit()"))
        notice = await browser.evaluate("document.querySelector('.budget-form .flag').innerText")
        await browser.screenshot(shots / "dashboard-finance-budget-set.png", full_page=True)
        await browser.navigated(browser.evaluate(                      # a range before any of this traffic
            "const r = document.querySelector('form.range');"
            "r.since.value = '2025-01-01'; r.until.value = '2025-01-31'; r.requestSubmit()"))
        past_shown = await browser.evaluate("document.querySelector('header .asof').innerText")
        past_rows = await browser.evaluate("document.querySelector('table.finance tbody').innerText")
        past_csv = await browser.evaluate("document.querySelector('a.csv').href")
        logs = [e["params"]["entry"] for e in browser.events if e.get("method") == "Log.entryAdded"]
        cookies = (await browser.send("Network.getCookies", {"urls": [h.url + "/dashboard"]}, session=True))["cookies"]
    finally:
        await browser.close()

    today_utc = datetime.now(ZoneInfo("UTC")).date()
    assert default_shown == f"{today_utc.replace(day=1)} to {today_utc} (UTC)"      # month to date
    assert picker == ["all (UTC days)", "acme (America/New_York days)"]
    # the form carries the range it showed: picking an org keeps those days, now read in its zone
    assert tz_shown == f"{today_utc.replace(day=1)} to {today_utc} (America/New_York), org acme"
    assert past_shown.startswith("2025-01-01 to 2025-01-31") and "No spend in this range." in past_rows
    assert "since=2025-01-01" in past_csv and "until=2025-01-31" in past_csv
    assert "set by owner-key (owner)" in notice and "monthly budget $1,500.00" in notice, notice
    [rec] = [r for r in h.gw.config.of_type("budget") if (r.data or {}).get("name") == "backend"]
    assert rec.data["limit_micro_usd"] == 1_500_000_000 and rec.reason == "Q1 plan" and rec.actor == "admin:owner-key"
    spent = {}
    for e in events:
        if e.org == "acme" and e.kind == "usage":
            spent[e.workspace] = spent.get(e.workspace, 0) + e.cost_micro_usd
    shown = {row[0][0].rstrip(" *"): row for row in by_ws}
    assert set(shown) == set(spent)
    for ws, micro in spent.items():
        assert shown[ws][2] == [dollars(micro), f"${format_usd(micro)} exactly"]
    assert shown["backend"][0][0].endswith("*") and shown["backend"][3][0] == "1"      # the cut stream, flagged
    assert "1 of" in flag and "estimated" in flag
    projects = {row[0][0].rstrip(" *"): row for row in by_project}
    assert set(projects) == {"apollo", "hermes", "(none)"}               # dave's refused call had no project
    assert projects["(none)"][2][0] == "$0.00" and projects["hermes"][0][0].endswith("*")

    async with aiohttp.ClientSession(cookies={c["name"]: c["value"] for c in cookies}) as http:
        async with http.get(csv_href) as r:
            assert r.status == 200 and "attachment" in r.headers["Content-Disposition"]
            table = list(csv.DictReader(io.StringIO(await r.text())))
    assert {row["workspace"]: int(row["cost_micro_usd"]) for row in table[:-1]} == spent
    assert table[-1]["workspace"] == "TOTAL" and int(table[-1]["cost_micro_usd"]) == sum(spent.values())
    assert int(table[-1]["estimated_calls"]) == 1
    assert not [e for e in logs if e.get("level") == "error"], logs
    width, height, rows = png_pixels(png)
    assert (width, height) == (1280, 900) and len({r[x:x + 3] for r in rows[::9] for x in range(0, len(r), 30)}) > 20


async def test_a_finance_admin_reads_but_may_not_set_budgets(gateway: GatewayHarness) -> None:
    from llmgw.proxy.admin import credentials as C

    key, rec = C.mint_admin("fiona", "finance", actor="test")
    gateway._put(rec)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:   # a cookie for an IP
        async with http.post(gateway.url + "/dashboard/login", data={"key": key}, allow_redirects=False) as r:
            assert r.status == 303
        async with http.get(gateway.url + "/dashboard/finance") as r:
            page = await r.text()
            assert r.status == 200 and "The finance role may not change budgets" in page
            assert 'action="/dashboard/budgets"' not in page
        async with http.post(gateway.url + "/dashboard/budgets", allow_redirects=False,
                             data={"scope": "workspace:backend", "window": "day", "limit_usd": "1"}) as r:
            assert r.status == 303 and "not+set" in r.headers["Location"]
        async with http.post(gateway.url + "/dashboard/budgets", allow_redirects=False,
                             headers={"Origin": "http://evil.example"},
                             data={"scope": "workspace:backend", "window": "day", "limit_usd": "1"}) as r:
            assert r.status == 403
    assert gateway.gw.config.of_type("budget") == []
