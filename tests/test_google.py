"""Vertex AI (Anthropic and Gemini) and the Gemini API through the real gateway, with the official
clients (anthropic's AnthropicVertex, google-genai) and the fake Google (tests/fakes/google.py)."""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import anthropic
import pytest
import pytest_asyncio

from llmgw.core import events as E
from llmgw.pricing import cost, load_catalog
from tests.fakes.google import API_KEY, TOKEN, FakeGoogle, GoogleReply, GoogleUsage
from tests.gateway_harness import GatewayHarness

genai = pytest.importorskip("google.genai")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def google_server() -> AsyncIterator[FakeGoogle]:
    async with FakeGoogle() as fake:
        yield fake


@pytest.fixture
def google(google_server: FakeGoogle) -> FakeGoogle:
    google_server.reset()
    return google_server


@pytest.fixture
async def gw(fake_provider, google: FakeGoogle, tmp_path: Path) -> AsyncIterator[GatewayHarness]:
    ups = {**google.vertex_config(), **google.gemini_config()}
    async with GatewayHarness(fake_provider, tmp_path, file_config={"upstreams": ups}) as h:
        yield h


def priced(model: str, tokens: E.Tokens, ts_ms: int) -> int:
    return cost(tokens, load_catalog().price_at(model, ts_ms), service_tier="standard").micro_usd


def vertex_client(gw: GatewayHarness, key: str) -> anthropic.AsyncAnthropicVertex:
    # the gateway key rides as x-api-key, as Claude Code's ANTHROPIC_CUSTOM_HEADERS sends it in Vertex mode
    return anthropic.AsyncAnthropicVertex(base_url=gw.url + "/vertex/v1", region="europe-west1",
                                          project_id="callers-project", access_token="unused-google-token",
                                          default_headers={"x-api-key": key}, max_retries=0)


async def test_vertex_anthropic_stream_and_json(gw, google):
    key, key_id = gw.key("acme", "ml", "dana")
    google.script(GoogleReply(text="from vertex", usage=GoogleUsage(input=33, output=6, cache_read=900,
                                                                      cache_write=120), seed=3),
                  GoogleReply(text="plain vertex", usage=GoogleUsage(input=10, output=2)))
    client = vertex_client(gw, key)
    try:
        async with client.messages.stream(model="claude-opus-5-5", max_tokens=64,
                                          messages=[{"role": "user", "content": "hi"}]) as s:
            text = "".join([t async for t in s.text_stream])
        msg = await client.messages.create(model="claude-sonnet-4-5@20250929", max_tokens=64,
                                           messages=[{"role": "user", "content": "hi"}])
    finally:
        await client.close()
    assert text == "from vertex" and msg.content[0].text == "plain vertex"
    r1, r2 = google.requests
    # the gateway's project and location go up, never the caller's; its own token, not the caller's
    assert r1.path == "/v1/projects/gw-project/locations/us-east5/publishers/anthropic/models/claude-opus-5-5:streamRawPredict"
    assert r2.path.endswith("/models/claude-sonnet-4-5@20250929:rawPredict")
    assert r1.headers["authorization"] == f"Bearer {TOKEN}" and key not in str(r1.headers)
    e1, e2 = sorted(await gw.events(), key=lambda e: e.ts_start_ms)
    assert e1.tokens == E.Tokens(input=33, output=6, cache_read=900, cache_write_5m=120) and e1.stream
    assert (e1.provider, e1.api, e1.key_id, e1.outcome) == ("vertex", "vertex_messages", key_id, E.OK)
    assert e1.cost_micro_usd == priced("claude-opus-5-5", e1.tokens, e1.ts_start_ms)
    assert e2.tokens == E.Tokens(input=10, output=2) and not e2.stream


async def test_gemini_api_via_google_genai(gw, google):
    key, _ = gw.key()
    google.script(GoogleReply(text="gemini says hi", usage=GoogleUsage(input=40, cache_read=60, output=25,
                                                                         thoughts=20), seed=5),
                  GoogleReply(text="one two three", usage=GoogleUsage(input=8, output=3), seed=6))
    client = genai.Client(api_key=key, http_options={"base_url": gw.url + "/gemini"})
    resp = await client.aio.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert resp.text == "gemini says hi"
    chunks = [c async for c in await client.aio.models.generate_content_stream(model="gemini-2.5-pro", contents="x")]
    assert "".join(c.text or "" for c in chunks) == "one two three"
    counted = await client.aio.models.count_tokens(model="gemini-2.5-flash", contents="how many")
    assert counted.total_tokens and counted.total_tokens > 0
    r1, r2, r3 = google.requests
    assert r3.path.endswith("/models/gemini-2.5-flash:countTokens") and r3.headers["x-goog-api-key"] == API_KEY
    assert r1.headers["x-goog-api-key"] == API_KEY and key not in str(r1.headers)
    assert r2.query == {"alt": "sse"} and r2.path.endswith("/models/gemini-2.5-pro:streamGenerateContent?alt=sse")
    e1, e2 = sorted(await gw.events(), key=lambda e: e.ts_start_ms)
    # promptTokenCount 100 includes the 60 cached; thoughts are output
    assert e1.tokens == E.Tokens(input=40, cache_read=60, output=25, reasoning=20) and e1.api == "gemini_generate"
    assert e1.provider == "gemini" and e1.cost_micro_usd == priced("gemini-2.5-flash", e1.tokens, e1.ts_start_ms)
    assert e2.tokens == E.Tokens(input=8, output=3) and e2.stream and e2.outcome == E.OK


