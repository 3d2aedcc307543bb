"""Codex's WebSocket mode of the Responses API through the gateway."""
from __future__ import annotations

import asyncio
import time

import aiohttp
import openai
import pytest

from llmgw.core import events as E
from llmgw.ledger.configlog import FileConfigLog
from llmgw.proxy import keys as K
from llmgw.proxy.admin import entities
from llmgw.proxy.ratelimit import RateLimit
from tests.fake_provider import OPENAI_RESPONSES, Reply, Usage
from tests.waits import until

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


# -- one lifecycle: the WebSocket call is the HTTP call --------------------------------------------------

def sdk(gw, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


async def events_until(gw, n: int, timeout_s: float = 5.0) -> list[E.UsageEvent]:
    """The recorded events once there are ``n`` of them (polled; fails if more or too late)."""
    async def enough() -> bool:
        return len(await gw.events()) >= n
    await until(enough, timeout_s, 0.02, f"{n} events recorded")
    recorded = await gw.events()
    assert len(recorded) == n, recorded
    return recorded


async def sdk_turn(conn, **create) -> list:
    """One turn through the SDK's Responses WebSocket client: every event up to the turn's end."""
    await conn.send({"type": "response.create", **create})
    out = []
    async for ev in conn:
        out.append(ev)
        if ev.type in ("response.completed", "response.incomplete", "response.failed", "error"):
            return out
    return out


def no_holds(gw) -> bool:
    return len(gw.gw.policy.holds) == 0 and gw.gw.policy.holds.micro_usd == 0


async def test_a_websocket_call_is_metered_exactly_like_the_same_call_over_http(gw, fake_provider):
    key, key_id = gw.key("acme", "backend", "codex-user")
    served = Usage(input=900, cache_read=100, output=37, reasoning=5)
    fake_provider.script(Reply(text="same answer here", chunks=3, usage=served),
                         Reply(text="same answer here", chunks=3, usage=served))
    client = sdk(gw, key)
    try:
        stream = await client.responses.create(model="gpt-5", input="hello", stream=True)
        http_text = "".join([e.delta async for e in stream if e.type == "response.output_text.delta"])
        async with client.responses.connect() as conn:
            turn = await sdk_turn(conn, model="gpt-5", input="hello")
    finally:
        await client.close()
    ws_text = "".join(e.delta for e in turn if e.type == "response.output_text.delta")
    assert http_text == ws_text == "same answer here" and turn[-1].type == "response.completed"
    over_http, over_ws = await events_until(gw, 2)
    expected = E.Tokens(input=900, cache_read=100, output=37, reasoning=5)
    for ev in (over_http, over_ws):
        assert (ev.outcome, ev.tokens, ev.api, ev.key_id) == (E.OK, expected, "responses", key_id)
        assert not ev.usage_estimated and not ev.cost_estimated and ev.stream
    assert over_ws.cost_micro_usd == over_http.cost_micro_usd > 0
    assert no_holds(gw)


async def test_a_websocket_refusal_is_an_error_frame_and_a_rejected_event(gw, fake_provider):
    key, key_id = gw.key("acme", "backend", "broke")
    gw.budget("user:broke", "day", "0.0001")
    client = sdk(gw, key)
    try:
        async with client.responses.connect() as conn:
            [err] = await sdk_turn(conn, model="gpt-5", input="expensive", max_output_tokens=50000)
    finally:
        await client.close()
    assert err.type == "error" and err.status == 429 and "budget" in err.error.message.lower()
    [ev] = await events_until(gw, 1)
    assert (ev.outcome, ev.key_id, ev.cost_micro_usd, ev.http_status) == (E.REJECTED_BUDGET, key_id, 0, 429)
    assert [r for r in fake_provider.requests if r.method == "WS"] == []
    assert no_holds(gw)


async def test_a_budget_at_cap_downgrades_a_websocket_call(gw, fake_provider):
    # gpt-5's worst case for 2,000 output tokens (~$0.02) is over the cap; gpt-4o-mini's (~$0.0012) fits.
    key, _ = gw.key("acme", "backend", "dora")
    gw.budget("user:dora", "day", "0.005", action="downgrade", downgrade_to="gpt-4o-mini")
    fake_provider.script(Reply(text="cheaper", usage=Usage(input=50, output=20)))
    client = sdk(gw, key)
    try:
        async with client.responses.connect() as conn:
            turn = await sdk_turn(conn, model="gpt-5", input="hi", max_output_tokens=2000,
                                  metadata={"tags": ["team:core"]})
    finally:
        await client.close()
    assert turn[-1].type == "response.completed"
    [frame] = [r for r in fake_provider.requests if r.method == "WS"]
    assert frame.json["model"] == "gpt-4o-mini" and frame.json["type"] == "response.create"
    assert "metadata" not in frame.json                       # the gateway's tags never reach the provider
    [ev] = await events_until(gw, 1)
    assert (ev.model_requested, ev.model_served, ev.outcome) == ("gpt-5", "gpt-4o-mini", E.OK)
    assert "team:core" in ev.tags
    assert ev.price_version.startswith("openai/gpt-4o-mini@") and ev.cost_micro_usd > 0   # billed as served


# -- the key, re-checked ------------------------------------------------------------------------------

async def closed_within(ws: aiohttp.ClientWebSocketResponse, timeout_s: float) -> tuple[list[dict], float]:
    """Frames received until the gateway closes the socket, and how long that took (polled)."""
    loop = asyncio.get_running_loop()
    t0, frames = loop.time(), []
    while True:
        msg = await asyncio.wait_for(ws.receive(), timeout_s - (loop.time() - t0))
        if msg.type == aiohttp.WSMsgType.TEXT:
            frames.append(msg.json())
            continue
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
        return frames, loop.time() - t0


async def test_revoking_a_key_closes_its_open_session_within_a_second(gw, fake_provider):
    """As `llmgw keys revoke` does: the record lands in the config log, the follower applies it."""
    key, key_id = gw.key("acme", "backend", "leaver")
    other, _ = gw.key("acme", "backend", "stayer")
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(gw.url + "/v1/responses", headers={"authorization": f"Bearer {key}"})
        kept = await http.ws_connect(gw.url + "/v1/responses", headers={"authorization": f"Bearer {other}"})
        await ws.send_json({"type": "response.create", "model": "gpt-5", "input": "before"})
        assert (await until_done(ws))[-1]["type"] == "response.completed"
        FileConfigLog(gw.data_dir / "config.jsonl").append_sync(K.revoke(key_id))
        frames, took_s = await closed_within(ws, 1.0)
        assert took_s < 1.0 and ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION
        [err] = frames
        assert err["type"] == "error" and err["status"] == 401 and "revoked" in err["error"]["message"]
        await kept.send_json({"type": "response.create", "model": "gpt-5", "input": "still here"})
        assert (await until_done(kept))[-1]["type"] == "response.completed"     # other keys' sessions go on
        await kept.close()
    assert len([r for r in fake_provider.requests if r.method == "WS"]) == 2
    assert gw.gw.key_sessions == {}


async def test_each_turn_rechecks_the_key(gw, fake_provider):
    """A turn that arrives after the revocation was applied but before sessions were told is refused."""
    key, key_id = gw.key("acme", "backend", "leaver")
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(gw.url + "/v1/responses", headers={"authorization": f"Bearer {key}"}) as ws:
            gw.gw.config.apply(K.revoke(key_id))           # the config as the next turn reads it
            await ws.send_json({"type": "response.create", "model": "gpt-5", "input": "after"})
            [err], _ = await closed_within(ws, 5.0)
    assert err["type"] == "error" and err["status"] == 401 and err["error"]["code"] == "invalid_api_key"
    assert [r for r in fake_provider.requests if r.method == "WS"] == []
    assert await gw.events() == []


async def test_a_key_that_expires_ends_its_session_within_a_second(gw, fake_provider):
    expires_ms = int(time.time() * 1000) + 1500
    key, _ = gw.key("acme", "backend", "temp", expires_ms=expires_ms)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(gw.url + "/v1/responses", headers={"authorization": f"Bearer {key}"}) as ws:
            await ws.send_json({"type": "response.create", "model": "gpt-5", "input": "in time"})
            assert (await until_done(ws))[-1]["type"] == "response.completed"
            [err], _ = await closed_within(ws, 5.0)
            late_s = time.time() - expires_ms / 1000
    assert 0 <= late_s < 1.0 and err["status"] == 401


async def test_revoking_mid_turn_settles_the_turn_once_as_cancelled(gw, fake_provider):
    key, key_id = gw.key("acme", "backend", "leaver")
    gw.budget("user:leaver", "day", "5")
    fake_provider.script(Reply(chunks=100, chunk_delay_s=0.02, usage=Usage(input=10, output=100)))
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(gw.url + "/v1/responses", headers={"authorization": f"Bearer {key}"}) as ws:
            await ws.send_json({"type": "response.create", "model": "gpt-5", "input": "long one"})
            while (await asyncio.wait_for(ws.receive_json(), 5))["type"] != "response.output_text.delta":
                pass
            gw._put(K.revoke(key_id))
            frames, _ = await closed_within(ws, 1.0)
    assert frames[-1]["type"] == "error" and frames[-1]["status"] == 401
    [ev] = await events_until(gw, 1)
    assert ev.outcome == E.CANCELLED and ev.usage_estimated and ev.tokens.output > 0 and ev.cost_micro_usd > 0
    assert no_holds(gw)
    await asyncio.sleep(0.1)
    assert len(await gw.events()) == 1                             # settled once, not again at close


# -- broken upstreams and clients ---------------------------------------------------------------------

async def test_an_upstream_that_drops_mid_turn_leaks_no_hold_and_is_settled_once(gw, fake_provider):
    key, _ = gw.key("acme", "backend", "unlucky")
    gw.budget("user:unlucky", "day", "5")
    fake_provider.script(Reply(chunks=10, drop_mid_stream=True, usage=Usage(input=10, output=10)))
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(gw.url + "/v1/responses", headers={"authorization": f"Bearer {key}"}) as ws:
            await ws.send_json({"type": "response.create", "model": "gpt-5", "input": "hi", "max_output_tokens": 64})
            frames, _ = await closed_within(ws, 5.0)
    deltas = [f for f in frames if f["type"] == "response.output_text.delta"]
    assert 0 < len(deltas) < 10 and not any(f["type"] == "response.completed" for f in frames)
    [ev] = await events_until(gw, 1)
    assert ev.outcome == E.CANCELLED and ev.usage_estimated
    assert 0 < ev.tokens.output <= 64 and ev.cost_micro_usd > 0     # estimated, within the call's own bound
    assert no_holds(gw)
    await asyncio.sleep(0.1)
    assert len(await gw.events()) == 1


async def test_a_client_that_leaves_mid_turn_pays_for_it_once(gw, fake_provider):
    key, _ = gw.key("acme", "backend", "quitter")
    gw.budget("user:quitter", "day", "5")
    fake_provider.script(Reply(chunks=200, chunk_delay_s=0.01, usage=Usage(input=10, output=200)))
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(gw.url + "/v1/responses", headers={"authorization": f"Bearer {key}"})
        await ws.send_json({"type": "response.create", "model": "gpt-5", "input": "long"})
        while (await asyncio.wait_for(ws.receive_json(), 5))["type"] != "response.output_text.delta":
            pass
        await ws.close()
    [ev] = await events_until(gw, 1)
    assert ev.outcome == E.CANCELLED and ev.usage_estimated and ev.cost_micro_usd > 0
    assert no_holds(gw) and gw.gw.key_sessions == {}


async def test_rotating_a_key_ends_sessions_on_the_old_secret_and_narrowing_it_applies_next_turn(gw, fake_provider):
    key, key_id = gw.key("acme", "backend", "rotor")
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(gw.url + "/v1/responses", headers={"authorization": f"Bearer {key}"}) as ws:
            gw._put(entities.update_key(gw.gw.config.get("key", key_id), {"allowed_models": ["gpt-4o-mini"]},
                                        "test", "narrowed"))
            await ws.send_json({"type": "response.create", "model": "gpt-5", "input": "not any more"})
            err = await asyncio.wait_for(ws.receive_json(), 5)
            assert err["status"] == 403 and "gpt-4o-mini" in err["error"]["message"]
            await ws.send_json({"type": "response.create", "model": "gpt-4o-mini", "input": "allowed"})
            assert (await until_done(ws))[-1]["type"] == "response.completed"
            _, rotated = entities.rotate_key(gw.gw.config.get("key", key_id), "test", "rotated")
            gw._put(rotated)
            [err], took_s = await closed_within(ws, 1.0)
    assert err["status"] == 401 and took_s < 1.0
    assert [r.json["model"] for r in fake_provider.requests if r.method == "WS"] == ["gpt-4o-mini"]


async def test_websocket_turns_share_the_rate_limits_and_may_queue_for_them(gw, fake_provider):
    key, _ = gw.key("acme", "backend", "paced")
    gw._put(RateLimit("user", "paced", "rpm", 60, 1).record())          # one call a second
    turn = {"type": "response.create", "model": "gpt-5", "input": "hi"}
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(gw.url + "/v1/responses", headers={"authorization": f"Bearer {key}"}) as ws:
            await ws.send_json(turn)
            assert (await until_done(ws))[-1]["type"] == "response.completed"
            await ws.send_json(turn)
            err = await asyncio.wait_for(ws.receive_json(), 5)
            assert err["type"] == "error" and err["status"] == 429 and err["error"]["code"] == "rate_limit_exceeded"
        async with http.ws_connect(gw.url + "/v1/responses", headers={"authorization": f"Bearer {key}",
                                                                      "x-llmgw-wait": "5"}) as ws:
            await ws.send_json(turn)                                       # waits for the next slot
            assert (await until_done(ws))[-1]["type"] == "response.completed"
    assert [e.outcome for e in await events_until(gw, 3)] == [E.OK, E.REJECTED_RATE, E.OK]
    assert len([r for r in fake_provider.requests if r.method == "WS"]) == 2
