"""Security pass over the public endpoints: whatever a client sends, no 5xx, no crash, no upstream
call for a request the gateway cannot read, and a clear 4xx in the API's own error shape."""
from __future__ import annotations

import asyncio
import gzip
import logging
import os
import signal
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmgw.core.events import encode
from tests.gateway_harness import GatewayHarness

ANT = {"anthropic-version": "2023-06-01"}
MSGS = [{"role": "user", "content": "hi"}]
# endpoint -> (a valid body, extra headers, error shape)
ENDPOINTS: dict[str, tuple[dict[str, Any], dict[str, str], str]] = {
    "/v1/messages": ({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": MSGS}, ANT, "anthropic"),
    "/v1/messages/count_tokens": ({"model": "claude-sonnet-4-5", "messages": MSGS}, ANT, "anthropic"),
    "/v1/chat/completions": ({"model": "gpt-4o-mini", "messages": MSGS}, {}, "openai"),
    "/v1/responses": ({"model": "gpt-5-mini", "input": "hi"}, {}, "openai"),
    "/v1/embeddings": ({"model": "text-embedding-3-small", "input": "hi"}, {}, "openai"),
}
# Fields the gateway itself reads, per endpoint, and what a well-typed value is.
READ_FIELDS = {
    "/v1/messages": ("model", "stream", "max_tokens", "metadata"),
    "/v1/messages/count_tokens": ("model",),
    "/v1/chat/completions": ("model", "stream", "max_tokens", "max_completion_tokens", "n", "metadata"),
    "/v1/responses": ("model", "stream", "max_output_tokens", "metadata"),
    "/v1/embeddings": ("model", "metadata"),
}
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)


def wrong_for(field: str, v: Any) -> bool:
    """True if ``v`` is not an acceptable value of ``field`` (None means "absent" and is fine)."""
    if v is None:
        return field == "model"
    if field == "model":
        return not (isinstance(v, str) and v.strip())
    if field == "stream":
        return not isinstance(v, bool)
    if field == "metadata":
        return not isinstance(v, dict)
    return isinstance(v, bool) or not isinstance(v, int) or v < 0     # token limits and n


def assert_error_shape(shape: str, status: int, body: bytes) -> None:
    assert 400 <= status < 500, (status, body[:300])
    obj = orjson.loads(body)
    if shape == "anthropic":
        assert obj["type"] == "error" and isinstance(obj["error"]["type"], str)
        assert isinstance(obj["error"]["message"], str) and obj["error"]["message"]
    else:
        assert isinstance(obj["error"]["message"], str) and obj["error"]["message"]
        assert isinstance(obj["error"]["type"], str) and "code" in obj["error"]


@pytest.fixture
async def gw(fake_provider, tmp_path):
    h = GatewayHarness(fake_provider, tmp_path, max_body_bytes=200_000)
    await h.start()
    h.client_key, _ = h.key()
    h.http = aiohttp.ClientSession()
    yield h
    await h.http.close()
    await h.stop()


async def post(gw: GatewayHarness, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    hdrs = {"authorization": f"Bearer {gw.client_key}", "content-type": "application/json", **(headers or {})}
    async with gw.http.post(gw.url + path, data=body, headers=hdrs) as r:
        return r.status, await r.read()


# -- JSON fuzz ---------------------------------------------------------------------------------------

@FUZZ
@given(path=st.sampled_from(sorted(ENDPOINTS)), body=json_values)
async def test_any_json_body_is_answered_without_5xx(gw, fake_provider, path, body):
    before = len(fake_provider.requests)
    status, raw = await post(gw, path, orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS), ENDPOINTS[path][1])
    assert status < 500, raw[:300]
    if len(fake_provider.requests) == before:
        assert_error_shape(ENDPOINTS[path][2], status, raw)


@FUZZ
@given(path=st.sampled_from(sorted(ENDPOINTS)), data=st.data())
async def test_a_wrong_type_in_a_field_the_gateway_reads_never_reaches_upstream(gw, fake_provider, path, data):
    field = data.draw(st.sampled_from(READ_FIELDS[path]))
    value = data.draw(json_values.filter(lambda v: wrong_for(field, v)) | st.sampled_from(
        {"model": [3, "", "  ", ["gpt-4o"], {"id": "gpt-4o"}, True],
         "stream": ["true", 1, 0, "false", [True], {}],
         "metadata": [[], ["tags"], "x", 7, True],
         }.get(field, [-1, -(2**40), "10", 10.5, 1e300, True, [5], {"n": 1}])))
    base, headers, shape = ENDPOINTS[path]
    before = len(fake_provider.requests)
    status, raw = await post(gw, path, orjson.dumps({**base, field: value}), headers)
    assert len(fake_provider.requests) == before, f"{field}={value!r} reached the provider"
    assert_error_shape(shape, status, raw)


@FUZZ
@given(path=st.sampled_from(sorted(ENDPOINTS)), body=st.binary(max_size=300))
async def test_any_bytes_are_answered_without_5xx(gw, fake_provider, path, body):
    before = len(fake_provider.requests)
    status, raw = await post(gw, path, body, ENDPOINTS[path][1])
    assert status < 500
    if len(fake_provider.requests) == before:
        assert_error_shape(ENDPOINTS[path][2], status, raw)


@pytest.mark.parametrize("raw", [b"{", b"[]", b"null", b'"x"', b"{}", b'{"model": NaN}', b"\xff\xfe{}",
                                 b"[" * 5000 + b"]" * 5000, b'{"model": 1' + b"0" * 400 + b"}",
                                 b'{"model":"gpt-4o-mini","model":3}'])
async def test_malformed_json_gets_a_400_in_each_shape(gw, fake_provider, raw):
    for path, (_, headers, shape) in ENDPOINTS.items():
        status, body = await post(gw, path, raw, headers)
        assert_error_shape(shape, status, body)
    assert fake_provider.requests == []


async def test_unauthenticated_fuzz_never_reaches_upstream(gw, fake_provider):
    for path, (base, headers, shape) in ENDPOINTS.items():
        for auth in ({}, {"authorization": "Bearer "}, {"x-api-key": "sk-llmgw-"}, {"x-api-key": "sk-llmgw-k-"},
                     {"authorization": "Basic Zm9vOmJhcg=="}, {"x-api-key": "x" * 4000}):
            async with gw.http.post(gw.url + path, json=base, headers={**headers, **auth}) as r:
                assert r.status == 401
                assert_error_shape(shape, r.status, await r.read())
    assert fake_provider.requests == []


# -- bodies: size, encoding, slowness --------------------------------------------------------------------

async def test_huge_bodies_are_refused_before_upstream(gw, fake_provider):
    path, (base, headers, shape) = "/v1/messages", ENDPOINTS["/v1/messages"]
    big = orjson.dumps({**base, "messages": [{"role": "user", "content": "x" * 300_000}]})
    status, body = await post(gw, path, big, headers)
    assert status == 413
    assert_error_shape(shape, status, body)

    async def chunks():                                   # no content-length: counted while read
        for _ in range(40):
            yield b" " * 10_000
    async with gw.http.post(gw.url + path, data=chunks(),
                            headers={**headers, "x-api-key": gw.client_key}) as r:
        assert r.status == 413

    reader, writer = await asyncio.open_connection(*urlsplit(gw.url).netloc.split(":"))
    writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: " + gw.client_key.encode() +
                 b"\r\nanthropic-version: 2023-06-01\r\ncontent-length: 99999999999\r\n\r\n{")
    await writer.drain()
    head = await asyncio.wait_for(reader.readline(), 5)   # refused on the declared length alone
    assert b" 413 " in head
    writer.close()
    assert fake_provider.requests == []


