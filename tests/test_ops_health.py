"""Readiness that follows the snapshot's age, and the per-workspace failure policy when it is stale."""
from __future__ import annotations

import asyncio
import os
import time
from dataclasses import replace

import aiohttp
import anthropic
import openai
import pytest

from llmgw.ledger.driver import KAFKA, LedgerHealth
from llmgw.ledger.embedded import EmbeddedLedger
from llmgw.proxy.failure import FAIL_CLOSED, FAIL_OPEN, STALE_TAG, FailurePolicy, Rule
from tests.gateway_harness import GatewayHarness

POLICY = {"failure_policy": {
    "default": {"mode": "fail_closed", "max_stale_s": 60},
    "workspaces": {"research": {"mode": "fail_open"}, "acme/payments": {"max_stale_s": 600}},
}}


class SnapshotLedger(EmbeddedLedger):
    """The embedded ledger dressed as a Kafka-mode one: the test sets the snapshot's state."""

    def __init__(self, data_dir) -> None:
        super().__init__(data_dir)
        self.snapshot_ready = True
        self.last_snapshot_ms = int(time.time() * 1000)

    def age(self, seconds: float) -> None:
        self.last_snapshot_ms = int((time.time() - seconds) * 1000)

    def health(self) -> LedgerHealth:
        return replace(super().health(), mode=KAFKA, snapshot_ready=self.snapshot_ready,
                       last_snapshot_ms=self.last_snapshot_ms)


async def get_json(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as r:
            return r.status, await r.json()


async def gauge(url: str, name: str) -> float:
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/metrics") as r:
            for line in (await r.text()).splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


@pytest.fixture
async def stale_gw(fake_provider, tmp_path):
    led = SnapshotLedger(tmp_path)
    h = GatewayHarness(fake_provider, tmp_path, ledger=led, snapshot_max_age_s=30.0, file_config=POLICY)
    h.led = led
    await h.start()
    yield h
    await h.stop()


async def test_embedded_gateway_is_live_and_ready(fake_provider, tmp_path):
    h = GatewayHarness(fake_provider, tmp_path)
    await h.start()
    try:
        assert (await get_json(h.url + "/healthz"))[0] == 200
        status, body = await get_json(h.url + "/readyz")
        assert status == 200 and body["status"] == "ready" and body["mode"] == "embedded"
        assert body["snapshot_age_s"] == 0
    finally:
        await h.stop()


async def test_readiness_flips_when_the_snapshot_goes_stale_and_back(stale_gw):
    url = stale_gw.url
    status, body = await get_json(url + "/readyz")
    assert status == 200 and body["mode"] == "kafka" and body["snapshot_age_s"] < 5

    stale_gw.led.age(95)                                   # the follower stopped hearing from Kafka
    status, body = await get_json(url + "/readyz")
    assert status == 503 and body["status"] == "not_ready"
    assert "95" in body["reason"] and "LLMGW_SNAPSHOT_MAX_AGE_S" in body["reason"]
    assert body["snapshot_age_s"] >= 95
    assert await gauge(url, "llmgw_snapshot_age_seconds") >= 95
    assert await gauge(url, "llmgw_ready") == 0
    assert (await get_json(url + "/healthz"))[0] == 200   # still alive: liveness is not readiness

    stale_gw.led.snapshot_ready = False                    # e.g. restarted, still reading the topic
    status, body = await get_json(url + "/readyz")
    assert status == 503 and "not caught up" in body["reason"] and body["snapshot_age_s"] is None

    stale_gw.led.snapshot_ready = True
    stale_gw.led.age(0)
    assert (await get_json(url + "/readyz"))[0] == 200
    assert await gauge(url, "llmgw_ready") == 1


async def test_fresh_snapshot_serves_everyone_untagged(stale_gw, fake_provider):
    stale_gw.led.age(10)
    key, _ = stale_gw.key("acme", "backend", "alice")
    client = anthropic.AsyncAnthropic(base_url=stale_gw.url, api_key=key, max_retries=0)
    await client.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    [ev] = await stale_gw.events()
    assert STALE_TAG not in ev.tags


async def test_stale_past_max_fail_closed_refuses_in_each_api_shape(stale_gw, fake_provider):
    stale_gw.led.age(120)                                 # past the default's 60 s
    key, _ = stale_gw.key("acme", "backend", "alice")
    with pytest.raises(anthropic.InternalServerError) as exc:
        await anthropic.AsyncAnthropic(base_url=stale_gw.url, api_key=key, max_retries=0).messages.create(
            model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert exc.value.status_code == 503
    assert exc.value.body["type"] == "error" and exc.value.body["error"]["type"] == "overloaded_error"
    assert "ledger is unreachable" in exc.value.body["error"]["message"] and "120 s old" in exc.value.body["error"]["message"]
    assert exc.value.response.headers["retry-after"] == "5"
    with pytest.raises(openai.InternalServerError) as oexc:
        await openai.AsyncOpenAI(base_url=stale_gw.url + "/v1", api_key=key, max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert oexc.value.status_code == 503 and oexc.value.body["code"] == "unavailable"
    assert fake_provider.requests == []                    # nothing reached the provider
    assert await stale_gw.events() == []
    async with aiohttp.ClientSession() as http:
        text = await (await http.get(stale_gw.url + "/metrics")).text()
    assert 'llmgw_refusals_total{reason="ledger_stale"} 2.0' in text


async def test_stale_past_max_fail_open_serves_and_tags_the_event(stale_gw, fake_provider):
    stale_gw.led.age(120)
    key, _ = stale_gw.key("acme", "research", "bob")
    resp = await openai.AsyncOpenAI(base_url=stale_gw.url + "/v1", api_key=key, max_retries=0).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}],
        extra_headers={"x-llmgw-tags": "project:lab"})
    assert resp.choices[0].message.content
    [ev] = await stale_gw.events()
    assert ev.tags == ("llmgw:stale", "project:lab") and ev.cost_micro_usd > 0


