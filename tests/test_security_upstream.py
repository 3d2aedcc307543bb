"""What comes back from a provider: error bodies never carry the gateway's provider credential, and
only an allow-list of response headers reaches the client."""
from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fake_provider import ANTHROPIC_COUNT_TOKENS, Reply
from tests.gateway_harness import GatewayHarness

ANT = {"anthropic-version": "2023-06-01"}
CALLS = {  # path -> (body, headers, which fake key the upstream was sent)
    "/v1/chat/completions": ({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}, {}, "openai"),
    "/v1/messages": ({"model": "claude-sonnet-4-5", "max_tokens": 10,
                      "messages": [{"role": "user", "content": "hi"}]}, ANT, "anthropic"),
    "/v1/embeddings": ({"model": "text-embedding-3-small", "input": "hi"}, {}, "openai"),
}
HOSTILE_HEADERS = {
    "set-cookie": "session=upstream-cookie", "x-internal-token": "tok-internal-0123456789",
    "openai-organization": "org-gateway-account", "openai-project": "proj_gateway", "anthropic-organization-id": "org-uuid",
    "x-amzn-auth-debug": "debug", "server": "upstream-infra/1.2", "via": "1.1 internal-lb",
    "x-upstream-api-key": "leaked", "cf-ray": "8f00-LAX",
}
INFORMATIVE = {
    "x-ratelimit-remaining-tokens": "99000", "anthropic-ratelimit-input-tokens-remaining": "5000",
    "anthropic-ratelimit-requests-reset": "2026-12-05T12:00:00Z", "retry-after-ms": "250",
}


@pytest.mark.parametrize("path", sorted(CALLS))
@pytest.mark.parametrize("status", [400, 401, 500])
async def test_an_error_body_echoing_the_provider_key_reaches_the_client_scrubbed(
        gw: GatewayHarness, fake_provider: Any, path: str, status: int) -> None:
    body, headers, family = CALLS[path]
    key = fake_provider.openai_key if family == "openai" else fake_provider.anthropic_key
    fake_provider.script(Reply(status=status, error_message=f"invalid key {key} (sent as x-api-key: {key})"))
    client_key, _ = gw.key()
    async with aiohttp.ClientSession() as http, http.post(
            gw.url + path, json=body, headers={"authorization": f"Bearer {client_key}", **headers}) as r:
        got = await r.read()
    assert r.status == status
    assert key.encode() not in got and got.count(b"<redacted>") == 2
    assert len(fake_provider.requests) == 1 and len(await gw.events()) == 1     # still one call, one event


async def test_count_tokens_errors_are_scrubbed_too(gw: GatewayHarness, fake_provider: Any) -> None:
    key = fake_provider.anthropic_key
    fake_provider.script(Reply(status=400, error_message=f"bad key {key}"), api=ANTHROPIC_COUNT_TOKENS)
    client_key, _ = gw.key()
    async with aiohttp.ClientSession() as http, http.post(
            gw.url + "/v1/messages/count_tokens", headers={"x-api-key": client_key, **ANT},
            json={"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]}) as r:
        got = await r.read()
    assert r.status == 400 and key.encode() not in got and b"<redacted>" in got


async def test_a_successful_body_is_relayed_byte_for_byte(gw: GatewayHarness, fake_provider: Any) -> None:
    fake_provider.script(Reply(text=f"the key is {fake_provider.openai_key}"))   # a model may say anything
    client_key, _ = gw.key()
    body, headers, _ = CALLS["/v1/chat/completions"]
    async with aiohttp.ClientSession() as http, http.post(
            gw.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {client_key}"}) as r:
        assert r.status == 200 and fake_provider.openai_key.encode() in await r.read()


@pytest.mark.parametrize("path", sorted(CALLS))
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("status", [200, 429])
async def test_only_allow_listed_response_headers_reach_the_client(
        gw: GatewayHarness, fake_provider: Any, path: str, stream: bool, status: int) -> None:
    body, headers, _ = CALLS[path]
    if stream and path == "/v1/embeddings":
        pytest.skip("embeddings never stream")
    fake_provider.script(Reply(status=status, headers={**HOSTILE_HEADERS, **INFORMATIVE}))
    client_key, _ = gw.key()
    async with aiohttp.ClientSession() as http, http.post(
            gw.url + path, json={**body, **({"stream": True} if stream else {})},
            headers={"authorization": f"Bearer {client_key}", **headers}) as r:
        await r.read()
        got = {k.lower(): v for k, v in r.headers.items()}
    assert r.status == status
    for name in HOSTILE_HEADERS:
        assert name not in got or (name == "server" and "upstream-infra" not in got[name]), name
    for name, value in INFORMATIVE.items():
        assert got.get(name) == value, name
    assert got["content-type"].startswith("text/event-stream" if stream and status == 200 else "application/json")
    assert "x-request-id" in got or "request-id" in got


def test_the_allow_list_reads_names_not_prefixes_alone() -> None:
    from llmgw.proxy.forward import passes_down
    assert passes_down("Anthropic-Ratelimit-Tokens-Remaining") and passes_down("openai-processing-ms")
    assert passes_down("Retry-After") and passes_down("x-should-retry") and passes_down("Content-Type")
    for name in ("openai-organization", "openai-project", "anthropic-organization-id", "openai-api-key",
                 "anthropic-session-token", "Set-Cookie", "transfer-encoding", "connection", "x-powered-by",
                 "x-llmgw-remaining-usd", "strict-transport-security"):
        assert not passes_down(name), name


@given(prefix=st.binary(max_size=60), suffix=st.binary(max_size=60), copies=st.integers(1, 3),
       cuts=st.lists(st.integers(0, 400), max_size=12))
def test_a_streamed_error_never_carries_the_key_whatever_the_chunking(prefix: bytes, suffix: bytes, copies: int,
                                                                       cuts: list[int]) -> None:
    from llmgw.proxy.forward import StreamScrub
    secret = b"sk-ant-api03-secretsecret"
    data = prefix + (secret + suffix) * copies
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    scrub = StreamScrub(secret)
    out = b"".join(scrub.feed(data[a:b]) for a, b in zip(bounds, bounds[1:])) + scrub.tail()
    assert out == data.replace(secret, b"<redacted>")


@pytest.mark.parametrize("reply", ["status", "mid_stream"])
async def test_a_websocket_error_frame_echoing_the_provider_key_reaches_the_client_scrubbed(
        gw: GatewayHarness, fake_provider: Any, reply: str) -> None:
    """Over the Responses WebSocket too: a refusal frame or an in-stream error that quotes the key the
    gateway sent upstream reaches the client redacted, and the call still settles once."""
    key = fake_provider.openai_key
    message = f"invalid key {key}"
    fake_provider.script(Reply(status=401, error_message=message) if reply == "status"
                         else Reply(fail_mid_stream=True, chunks=4, error_message=message))
    client_key, _ = gw.key()
    frames: list[str] = []
    async with aiohttp.ClientSession() as http, http.ws_connect(
            gw.url + "/v1/responses", headers={"authorization": f"Bearer {client_key}"}) as ws:
        await ws.send_json({"type": "response.create", "model": "gpt-5-mini", "input": "hi"})
        while not frames or '"type":"error"' not in frames[-1].replace(" ", ""):
            frames.append(await ws.receive_str(timeout=5))
    assert key not in "".join(frames) and "<redacted>" in frames[-1]
    [ev] = await gw.events()
    assert ev.outcome == "upstream_error"