async def test_a_compressed_body_is_bounded_after_inflating_and_forwarded_plain(gw, fake_provider):
    path, (base, headers, _) = "/v1/messages", ENDPOINTS["/v1/messages"]
    bomb = gzip.compress(b" " * 5_000_000)               # 5 MB of spaces in ~5 KB
    status, _ = await post(gw, path, bomb, {**headers, "content-encoding": "gzip"})
    assert status == 413 and fake_provider.requests == []
    status, body = await post(gw, path, gzip.compress(orjson.dumps(base)), {**headers, "content-encoding": "gzip"})
    assert status == 200, body
    [up] = fake_provider.requests
    assert "content-encoding" not in up.headers and up.json == base


async def test_a_slow_client_does_not_hold_up_others_and_never_reaches_upstream(gw, fake_provider):
    host, port = urlsplit(gw.url).netloc.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    body = orjson.dumps(ENDPOINTS["/v1/messages"][0])
    writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: " + gw.client_key.encode()
                 + b"\r\nanthropic-version: 2023-06-01\r\ncontent-length: %d\r\n\r\n" % len(body))
    for i in range(10):                                   # trickle half the body, a byte at a time
        writer.write(body[i:i + 1])
        await writer.drain()
        await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    status, _ = await post(gw, "/v1/chat/completions", orjson.dumps(ENDPOINTS["/v1/chat/completions"][0]))
    assert status == 200 and loop.time() - t0 < 1.0
    writer.close()                                        # and then goes away mid-body
    await asyncio.sleep(0.2)
    assert [r.path for r in fake_provider.requests] == ["/openai/v1/chat/completions"]
    async with gw.http.get(gw.url + "/healthz") as r:
        assert r.status == 200


