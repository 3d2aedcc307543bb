"""The standing hostile-input suite: every malformed request in tests/hostile_corpus.py is refused with a
4xx in the client API's own error shape, before any upstream call, and the gateway keeps serving.

The fake provider counts every request it receives, so "0 upstream calls" is measured, not assumed.
bench/hostile_input.py runs the same corpus 10,000 times against a served process (docs/operations.md).
"""
from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import brotli
import orjson
import pytest
from hypothesis import given, strategies as st

from tests.admin_support import OWNER_KEY, Api
from tests.gateway_harness import GatewayHarness
from tests.hostile_corpus import VALID, Case, assert_error_shape, cases, stream


@pytest.fixture
async def hgw(fake_provider: Any, tmp_path: Path) -> AsyncIterator[GatewayHarness]:
    async with GatewayHarness(fake_provider, tmp_path, admin_key=OWNER_KEY, max_body_bytes=200_000) as h:
        h.client_key, _ = h.key()
        yield h


async def send(http: aiohttp.ClientSession, gw: GatewayHarness, case: Case) -> tuple[int, bytes]:
    headers = {"authorization": f"Bearer {gw.client_key}", **case.headers}
    async with http.post(gw.url + case.path, data=case.body, headers=headers) as r:
        return r.status, await r.read()


@pytest.mark.parametrize("case", cases(), ids=lambda c: c.name)
async def test_each_malformed_request_is_refused_before_upstream(hgw: GatewayHarness, fake_provider: Any,
                                                                 case: Case) -> None:
    async with aiohttp.ClientSession() as http:
        status, body = await send(http, hgw, case)
    assert_error_shape(case, status, body)
    assert fake_provider.requests == [], f"{case.name} reached the provider"
    assert [e for e in await hgw.events() if e.outcome == "ok"] == []


async def test_the_valid_twin_of_every_case_goes_through(hgw: GatewayHarness, fake_provider: Any) -> None:
    """The corpus's base bodies are valid: each defect alone is what gets a request refused."""
    async with aiohttp.ClientSession() as http:
        for path, (body, headers, _) in VALID.items():
            status, raw = await send(http, hgw, Case("valid", path, headers, orjson.dumps(body), ""))
            assert status == 200, (path, raw[:300])
            status, raw = await send(http, hgw, Case("valid gzip", path, {**headers, "content-encoding": "gzip"},
                                                     gzip.compress(orjson.dumps(body)), ""))
            assert status == 200, (path, raw[:300])
            status, raw = await send(http, hgw, Case("valid br", path, {**headers, "content-encoding": "br"},
                                                     brotli.compress(orjson.dumps(body)), ""))
            assert status == 200, (path, raw[:300])
    assert len(fake_provider.requests) == 3 * len(VALID)


@pytest.mark.parametrize("model", ["gpt-4o-mini-2024-07-18", "accounts/fireworks/models/llama-v3p1-8b",
                                   "anthropic.claude-3-5-sonnet-20240620-v1:0", "claude-sonnet-4-5@20250929",
                                   "ft:gpt-4o-mini:acme:custom:abc123", "meta-llama/Llama-3.3-70B-Instruct+x"])
def test_real_model_name_shapes_are_not_refused(model: str) -> None:
    from llmgw.proxy.adapters._common import require_model
    assert require_model({"model": model}) == model


@given(st.text(st.sampled_from("a1./-:"), min_size=1, max_size=12))
def test_a_model_name_with_an_empty_dot_or_dotdot_path_segment_is_refused(model: str) -> None:
    """``require_model`` looks at path segments only when the name has a slash: the same verdict
    as splitting every name."""
    import re
    from llmgw.proxy.adapters._common import require_model
    from llmgw.proxy.errors import BadRequest
    ok = (re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:/@+\-]*", model) is not None
          and all(part not in ("", ".", "..") for part in model.split("/")))
    try:
        assert require_model({"model": model}) == model and ok
    except BadRequest:
        assert not ok


@pytest.mark.parametrize("encoding", ["gzip", "br", "deflate", "zstd"])
async def test_an_undecodable_body_closes_the_connection_and_the_next_call_is_served(
        hgw: GatewayHarness, fake_provider: Any, encoding: str) -> None:
    body, headers, _ = VALID["/v1/chat/completions"]
    async with aiohttp.ClientSession() as http:                   # one pooled connection, reused if it can be
        for _ in range(3):
            status, raw = await send(http, hgw, Case("bad", "/v1/chat/completions",
                                                     {**headers, "content-encoding": encoding}, orjson.dumps(body), ""))
            assert status == 400 and orjson.loads(raw)["error"]["type"] == "invalid_request_error", raw[:200]
            status, _ = await send(http, hgw, Case("good", "/v1/chat/completions", headers, orjson.dumps(body), ""))
            assert status == 200
    assert len(fake_provider.requests) == 3


@pytest.mark.parametrize("field,value", [("limit_usd", "NaN"), ("limit_usd", "Infinity"), ("limit_usd", "-Infinity"),
                                         ("limit_usd", "1e15"), ("limit_usd", 1e15), ("limit_usd", "sNaN"),
                                         ("limit_usd", "ten"), ("limit_micro_usd", 10**18)])
async def test_admin_budget_limits_must_be_finite_and_in_range(hgw: GatewayHarness, field: str, value: Any) -> None:
    async with aiohttp.ClientSession() as http:
        owner = Api(http, hgw.url, OWNER_KEY)
        status, body = await owner.post("/admin/budgets", {"scope": "user:alice", "org": "acme", "window": "day",
                                                           field: value})
    assert status == 400, body
    assert isinstance(body["error"]["message"], str) and body["error"]["type"] == "invalid_request_error"


async def test_admin_bodies_that_are_not_their_encoding_get_a_400(hgw: GatewayHarness) -> None:
    async with aiohttp.ClientSession() as http, http.post(
            hgw.url + "/admin/orgs", data=b'{"name":"x"}',
            headers={"authorization": f"Bearer {OWNER_KEY}", "content-encoding": "deflate"}) as r:
        assert r.status == 400 and (await r.json())["error"]["type"] == "invalid_request_error"


async def test_a_malformed_run_leaves_no_5xx_and_no_upstream_call(hgw: GatewayHarness, fake_provider: Any) -> None:
    """The bench's run, small: every defect once and then random picks, 8 clients at a time."""
    statuses: list[int] = []
    todo = list(stream(600))

    async def client(http: aiohttp.ClientSession) -> None:
        while todo:
            case = todo.pop()
            status, body = await send(http, hgw, case)
            statuses.append(status)
            assert_error_shape(case, status, body)

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(client(http) for _ in range(8)))
        status, _ = await send(http, hgw, Case("valid", "/v1/chat/completions", {},
                                               orjson.dumps(VALID["/v1/chat/completions"][0]), ""))
    assert len(statuses) == 600 and max(statuses) < 500
    assert status == 200 and len(fake_provider.requests) == 1      # only the valid call after the run