async def test_vertex_gemini_and_refusals(gw, google, http):
    key, _ = gw.key()
    google.script(GoogleReply(text="a b c d", usage=GoogleUsage(input=5, output=4)))
    url = gw.url + "/vertex/v1beta1/projects/p/locations/global/publishers/google/models/gemini-2.5-flash"
    auth = {"authorization": f"Bearer {key}"}
    async with http.post(url + ":streamGenerateContent?alt=sse", headers=auth,
                         data=b'{"contents": [{"role": "user", "parts": [{"text": "x"}]}]}') as r:
        assert r.status == 200 and b"usageMetadata" in await r.read()
    assert google.requests[-1].path.startswith("/v1beta1/projects/gw-project/locations/us-east5/")
    async with http.post(url + ":generateContent", data=b"{}") as r:                      # no key
        assert r.status == 401 and (await r.json())["error"]["status"] == "UNAUTHENTICATED"
    async with http.post(url + ":generateContent", headers=auth, data=b'{"generationConfig": 3}') as r:
        assert r.status == 400 and (await r.json())["error"]["status"] == "INVALID_ARGUMENT"
    async with http.post(gw.url + "/gemini/v1beta/models/gemini-9-ultra:generateContent", headers=auth,
                         data=b'{"contents": []}') as r:
        assert r.status == 400 and "no price" in (await r.json())["error"]["message"]
    async with http.post(gw.url + "/vertex/v1/projects/p/locations/l/publishers/anthropic/models/claude-opus-5-5:predict",
                         headers=auth, data=b"{}") as r:
        assert r.status == 400
    assert len(google.requests) == 1
    [ev] = await gw.events()
    assert ev.tokens == E.Tokens(input=5, output=4) and ev.provider == "vertex"


async def test_gemini_stream_cut_mid_way_is_billed(gw, google, http):
    key, _ = gw.key()
    google.script(GoogleReply(text="w1 w2 w3 w4 w5 w6 w7 w8", usage=GoogleUsage(input=50, output=8),
                              drop_mid_stream=True, seed=11))
    async with http.post(gw.url + "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
                         headers={"x-goog-api-key": key},
                         data=b'{"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"maxOutputTokens": 50}}') as r:
        try:
            await r.read()
        except Exception:                             # noqa: BLE001 - the cut reaches the client as it may
            pass
    [ev] = await gw.events()
    assert ev.outcome == E.UPSTREAM_ERROR and ev.tokens.output >= 1 and ev.cost_micro_usd > 0


async def test_vertex_token_minted_from_a_service_account_file(fake_provider, google, tmp_path, http):
    """The real deployment path: google-auth signs a JWT with the service account's key and trades it
    at the token endpoint; the token is reused across calls, not minted per call."""
    pytest.importorskip("google.oauth2.service_account")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    google.sa_public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    sa = tmp_path / "sa.json"
    sa.write_text(json.dumps({"type": "service_account", "project_id": "gw-project", "private_key_id": "k1",
                              "private_key": pem, "client_email": "llmgw@gw-project.iam.gserviceaccount.com",
                              "client_id": "1", "token_uri": f"{google.base_url}/token"}))
    ups = {"vertex": {"kind": "vertex", "project": "gw-project", "location": "global", "base_url": google.base_url,
                      "credentials_file": str(sa)}}
    async with GatewayHarness(fake_provider, tmp_path, file_config={"upstreams": ups}) as h:
        k, _ = h.key()
        url = h.url + "/vertex/v1/projects/x/locations/y/publishers/anthropic/models/claude-haiku-4-5:rawPredict"
        body = b'{"anthropic_version": "vertex-2023-10-16", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}'
        for _ in range(2):
            async with http.post(url, data=body, headers={"x-api-key": k}) as r:
                assert r.status == 200, await r.text()
        assert google.minted == 1
        assert [r.headers["authorization"] for r in google.requests] == ["Bearer ya29.minted-1"] * 2
        assert all("/projects/gw-project/locations/global/" in r.path for r in google.requests)
        assert len(await h.events()) == 2


async def test_vertex_gemini_via_google_genai(gw, google):
    """google-genai in Vertex mode, its OAuth bearer being the gateway key (a static credentials object)."""
    from google.oauth2.credentials import Credentials

    key, key_id = gw.key()
    google.script(GoogleReply(text="vertex gemini", usage=GoogleUsage(input=12, cache_read=4, output=9, thoughts=5)))
    client = genai.Client(vertexai=True, project="callers-project", location="us-central1",
                          credentials=Credentials(token=key), http_options={"base_url": gw.url + "/vertex/"})
    chunks = [c async for c in await client.aio.models.generate_content_stream(model="gemini-2.5-pro", contents="x")]
    assert "".join(c.text or "" for c in chunks) == "vertex gemini"
    [up] = google.requests
    assert "/projects/gw-project/locations/us-east5/publishers/google/models/gemini-2.5-pro:streamGenerateContent" in up.path
    assert up.headers["authorization"] == f"Bearer {TOKEN}"
    [ev] = await gw.events()
    assert ev.tokens == E.Tokens(input=12, cache_read=4, output=9, reasoning=5) and ev.key_id == key_id
    assert ev.provider == "vertex" and ev.cost_micro_usd == priced("gemini-2.5-pro", ev.tokens, ev.ts_start_ms)
