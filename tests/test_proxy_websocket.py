"""Codex's WebSocket mode of the Responses API through the gateway."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest

from ledger import events as E
from tests.fake_provider import OPENAI_RESPONSES, Reply, Usage

# Every test here runs against compact, spaced and pretty/escaped provider JSON (tests/fixtures/provider.py).
pytestmark = pytest.mark.usefixtures("wire_style")


async def until_done(ws: aiohttp.ClientWebSocketResponse) -> list[dict]:
    out: list[dict] = []
    while not out or out[-1]["type"] not in ("response.completed", "response.incomplete", "response.failed", "error"):
        out.append(await asyncio.wait_for(ws.receive_json(), 5))
    return out


async def test_websocket_calls_are_relayed_and_each_is_metered(gw, fake_provider):
    key, key_id = gw.key("acme", "backend", "codex-user")
    fake_provider.script(Reply(text="socket reply", chunks=2, usage=Usage(input=900, cache_read=100, output=2)))
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(gw.url + "/v1/responses", headers={"authorization": f"Bearer {key}"}) as ws:
            await ws.send_json({"type": "response.create", "model": "gpt-5", "store": False, "generate": False,
                                "input": "warm up"})
            warm = await until_done(ws)
            assert warm[-1]["response"]["usage"]["output_tokens"] == 0
            await ws.send_json({"type": "response.create", "model": "gpt-5", "store": False,
                                "previous_response_id": warm[-1]["response"]["id"], "input": "hello"})
            events = await until_done(ws)
            text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
            assert text == "socket reply"
    frames = [r for r in fake_provider.requests_for(OPENAI_RESPONSES) if r.method == "WS"]
    assert len(frames) == 2
    assert all(key not in str(r.headers) for r in fake_provider.requests)
    for _ in range(50):
        recorded = await gw.events()
        if len(recorded) == 2:
            break
        await asyncio.sleep(0.05)
    warm_ev, ev = recorded
    assert warm_ev.tokens.output == 0 and warm_ev.outcome == E.OK
    assert ev.tokens == E.Tokens(input=900, cache_read=100, output=2) and ev.api == "responses"
    assert ev.key_id == key_id and ev.cost_micro_usd > 0


async def test_websocket_refusal_is_an_error_frame_and_never_forwarded(gw, fake_provider):
    key, _ = gw.key("acme", "backend", "broke")
    gw.budget("user:broke", "day", "0.0001")
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(gw.url + "/v1/responses", headers={"authorization": f"Bearer {key}"}) as ws:
            await ws.send_json({"type": "response.create", "model": "gpt-5", "input": "expensive",
                                "max_output_tokens": 50000})
            err = await asyncio.wait_for(ws.receive_json(), 5)
    assert err["type"] == "error" and err["status"] == 429
    assert "budget" in err["error"]["message"].lower()
    assert [r for r in fake_provider.requests if r.method == "WS"] == []


async def test_websocket_needs_a_gateway_key(gw):
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await http.ws_connect(gw.url + "/v1/responses", headers={"authorization": "Bearer nope"})
    assert exc.value.status == 401
