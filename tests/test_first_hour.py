"""What a newcomer meets in the first hour: a gateway that will not start keyless, clear errors on wrong paths."""
from __future__ import annotations

import signal
import subprocess
import sys

import anthropic
import openai
import pytest

from tests.test_cli_serve import env, free_port, llmgw, wait_ready  # noqa: F401  (env is a fixture)


def test_serve_refuses_to_start_without_any_upstream_credential(env):
    keyless = {k: v for k, v in env.items() if k not in ("LLMGW_OPENAI_API_KEY", "LLMGW_ANTHROPIC_API_KEY")}
    out = llmgw("serve", "--port", str(free_port()), env=keyless)
    assert out.returncode == 2
    assert "no upstream credential" in out.stderr and "--no-upstream-auth" in out.stderr


async def _starts(env: dict[str, str], *argv: str) -> str:
    """Start `llmgw serve`, wait until it answers, stop it; its stderr."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llmgw.proxy.cli", "serve", "--port", str(port), *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        await wait_ready(f"http://127.0.0.1:{port}", proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    return err


async def test_serve_names_the_upstream_that_has_no_credential(env):
    err = await _starts({k: v for k, v in env.items() if k != "LLMGW_ANTHROPIC_API_KEY"})
    assert "no credential for upstream anthropic" in err and "no upstream credential is set" not in err


@pytest.mark.parametrize("flag", ["--no-upstream-auth", "LLMGW_UPSTREAM_AUTH=0"])
async def test_no_upstream_auth_lets_a_keyless_model_server_start(env, flag):
    keyless = {k: v for k, v in env.items() if k not in ("LLMGW_OPENAI_API_KEY", "LLMGW_ANTHROPIC_API_KEY")}
    if flag.startswith("--"):
        err = await _starts(keyless, flag)
    else:
        err = await _starts({**keyless, "LLMGW_UPSTREAM_AUTH": "0"})
    assert "no upstream credential" not in err


async def test_an_unknown_path_says_no_route_in_each_sdk_shape(gw, fake_provider):
    key, _ = gw.key()
    async with openai.AsyncOpenAI(base_url=gw.url, api_key=key, max_retries=0) as client:   # forgot the /v1
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    err = caught.value.body
    assert err["code"] == "no_route" and "no route for POST /chat/completions" in err["message"]
    async with anthropic.AsyncAnthropic(base_url=gw.url + "/v2", api_key=key, max_retries=0) as client:
        with pytest.raises(anthropic.NotFoundError) as caught_a:
            await client.messages.create(model="claude-haiku-4-5", max_tokens=5,
                                         messages=[{"role": "user", "content": "hi"}])
    assert "no route for POST /v2/v1/messages" in str(caught_a.value)
    assert fake_provider.requests == []


@pytest.mark.parametrize("header", ["session_id", "session-id", "thread-id"])
async def test_codex_sessions_are_traced_by_their_own_headers(gw, header):
    key, _ = gw.key()
    async with openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0,
                                  default_headers={header: "0199a2b3-codex"}) as client:
        await client.responses.create(model="gpt-4o-mini", input="hi")
    [ev] = await gw.events()
    assert ev.session_id == "0199a2b3-codex"


async def test_claude_codes_beta_query_reaches_the_upstream_and_nothing_else_does(gw, fake_provider):
    key, _ = gw.key()
    async with anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0) as client:
        await client.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "hi"}],
                                     extra_query={"beta": "true", "base_url": "http://evil.example", "x": "1"})
        await client.messages.count_tokens(model="claude-haiku-4-5", messages=[{"role": "user", "content": "hi"}],
                                           extra_query={"beta": "true"})
    assert [(r.path, r.query) for r in fake_provider.requests] == [
        ("/anthropic/v1/messages", {"beta": "true"}), ("/anthropic/v1/messages/count_tokens", {"beta": "true"})]


@pytest.mark.parametrize("value", [b"project:x," * 20_000, b"s" * 9000])
async def test_a_huge_header_is_answered_431_in_the_api_shape_not_reset(gw, fake_provider, value):
    """aiohttp's own refusal closed the socket with the body unread: a reset on Python 3.12, not a 400."""
    import orjson

    from tests.test_fuzz_endpoints import ENDPOINTS, raw_request
    key, _ = gw.key()
    body = orjson.dumps(ENDPOINTS["/v1/messages"][0])
    head = (b"POST /v1/messages HTTP/1.1\r\nhost: gw\r\nx-api-key: " + key.encode()
            + b"\r\nanthropic-version: 2023-06-01\r\ncontent-type: application/json\r\nx-llmgw-tags: " + value)
    status, raw = await raw_request(gw, head, body)
    assert status == 431
    err = orjson.loads(raw)
    assert err["type"] == "error" and "x-llmgw-tags" in err["error"]["message"]
    assert fake_provider.requests == []


async def test_headers_each_within_the_limit_pass_however_many(gw, fake_provider):
    """The limit is per header: several near it (together far past it) are served."""
    key, _ = gw.key()
    big = {f"x-trace-{i}": "v" * 8000 for i in range(3)}
    async with anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0, default_headers=big) as client:
        await client.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert len(fake_provider.requests) == 1


def test_budgets_explain_takes_the_key_as_printed(env):
    key = llmgw("keys", "create", "--org", "acme", "--workspace", "w", "--user", "alice", env=env).stdout.strip()
    out = llmgw("budgets", "explain", "--key", key, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"key {key.split('-')[2]}: org acme, workspace w, user alice")