# -- headers and paths -------------------------------------------------------------------------------------

async def raw_request(gw: GatewayHarness, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    host, port = urlsplit(gw.url).netloc.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head + b"\r\nconnection: close\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


def valid_messages_head(gw: GatewayHarness, target: bytes = b"/v1/messages", extra: bytes = b"") -> bytes:
    return (b"POST " + target + b" HTTP/1.1\r\nhost: gw\r\nx-api-key: " + gw.client_key.encode()
            + b"\r\nanthropic-version: 2023-06-01\r\ncontent-type: application/json" + extra)


@pytest.mark.parametrize("extra", [
    b"\r\nx-llmgw-tags: project:a\rX-Injected: 1",
    b"\r\nx-llmgw-tags: project:a\nX-Injected: 1",
    b"\r\nx-llmgw-tags: project:a\x00b",
    b"\r\nx-llmgw-tags: " + b"project:x," * 20_000,
    b"\r\nx-llmgw-session: " + b"s" * 100_000,
    b"\r\nanthropic-beta: " + b"b" * 9000,
    b"".join(b"\r\nx-h%d: v" % i for i in range(200)),
])
async def test_header_injection_and_absurd_headers(gw, fake_provider, extra):
    """aiohttp's parser refuses all of these (400, before any handler): nothing reaches the provider."""
    body = orjson.dumps(ENDPOINTS["/v1/messages"][0])
    status, _ = await raw_request(gw, valid_messages_head(gw, extra=extra), body)
    assert 400 <= status < 500
    assert fake_provider.requests == [] and await gw.events() == []


async def test_odd_but_legal_tag_headers_are_normalized_not_forwarded(gw, fake_provider):
    extra = b"\r\nx-llmgw-tags: project:a, ,team:b ,bare,  project:a\r\nx-llmgw-session: s-1"
    status, _ = await raw_request(gw, valid_messages_head(gw, extra=extra), orjson.dumps(ENDPOINTS["/v1/messages"][0]))
    assert status == 200
    [up] = fake_provider.requests
    assert not any(k.startswith("x-llmgw-") for k in up.headers)
    [ev] = await gw.events()
    assert ev.tags == ("bare:", "project:a", "team:b") and ev.session_id == "s-1"


@pytest.mark.parametrize("target", [
    b"/v1/../admin", b"/v1/../admin/keys", b"/v1/messages/../../admin", b"//v1/messages", b"/v1//messages",
    b"/v1%2Fmessages", b"/v1/messages%2F..%2F..%2Fadmin", b"/v1/messages%00", b"/V1/MESSAGES",
    b"/v1/messages/", b"/v1/messages;x=1", b"/%2e%2e/admin", b"/v1/" + b"a" * 9000,
    b"http://evil.example/admin",
])
async def test_path_tricks_never_reach_upstream_or_admin(gw, fake_provider, target):
    body = orjson.dumps(ENDPOINTS["/v1/messages"][0])
    status, raw = await raw_request(gw, valid_messages_head(gw, target), body)
    assert 400 <= status < 500, (target, status, raw[:200])
    assert fake_provider.requests == []


@pytest.mark.parametrize("target", [
    b"/v1/messages?beta=true&url=http://evil.example/x",
    b"/v1/messages?beta=true&base_url=http%3A%2F%2Fevil.example",
    b"http://evil.example/v1/messages?beta=true",
])
async def test_query_and_absolute_form_cannot_redirect_the_upstream_call(gw, fake_provider, target):
    body = orjson.dumps(ENDPOINTS["/v1/messages"][0])
    status, _ = await raw_request(gw, valid_messages_head(gw, target, b"\r\nx-forwarded-host: evil.example"), body)
    assert status == 200
    [up] = fake_provider.requests                         # the configured upstream, its fixed path
    assert up.path == "/anthropic/v1/messages"
    assert "evil" not in orjson.dumps([up.query, up.headers]).decode()


async def test_admin_paths_reject_client_keys(gw, fake_provider):
    routes = sorted({(r.method, r.resource.canonical) for r in gw.app.router.routes()
                     if r.resource is not None and r.resource.canonical.startswith("/admin") and r.method != "HEAD"})
    if not routes:
        routes = [("GET", "/admin"), ("GET", "/admin/keys")]
    for method, path in routes:
        url = gw.url + path.replace("{", "x").replace("}", "")
        for auth in ({"authorization": f"Bearer {gw.client_key}"}, {"x-api-key": gw.client_key}):
            async with gw.http.request(method if method != "*" else "POST", url, json={}, headers=auth) as r:
                assert r.status in (401, 403), (method, path, r.status)
    assert fake_provider.requests == []


async def test_the_gateway_survives_the_fuzzing(gw):
    async with gw.http.get(gw.url + "/healthz") as r:
        assert r.status == 200


# -- secrets ------------------------------------------------------------------------------------------------

class RawRecords(logging.Handler):
    """Everything a record carries before any formatter or redaction: message, args, extras, traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "aiohttp.access":     # the test runner's own access log; `llmgw serve` turns it off
            return
        exc = logging.Formatter().formatException(record.exc_info) if record.exc_info else ""
        self.texts.append(" ".join([record.getMessage(), repr(record.args), repr(vars(record)), exc]))


async def exercise_with_secrets(gw: GatewayHarness, fake_provider, url: str, key: str) -> None:
    """Calls that touch every logging path: success, stream, refusals, upstream errors, bad input."""
    from tests.fake_provider import Reply
    secret_prompt = [{"role": "user", "content": "PROMPT-SECRET-4711"}]
    ant_h = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    oai_h = {"authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as http:
        fake_provider.script(Reply(text="COMPLETION-SECRET-0815"), Reply(text="COMPLETION-SECRET-0815"),
                             Reply(status=401), Reply(status=500), Reply(fail_mid_stream=True),
                             Reply(drop_mid_stream=True))
        calls = [
            ("/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": secret_prompt}, ant_h),
            ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": secret_prompt, "stream": True}, oai_h),
            ("/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": secret_prompt}, ant_h),
            ("/v1/chat/completions", {"model": "gpt-4o", "messages": secret_prompt}, oai_h),
            ("/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 10, "stream": True, "messages": secret_prompt}, ant_h),
            ("/v1/chat/completions", {"model": "gpt-4o", "messages": secret_prompt, "stream": True}, oai_h),
            ("/v1/messages", {"model": "no-such-model", "messages": secret_prompt}, ant_h),
            ("/v1/messages?api_key=" + key, {"model": 5, "messages": secret_prompt}, ant_h),
            ("/v1/messages", {"model": "claude-sonnet-4-5", "messages": secret_prompt},
             {"x-api-key": key[:-3] + "zzz", "anthropic-version": "2023-06-01"}),
            ("/v1/chat/completions", {"model": "gpt-4o", "messages": secret_prompt},
             {"authorization": f"Bearer {fake_provider.openai_key}"}),           # an upstream key as a client key
        ]
        for path, body, headers in calls:
            async with http.post(url + path, json=body, headers=headers) as r:
                try:
                    await r.read()
                except aiohttp.ClientPayloadError:
                    pass
        async with http.post(url + "/v1/chat/completions", data=b"{PROMPT-SECRET-4711", headers=oai_h) as r:
            assert r.status == 400


def leaked(text: str, secrets: list[str]) -> list[str]:
    return [s for s in secrets if s in text]


async def test_secrets_and_bodies_never_reach_logs_or_events(gw, fake_provider):
    handler = RawRecords()
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        await exercise_with_secrets(gw, fake_provider, gw.url, gw.client_key)
        events = await gw.events()
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
    secrets = [gw.client_key, gw.client_key[len("sk-llmgw-") + 14:], fake_provider.anthropic_key, fake_provider.openai_key,
               "PROMPT-SECRET", "COMPLETION-SECRET"]
    assert any('"request"' in t or "'request'" in t for t in handler.texts), "the access log was captured"
    assert leaked("\n".join(handler.texts), secrets) == []
    assert len(events) >= 6
    assert leaked(b"\n".join(encode(e) for e in events).decode(), secrets) == []


async def test_secrets_never_reach_the_served_process_logs(fake_provider, tmp_path):
    from tests.test_ops_shutdown import key_for, serve
    env = dict(os.environ)
    env.update(LLMGW_DATA_DIR=str(tmp_path / "data"), LLMGW_OPENAI_BASE_URL=fake_provider.openai_base_url,
               LLMGW_OPENAI_API_KEY=fake_provider.openai_key, LLMGW_ANTHROPIC_BASE_URL=fake_provider.anthropic_base_url,
               LLMGW_ANTHROPIC_API_KEY=fake_provider.anthropic_key, LLMGW_ANALYTICS="0", LLMGW_LOG_LEVEL="DEBUG",
               LLMGW_ADMIN_KEY="llmgw-admin-test-only-0123456789")
    env.pop("LLMGW_KAFKA_BOOTSTRAP", None)
    key = key_for(env)
    proc, url = await serve(env)
    try:
        await exercise_with_secrets(None, fake_provider, url, key)  # type: ignore[arg-type]
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 30)
    out, err = proc.stdout.read(), proc.stderr.read()
    lines = [line for line in err.splitlines() if line.strip()]
    assert sum('"event":"request"' in line for line in lines) == 11   # one access line per call
    assert all(orjson.loads(line) for line in lines)       # every log line is one JSON object
    secrets = [key, key[len("sk-llmgw-") + 14:], fake_provider.anthropic_key, fake_provider.openai_key,
               "llmgw-admin-test-only-0123456789", "PROMPT-SECRET", "COMPLETION-SECRET"]
    assert leaked(out + err, secrets) == []
    log = (tmp_path / "data" / "ledger" / "events.log").read_text()
    assert leaked(log, secrets) == []