async def test_per_workspace_bound_overrides_the_default(stale_gw, fake_provider):
    stale_gw.led.age(300)                                  # over 60 (default), under 600 (acme/payments)
    key, _ = stale_gw.key("acme", "payments", "carol")
    other_org_key, _ = stale_gw.key("globex", "payments", "dave")   # "acme/payments" only matches acme
    client = anthropic.AsyncAnthropic(base_url=stale_gw.url, api_key=key, max_retries=0)
    await client.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.InternalServerError):
        await anthropic.AsyncAnthropic(base_url=stale_gw.url, api_key=other_org_key, max_retries=0).messages.create(
            model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    [ev] = await stale_gw.events()
    assert ev.org == "acme" and STALE_TAG not in ev.tags


async def test_no_snapshot_yet_counts_as_infinitely_stale(stale_gw, fake_provider):
    stale_gw.led.snapshot_ready = False
    closed, _ = stale_gw.key("acme", "backend", "alice")
    opened, _ = stale_gw.key("acme", "research", "bob")
    with pytest.raises(anthropic.InternalServerError) as exc:
        await anthropic.AsyncAnthropic(base_url=stale_gw.url, api_key=closed, max_retries=0).messages.create(
            model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert "never loaded" in exc.value.body["error"]["message"]
    await anthropic.AsyncAnthropic(base_url=stale_gw.url, api_key=opened, max_retries=0).messages.create(
        model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    [ev] = await stale_gw.events()
    assert STALE_TAG in ev.tags


async def test_auth_comes_before_the_failure_policy(stale_gw, fake_provider):
    stale_gw.led.age(1000)
    with pytest.raises(anthropic.AuthenticationError):
        await anthropic.AsyncAnthropic(base_url=stale_gw.url, api_key="sk-llmgw-knope-bad", max_retries=0).messages.create(
            model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "x"}])


def test_policy_config_parsing_and_precedence():
    p = FailurePolicy.from_config(POLICY)
    assert p.default == Rule(FAIL_CLOSED, 60)
    assert p.rule_for("acme", "research") == Rule(FAIL_OPEN, 60)          # inherits max_stale_s
    assert p.rule_for("globex", "research") == Rule(FAIL_OPEN, 60)        # bare name: any org
    assert p.rule_for("acme", "payments") == Rule(FAIL_CLOSED, 600)
    assert p.rule_for("globex", "payments") == Rule(FAIL_CLOSED, 60)
    assert p.tightest_s == 60
    assert FailurePolicy.from_config({}) == FailurePolicy()
    assert FailurePolicy().default == Rule(FAIL_CLOSED, 300)


@pytest.mark.parametrize("bad, message", [
    ({"failure_policy": {"default": {"mode": "fail_sideways"}}}, "not one of"),
    ({"failure_policy": {"default": {"max_stale_s": -1}}}, ">= 0"),
    ({"failure_policy": {"default": {"max_stale_s": "soon"}}}, "expected seconds"),
    ({"failure_policy": {"workspaces": {"x": {"mode": "fail_open", "max_stale": 3}}}}, "unknown keys"),
    ({"failure_policy": ["fail_open"]}, "expected a mapping"),
    ({"failure_policy": {"defaults": {}}}, "unknown keys"),
])
def test_policy_config_errors_are_explained(bad, message):
    with pytest.raises(ValueError, match=message):
        FailurePolicy.from_config(bad)


async def test_a_bad_failure_policy_stops_the_gateway_at_startup(fake_provider, tmp_path):
    h = GatewayHarness(fake_provider, tmp_path, file_config={"failure_policy": {"default": {"mode": "maybe"}}})
    with pytest.raises(ValueError, match="fail_closed, fail_open"):
        await h.start()
    await h.stop()


async def test_probe_command_reports_liveness_and_readiness(stale_gw):
    from tests.test_cli_serve import llmgw

    def probe(*args: str) -> int:
        return llmgw("probe", *args, env=dict(os.environ)).returncode

    assert await asyncio.to_thread(probe, "ready", "--url", stale_gw.url) == 0
    stale_gw.led.age(500)
    assert await asyncio.to_thread(probe, "ready", "--url", stale_gw.url) == 1
    assert await asyncio.to_thread(probe, "live", "--url", stale_gw.url) == 0
    assert await asyncio.to_thread(probe, "live", "--url", "http://127.0.0.1:9", "--timeout-s", "1") == 1


async def test_a_kafka_mode_replica_opens_its_listener_once_the_snapshot_is_read(fake_provider, tmp_path):
    led = SnapshotLedger(tmp_path)
    led.snapshot_ready = False

    async def catch_up() -> None:
        await asyncio.sleep(0.4)
        led.snapshot_ready = True
    h = GatewayHarness(fake_provider, tmp_path, ledger=led, snapshot_max_age_s=10.0)
    t0 = time.monotonic()
    follower = asyncio.create_task(catch_up())
    await h.start()
    try:
        assert time.monotonic() - t0 >= 0.35
        assert (await get_json(h.url + "/readyz"))[0] == 200
    finally:
        await follower
        await h.stop()


async def test_without_kafka_at_start_it_opens_after_the_bound_unready(fake_provider, tmp_path):
    led = SnapshotLedger(tmp_path)
    led.snapshot_ready = False
    h = GatewayHarness(fake_provider, tmp_path, ledger=led, snapshot_max_age_s=0.5)
    t0 = time.monotonic()
    await h.start()
    try:
        assert 0.45 <= time.monotonic() - t0 < 5
        status, body = await get_json(h.url + "/readyz")
        assert status == 503 and "not caught up" in body["reason"]
        assert (await get_json(h.url + "/healthz"))[0] == 200
    finally:
        await h.stop()
