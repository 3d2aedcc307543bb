"""The dashboard in headless Chromium (Debian's `chromium`), driven over the DevTools protocol:
sign in through the form, then check the rendered page holds the real numbers of calls sent
through the gateway, that no script or style was blocked, and that the screenshot is a real
picture (decoded here, no imaging library)."""
from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import struct
import uuid
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from llmgw.analytics import store
from llmgw.analytics.dashboard_html import dollars, usd
from llmgw.core import events as E
from llmgw.proxy.parts import ALERTS
from tests.admin_support import OWNER_KEY
from tests.fake_provider import Reply, Usage
from tests.gateway_harness import GatewayHarness
from tests.waits import until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
INSTALL = "apt-get install -y chromium"


class Browser:
    """One headless Chromium and one page, over the Chrome DevTools Protocol (aiohttp's WebSocket client)."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self.events: list[dict[str, Any]] = []
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._loaded = asyncio.Event()

    async def start(self) -> None:
        if CHROMIUM is None:
            pytest.fail(f"chromium is not installed; the dashboard browser test needs it: {INSTALL}", pytrace=False)
        self.proc = await asyncio.create_subprocess_exec(
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
            "--disable-extensions", "--hide-scrollbars", "--force-device-scale-factor=1",
            f"--user-data-dir={self.profile}", "--remote-debugging-port=0", "--window-size=1280,900",
            "about:blank", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        assert self.proc.stderr is not None
        async with asyncio.timeout(60):
            while True:
                line = (await self.proc.stderr.readline()).decode(errors="replace")
                if not line:
                    raise AssertionError("chromium exited before it listened for DevTools")
                if m := re.search(r"DevTools listening on (ws://\S+)", line):
                    break
        self._drain = asyncio.get_running_loop().create_task(self._discard(self.proc.stderr))
        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(m[1], max_msg_size=0)
        self._reader = asyncio.get_running_loop().create_task(self._read())
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        self.session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            await self.send(f"{domain}.enable", session=True)
        await self.send("Emulation.setDeviceMetricsOverride",
                        {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=True)

    @staticmethod
    async def _discard(stream: asyncio.StreamReader) -> None:
        while await stream.readline():
            pass

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            else:
                self.events.append(data)
                if data.get("method") == "Page.loadEventFired":
                    self._loaded.set()

    async def send(self, method: str, params: dict[str, Any] | None = None, *, session: bool = False) -> Any:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = future
        await self.ws.send_str(json.dumps(message))
        async with asyncio.timeout(30):
            reply = await future
        if "error" in reply:
            raise AssertionError(f"{method}: {reply['error']}")
        return reply["result"]

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                      "awaitPromise": True}, session=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def navigated(self, action: Any) -> None:
        """Run ``action`` (a coroutine) and wait for the page it leads to to finish loading."""
        self._loaded.clear()
        await action
        async with asyncio.timeout(30):
            await self._loaded.wait()
        await self.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")

    async def goto(self, url: str) -> None:
        await self.navigated(self.send("Page.navigate", {"url": url}, session=True))

    async def screenshot(self, path: Path, *, full_page: bool = False) -> bytes:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            metrics = await self.send("Page.getLayoutMetrics", session=True)
            size = metrics["cssContentSize"]
            params |= {"captureBeyondViewport": True,
                       "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}}
        png = base64.b64decode((await self.send("Page.captureScreenshot", params, session=True))["data"])
        path.write_bytes(png)
        return png

    async def close(self) -> None:
        try:
            await self.ws.close()
            await self.http.close()
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
            await self.proc.wait()
            self._drain.cancel()
            self._reader.cancel()


def shown(micro: int) -> str:
    """What a money cell reads: dollars and cents, or "<$0.01" for spend that rounds to no cent."""
    return "<$0.01" if 0 < micro < 5_000 else dollars(micro)


def png_pixels(png: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit RGB or RGBA PNG; decodes every filter type."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        chunk = png[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    assert header is not None
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0, header
    bpp = 3 if color == 2 else 4
    raw, stride, rows, prev = zlib.decompress(idat), width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, rows


@pytest.fixture
async def gateway(fake_provider: Any, tmp_path: Path, chdb_dsn: str) -> AsyncIterator[GatewayHarness]:
    database = f"t_{uuid.uuid4().hex[:12]}"
    h = GatewayHarness(fake_provider, tmp_path / "gw", analytics=True, admin_key=OWNER_KEY,
                       clickhouse_dsn=f"{chdb_dsn}?database={database}")
    await h.start()
    try:
        yield h
    finally:
        await h.stop()
        store.connect(chdb_dsn).command(f"DROP DATABASE IF EXISTS {database} SYNC")
        store.disconnect(chdb_dsn, database=database)


async def _traffic(h: GatewayHarness) -> list[E.UsageEvent]:
    calls = [("acme", "backend", "alice", "gpt-4o-mini", Usage(input=900_000, cache_read=50_000, output=120_000)),
             ("acme", "backend", "alice", "claude-haiku-4-5", Usage(input=200_000, output=30_000)),
             ("acme", "ml", "carol", "gpt-4o", Usage(input=150_000, output=40_000)),
             ("globex", "research", "gus", "claude-haiku-4-5", Usage(input=500_000, output=80_000))]
    for org, workspace, user, model, usage in calls:
        key, _ = h.key(org, workspace, user)
        h.fake.script(Reply(usage=usage))
        headers = {"x-llmgw-session": f"agent-{user}-1", "x-llmgw-tags": "project:apollo"}
        if model.startswith("claude"):
            await anthropic.AsyncAnthropic(base_url=h.url, api_key=key, max_retries=0).messages.create(
                model=model, max_tokens=20_000, messages=[{"role": "user", "content": "go"}], extra_headers=headers)
        else:
            await openai.AsyncOpenAI(base_url=h.url + "/v1", api_key=key, max_retries=0).chat.completions.create(
                model=model, messages=[{"role": "user", "content": "go"}], extra_headers=headers)
    h.budget("user:dave", "day", "0.000001", org="acme")
    dave, _ = h.key("acme", "backend", "dave")
    with pytest.raises(anthropic.RateLimitError):
        await anthropic.AsyncAnthropic(base_url=h.url, api_key=dave, max_retries=0).messages.create(
            model="claude-haiku-4-5", max_tokens=1000, messages=[{"role": "user", "content": "go"}])
    return await h.events()


async def test_dashboard_renders_real_spend_in_chromium(gateway: GatewayHarness, tmp_path: Path) -> None:
    h = gateway
    events = await _traffic(h)
    spent = {u: sum(e.cost_micro_usd for e in events if e.user == u) for u in ("alice", "carol", "gus")}
    assert all(spent.values())
    limit = spent["alice"] * 5 // 4                          # alice at 80 % of a daily budget set now
    h.budget("user:alice", "day", f"{limit / 1_000_000:.6f}", org="acme")
    limit = int(round(limit / 1_000_000, 6) * 1_000_000)

    async def analytics_caught_up() -> bool:
        async with aiohttp.ClientSession(cookies={}) as http:
            async with http.get(h.url + "/admin/spend?by=org", headers={"x-api-key": OWNER_KEY}) as r:
                return sum(row["requests"] for row in (await r.json())["rows"]) == len(events)

    async def alert_fired() -> bool:
        engine = h.app[ALERTS].engine
        return engine is not None and any(r.status == "fired" for r in engine.records.values())

    await until(analytics_caught_up)
    await until(alert_fired)

    browser = Browser(tmp_path / "chromium-profile")
    await browser.start()
    try:
        await browser.goto(h.url + "/dashboard")
        assert await browser.evaluate("location.pathname") == "/dashboard/login"     # no session: the form
        await browser.evaluate("document.getElementById('key').focus()")
        await browser.send("Input.insertText", {"text": "not-the-key"}, session=True)
        await browser.navigated(browser.evaluate("document.querySelector('form').requestSubmit()"))
        assert "not a valid admin credential" in await browser.evaluate("document.body.innerText")
        await browser.evaluate("document.getElementById('key').focus()")
        await browser.send("Input.insertText", {"text": OWNER_KEY}, session=True)
        await browser.navigated(browser.evaluate("document.querySelector('form').requestSubmit()"))
        assert await browser.evaluate("location.pathname") == "/dashboard"
        assert await browser.evaluate("document.cookie") == ""                     # HttpOnly: scripts cannot read it

        png = await browser.screenshot(tmp_path / "dashboard.png")
        await browser.screenshot(tmp_path / "dashboard-full.png", full_page=True)
        html = await browser.evaluate("document.documentElement.outerHTML")
        text = await browser.evaluate("document.body.innerText")
        cell = ("Array.from(document.querySelectorAll('#by-{0} tbody tr')).map("
                "r => Array.from(r.cells).map(c => c.innerText.trim()))")
        by_user = {row[0]: row for row in await browser.evaluate(cell.format("user"))}
        by_org = {row[0]: row for row in await browser.evaluate(cell.format("org"))}
        budgets = await browser.evaluate(
            "Array.from(document.querySelectorAll('#budgets tbody tr')).map(r => r.innerText)")
        logs = [e["params"]["entry"] for e in browser.events if e.get("method") == "Log.entryAdded"]
    finally:
        await browser.close()

    assert OWNER_KEY not in html                                                  # the key never reaches the page
    for user, micro in spent.items():                  # dollars and cents per user, the exact amount on hover
        calls = str(sum(1 for e in events if e.user == user))
        assert by_user[user][2] == shown(micro) and by_user[user][3] == calls, by_user[user]
        assert f'title="{usd(micro)} exactly"' in html
    assert by_org["acme"][2] == shown(spent["alice"] + spent["carol"]) and by_org["globex"][2] == shown(spent["gus"])
    assert shown(sum(e.cost_micro_usd for e in events)) in text                   # today's total card
    assert any("user acme/alice" in b and "80.0%" in b and dollars(limit) in b for b in budgets), budgets
    assert any("user acme/dave" in b and "0.0%" in b for b in budgets), budgets
    assert "agent-alice-1" in text and "budget" in text and "acme/backend/dave" in text   # sessions, refusal
    assert re.search(r"75%\s+user acme/alice", text), "the alert is not shown"
    assert html.count("<svg") >= 8 and 'id="per-minute"' in html
    # Nothing refused by the Content Security Policy, nothing missing; the one 401 is the wrong key above.
    blocked = [entry for entry in logs if entry.get("level") == "error" and "status of 401" not in entry["text"]]
    assert not blocked, blocked

    width, height, rows = png_pixels(png)
    assert (width, height) == (1280, 900)
    colors = {row[x:x + 3] for row in rows[::3] for x in range(0, len(row), 12)}
    assert len(colors) >= 50, f"the screenshot looks blank ({len(colors)} colours)"
    background = max(((row[x:x + 3]) for row in rows[::10] for x in range(0, len(row), 40)),
                     key=lambda c, rs=rows: sum(r.count(c) for r in rs[::50]))
    not_background = sum(1 for row in rows[::5] for x in range(0, len(row), 15) if row[x:x + 3] != background)
    assert not_background > 0.1 * (height // 5) * (width // 5)


async def test_session_cookie_is_signed_and_ends_with_its_credential(gateway: GatewayHarness) -> None:
    h = gateway
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:   # unsafe: an IP host
        async with http.get(h.url + "/dashboard", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/dashboard/login"
        async with http.post(h.url + "/admin/admins", json={"name": "fin", "role": "finance", "reason": "t"},
                             headers={"Authorization": f"Bearer {OWNER_KEY}"}) as r:
            made = await r.json()
        async with http.post(h.url + "/dashboard/login", data={"key": made["key"]}, allow_redirects=False) as r:
            assert r.status == 303
            cookie = r.cookies["llmgw_dashboard"]
            assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/dashboard"
            assert made["key"] not in cookie.value and made["key"] not in r.headers.get("Location", "")
        async with http.get(h.url + "/dashboard/data.json") as r:
            assert r.status == 200 and "budgets" in await r.json()
        payload, signature = cookie.value.rsplit(".", 1)
        forged = payload + "." + ("A" if signature[0] != "A" else "B") + signature[1:]
        async with aiohttp.ClientSession(cookies={"llmgw_dashboard": forged}) as other:
            async with other.get(h.url + "/dashboard/data.json") as r:
                assert r.status == 401
        async with http.delete(f"{h.url}/admin/admins/{made['admin_id']}",
                               headers={"Authorization": f"Bearer {OWNER_KEY}"}) as r:
            assert r.status in (200, 204)
        async with http.get(h.url + "/dashboard/data.json") as r:
            assert r.status == 401                                                 # revoked: the session is over
        async with http.post(h.url + "/dashboard/login", data={"key": "sk-llmgw-kabc-def"}) as r:
            assert r.status == 401
