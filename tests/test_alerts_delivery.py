"""Alerts end to end in embedded mode, delivered to a real HTTP receiver on loopback: spend driven
through the real gateway, restarts on the same data dir, retries, redelivery after a crash."""
from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import anthropic
import orjson
import pytest
from aiohttp import web

from llmgw.ledger.alert_store import DELIVERED, FIRED, PENDING, REJECTED, SUPERSEDED, FileAlertStore, read_jsonl
from llmgw.ledger.alerting import AlertEngine, AlertOptions
from llmgw.proxy.parts import ALERTS
from llmgw.ledger.alerts import AlertPolicy
from llmgw.core.config import ConfigState
from llmgw.ledger.fold import Totals
from llmgw.core.spend_keys import spend_key
from llmgw.ledger.webhooks import RetryPolicy, Webhook
from llmgw.core.windows import window_bounds
from llmgw.core.budgets import Budget
from llmgw.proxy.cli import main as llmgw
from tests.fake_provider import Reply, Usage
from tests.gateway_harness import GatewayHarness
from tests.test_alerts import assert_slack_message


@dataclass
class Receiver:
    """A webhook receiver on loopback: answers from a script of statuses (then 200), keeps every POST."""

    statuses: deque[int] = field(default_factory=deque)
    bodies: list[dict[str, Any]] = field(default_factory=list)        # acked deliveries only
    attempts: list[tuple[int, str, str]] = field(default_factory=list)  # (status, alert id, attempt header)
    cookies: list[str] = field(default_factory=list)     # the Cookie header of each attempt
    url: str = ""
    runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        status = self.statuses.popleft() if self.statuses else 200
        self.attempts.append((status, request.headers.get("X-Llmgw-Alert-Id", ""),
                              request.headers.get("X-Llmgw-Delivery-Attempt", "")))
        self.cookies.append(request.headers.get("Cookie", ""))
        if status == 200:
            assert request.content_type == "application/json"
            self.bodies.append(orjson.loads(raw))
        # like hooks.slack.com behind a CDN: every answer sets a session cookie
        return web.Response(status=status, text="ok" if status == 200 else "no",
                            headers={"Set-Cookie": "cdn_session=from-an-earlier-delivery; Path=/"})

    async def start(self) -> "Receiver":
        app = web.Application()
        app.router.add_post("/hook/{secret}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook/s3cret"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def thresholds(self) -> list[Any]:
        return [b.get("threshold_pct") if b.get("kind") == "threshold" else b.get("kind") for b in self.bodies]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()


async def eventually(cond, timeout_s: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.01)


FAST = {"alerts": {"runway": False, "interval_s": 0.02, "retry_backoff_s": 0.05, "retry_max_backoff_s": 0.2,
                   "delivery_timeout_s": 2}}


# -- through the real gateway ----------------------------------------------------------------------
async def settled(h: GatewayHarness, ticks: int = 3) -> AlertEngine:
    """Everything sent so far is folded, evaluated by ``ticks`` more ticks, and delivered."""
    await h.gw.ledger.flush()  # type: ignore[attr-defined]
    slot = h.app[ALERTS]
    await eventually(lambda: slot.engine is not None, what="the alert engine")
    engine = slot.engine
    assert engine is not None
    t0 = engine.ticks
    await eventually(lambda: engine.ticks >= t0 + ticks, what="alert ticks")
    await eventually(lambda: engine.deliverer.in_flight == 0, what="deliveries")
    return engine


async def spend(h: GatewayHarness, fake, api_key: str, *input_tokens: int) -> None:
    client = anthropic.AsyncAnthropic(base_url=h.url, api_key=api_key, max_retries=0)
    for n in input_tokens:            # claude-haiku-4-5 input is $1/M: 100,000 tokens = $0.10
        fake.script(Reply(usage=Usage(input=n, output=0)))
        await client.messages.create(model="claude-haiku-4-5", max_tokens=10,
                                     messages=[{"role": "user", "content": "x"}])


async def test_exactly_one_90_percent_alert_and_none_after_a_restart(fake_provider, tmp_path, receiver):
    h = GatewayHarness(fake_provider, tmp_path, file_config=FAST)
    await h.start()
    try:
        api_key, _ = h.key("acme", "backend", "alice")
        h.budget("workspace:backend", "month", "1")
        h._put(Webhook.new(receiver.url, "json", "ops").record())
        await spend(h, fake_provider, api_key, *[100_000] * 4)               # 40%
        await settled(h)
        assert receiver.bodies == []
        await spend(h, fake_provider, api_key, *[100_000] * 5)               # 90%: crosses 50, 75, 90
        engine = await settled(h)
        assert receiver.thresholds().count(90) == 1
        assert set(receiver.thresholds()) <= {50, 75, 90}
        ninety = next(b for b in receiver.bodies if b["threshold_pct"] == 90)
        assert ninety["spent_micro_usd"] == 900_000 and ninety["limit_micro_usd"] == 1_000_000
        assert ninety["scope"]["entity"] == "acme/backend" and ninety["window"]["name"] == "month"
        assert ninety["window_resets_at"] == ninety["window"]["end"]
        rec = engine.records[ninety["id"]]
        assert rec.status == FIRED and [(d.webhook_id, d.status) for d in rec.deliveries] == [("ops", DELIVERED)]
    finally:
        await h.stop()
    before = list(receiver.bodies)

    h2 = GatewayHarness(fake_provider, tmp_path, file_config=FAST)           # same data dir: a restart
    await h2.start()
    try:
        await settled(h2)
        assert receiver.bodies == before                                     # nothing redelivered
        await spend(h2, fake_provider, api_key, 50_000)                      # 95%: below the next threshold
        await settled(h2)
        assert receiver.bodies == before
        await spend(h2, fake_provider, api_key, 50_000)                      # 100%: the next one fires once
        await settled(h2)
        assert receiver.thresholds()[len(before):] == [100]
    finally:
        await h2.stop()
    stored = read_jsonl(tmp_path / "alerts" / "alerts.jsonl")
    assert sorted(r.alert.threshold_pct for r in stored.values() if r.status == FIRED) == sorted(receiver.thresholds())


async def cli(*argv: str) -> int:
    return await asyncio.to_thread(llmgw, list(argv))     # the CLI runs its own event loop


async def test_the_cli_manages_webhooks_and_lists_alerts(fake_provider, tmp_path, receiver, capsys):
    base = ["--data-dir", str(tmp_path)]
    assert await cli(*base, "webhooks", "add", receiver.url, "--format", "slack", "--name", "chat") == 0
    assert "s3cret" not in capsys.readouterr().out
    assert await cli(*base, "webhooks", "list") == 0
    assert capsys.readouterr().out.split("\t")[:2] == ["chat", "slack"]
    assert await cli(*base, "alerts", "thresholds", "90", "--budget", "workspace:backend", "--window", "month") == 0
    h = GatewayHarness(fake_provider, tmp_path, file_config=FAST)
    await h.start()
    try:
        api_key, _ = h.key("acme", "backend", "alice")
        h.budget("workspace:backend", "month", "1")
        await spend(h, fake_provider, api_key, *[100_000] * 8)              # 80%: no threshold at 50/75 now
        await settled(h)
        assert receiver.bodies == []
        await spend(h, fake_provider, api_key, 110_000)                     # 91%
        await settled(h)
    finally:
        await h.stop()
    (body,) = receiver.bodies
    assert_slack_message(body)                                               # the CLI asked for Slack format
    assert "91% of its monthly budget" in body["text"]
    capsys.readouterr()
    assert await cli(*base, "alerts", "list") == 0
    out = capsys.readouterr().out
    assert "90%" in out and "workspace acme/backend" in out and "chat:delivered" in out
    assert await cli(*base, "webhooks", "remove", "chat") == 0
    assert await cli(*base, "webhooks", "remove", "chat") == 1


# -- the engine on its own store -----------------------------------------------------------------------
def world(url: str, fmt: str = "json", limit_usd: int = 100) -> tuple[ConfigState, str]:
    state = ConfigState()
    state.apply(Budget("workspace", "backend", "month", limit_usd * 1_000_000).record())
    state.apply(Webhook.new(url, fmt, "rcv").record())
    now = int(time.time() * 1000)
    return state, spend_key("workspace", "acme/backend", "month", window_bounds("month", now)[0])


async def fire(e: AlertEngine, totals: dict, state: ConfigState) -> list:
    """The records a tick fired (superseded ones left out)."""
    return [r for r in await e.tick(totals, state) if r.status == FIRED]


def engine_on(data_dir: Path, **retry: float) -> AlertEngine:
    opts = AlertOptions(policy=AlertPolicy(runway=False),
                        retry=RetryPolicy(**{"timeout_s": 2.0, "backoff_s": 0.05, "max_backoff_s": 0.2, **retry}))
    return AlertEngine(FileAlertStore(data_dir), opts)


async def test_a_receiver_failing_twice_then_acking_gets_exactly_one_delivery(tmp_path, receiver):
    receiver.statuses.extend([500, 503])
    state, k = world(receiver.url)
    e = engine_on(tmp_path)
    await e.start()
    try:
        (rec,) = await fire(e, {k: Totals(spend_nano_usd=91_000_000 * 1000)}, state)
        assert [(d.webhook_id, d.status) for d in rec.deliveries] == [("rcv", PENDING)]
        assert read_jsonl(tmp_path / "alerts" / "alerts.jsonl")[rec.key].status == FIRED   # written first
        await eventually(lambda: e.deliverer.in_flight == 0)
        assert [s for s, _, _ in receiver.attempts] == [500, 503, 200]
        assert [a for _, _, a in receiver.attempts] == ["1", "2", "3"]
        assert {i for _, i, _ in receiver.attempts} == {rec.key}              # one idempotency key throughout
        assert receiver.thresholds() == [90]
        assert not await e.tick({k: Totals(spend_nano_usd=92_000_000 * 1000)}, state)
    finally:
        await e.stop()
    stored = read_jsonl(tmp_path / "alerts" / "alerts.jsonl")[rec.key]
    (d,) = stored.deliveries
    assert (d.status, d.attempts, d.http_status) == (DELIVERED, 3, 200)


async def test_deliveries_never_carry_a_cookie_an_earlier_delivery_was_given(tmp_path, receiver):
    """Many orgs' webhooks share one host (hooks.slack.com): a cookie set in answer to one org's
    delivery must not ride along with the next one."""
    receiver.statuses.extend([500])
    state, k = world(receiver.url.replace("127.0.0.1", "localhost"))   # a cookie jar ignores IP hosts
    e = engine_on(tmp_path)
    await e.start()
    try:
        await fire(e, {k: Totals(spend_nano_usd=91_000_000 * 1000)}, state)
        await eventually(lambda: e.deliverer.in_flight == 0)
    finally:
        await e.stop()
    assert [s for s, _, _ in receiver.attempts] == [500, 200]
    assert receiver.cookies == ["", ""]


async def test_a_pending_delivery_is_resumed_after_a_restart_and_then_never_again(tmp_path, receiver):
    state, k = world(receiver.url)
    receiver.statuses.extend([503] * 1000)                  # down for the first evaluator's whole life
    e = engine_on(tmp_path)
    await e.start()
    (rec,) = await fire(e, {k: Totals(spend_nano_usd=95_000_000 * 1000)}, state)
    await eventually(lambda: len(receiver.attempts) >= 2)
    await e.stop()                                          # like a crash: delivery still pending
    assert read_jsonl(tmp_path / "alerts" / "alerts.jsonl")[rec.key].pending == ["rcv"]
    receiver.statuses.clear()
    for _ in range(2):                                      # two restarts: the first delivers, the second doesn't
        e = engine_on(tmp_path)
        await e.start()
        try:
            assert not await e.tick({k: Totals(spend_nano_usd=95_000_000 * 1000)}, state)   # not fired again
            await eventually(lambda: e.deliverer.in_flight == 0)
        finally:
            await e.stop()
    assert receiver.thresholds() == [90]
    assert read_jsonl(tmp_path / "alerts" / "alerts.jsonl")[rec.key].deliveries[0].status == DELIVERED


async def test_a_4xx_is_a_rejection_and_is_not_retried(tmp_path, receiver):
    receiver.statuses.append(404)
    state, k = world(receiver.url)
    e = engine_on(tmp_path)
    await e.start()
    try:
        (rec,) = await fire(e, {k: Totals(spend_nano_usd=50_000_000 * 1000)}, state)
        await eventually(lambda: e.deliverer.in_flight == 0)
        assert [s for s, _, _ in receiver.attempts] == [404]
        (d,) = e.records[rec.key].deliveries
        assert (d.status, d.http_status, d.attempts) == (REJECTED, 404, 1)
    finally:
        await e.stop()


async def test_an_unreachable_receiver_is_given_up_after_the_deadline(tmp_path):
    state, k = world("http://127.0.0.1:9/hook")             # discard port: refused at once
    e = engine_on(tmp_path, give_up_after_s=0.3)
    await e.start()
    try:
        (rec,) = await fire(e, {k: Totals(spend_nano_usd=50_000_000 * 1000)}, state)
        await eventually(lambda: e.deliverer.in_flight == 0)
        (d,) = e.records[rec.key].deliveries
        assert d.status == "failed" and d.attempts >= 2 and d.http_status == 0 and d.error
    finally:
        await e.stop()


async def test_a_jump_delivers_only_the_highest_threshold(tmp_path, receiver):
    state, k = world(receiver.url)
    e = engine_on(tmp_path)
    await e.start()
    try:
        recs = await e.tick({k: Totals(spend_nano_usd=99_000_000 * 1000)}, state)
        await eventually(lambda: e.deliverer.in_flight == 0)
    finally:
        await e.stop()
    assert sorted((r.alert.threshold_pct, r.status) for r in recs) == [(50, SUPERSEDED), (75, SUPERSEDED),
                                                                       (90, FIRED)]
    assert receiver.thresholds() == [90]


async def test_one_evaluator_per_data_dir(tmp_path):
    first = FileAlertStore(tmp_path)
    await first.open()
    try:
        from llmgw.ledger.alert_store import AlertStoreError
        with pytest.raises(AlertStoreError):
            await FileAlertStore(tmp_path).open()
    finally:
        await first.close()
    await FileAlertStore(tmp_path).open()


async def test_the_attempt_count_survives_a_restart_instead_of_starting_again_at_1(tmp_path, receiver):
    state, k = world(receiver.url)
    receiver.statuses.extend([503] * 1000)                  # down for the first evaluator's whole life
    e = engine_on(tmp_path)
    await e.start()
    (rec,) = await fire(e, {k: Totals(spend_nano_usd=95_000_000 * 1000)}, state)
    await eventually(lambda: len(receiver.attempts) >= 3)
    await e.stop()                                          # like a crash: delivery still pending
    made = len(receiver.attempts)
    (d,) = read_jsonl(tmp_path / "alerts" / "alerts.jsonl")[rec.key].deliveries
    assert (d.status, d.attempts) == (PENDING, made)        # every attempt recorded before it went out
    receiver.statuses.clear()
    receiver.statuses.extend([500])
    e = engine_on(tmp_path)
    await e.start()
    try:
        await e.tick({k: Totals(spend_nano_usd=95_000_000 * 1000)}, state)
        await eventually(lambda: e.deliverer.in_flight == 0)
    finally:
        await e.stop()
    assert [a for _, _, a in receiver.attempts] == [str(i) for i in range(1, made + 3)]
    (d,) = read_jsonl(tmp_path / "alerts" / "alerts.jsonl")[rec.key].deliveries
    assert (d.status, d.attempts, d.http_status) == (DELIVERED, made + 2, 200)


async def test_alerts_of_windows_closed_past_retention_are_forgotten_by_the_store(tmp_path, receiver):
    state, k = world(receiver.url)
    e = engine_on(tmp_path)
    await e.start()
    try:
        (rec,) = await fire(e, {k: Totals(spend_nano_usd=91_000_000 * 1000)}, state)
        await eventually(lambda: e.deliverer.in_flight == 0)
    finally:
        await e.stop()
    assert read_jsonl(tmp_path / "alerts" / "alerts.jsonl")[rec.key].deliveries[0].status == DELIVERED
    opts = AlertOptions(policy=AlertPolicy(runway=False), retain_closed_s=86_400)
    just_inside = rec.alert.window_end_ms + 86_400_000 - 1
    for now, kept in ((just_inside, True), (just_inside + 2, False)):
        later = AlertEngine(FileAlertStore(tmp_path), opts, clock_ms=lambda now=now: now)
        await later.start()
        try:
            assert not await later.tick({k: Totals(spend_nano_usd=91_000_000 * 1000)}, state)
            assert (rec.key in later.records) is kept
        finally:
            await later.stop()
        assert (rec.key in read_jsonl(tmp_path / "alerts" / "alerts.jsonl")) is kept
    assert receiver.thresholds() == [90]                   # forgetting never fires it again
