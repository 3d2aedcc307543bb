"""A stopped ledger worker is seen by every gateway: /readyz turns 503 and the fold metrics say why.

Before ``ledger/fold_watch.py`` the snapshot follower was the only clock: with the worker stopped the
snapshot topic stops growing, the follower is always at its end, and /readyz said 200 with a
snapshot age under a second while thousands of events waited unfolded."""
from __future__ import annotations

import asyncio
import time

import aiohttp
import anthropic
import pytest

from llmgw.ledger.topics import Topics, ensure_topics
from llmgw.ledger.worker import LedgerWorker
from tests.fixtures.kafka import unique_topic
from tests.gateway_harness import GatewayHarness
from tests.waits import until

pytestmark = pytest.mark.kafka
MAX_AGE_S = 4.0


async def readyz(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(url + "/readyz") as r:
        return r.status, await r.json()


async def metrics(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as r:
        text = await r.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("llmgw_") and " " in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def lag_total(m: dict[str, float]) -> float:
    return sum(v for k, v in m.items() if k.startswith("llmgw_ledger_fold_lag_records{"))


def worker(bootstrap: str, topics: Topics, prefix: str) -> LedgerWorker:
    return LedgerWorker(bootstrap, topics, group_id=f"{prefix}-ledger", session_timeout_ms=6_000,
                        heartbeat_interval_ms=1_000)


async def test_a_stopped_worker_turns_readyz_and_the_fold_metrics_red_while_calls_continue(
        kafka_bootstrap, fake_provider, tmp_path):
    prefix = unique_topic("fold")
    topics = await ensure_topics(kafka_bootstrap, Topics(prefix, partitions=2))
    w = worker(kafka_bootstrap, topics, prefix)
    await w.start()
    h = GatewayHarness(fake_provider, tmp_path, kafka_bootstrap=kafka_bootstrap, topic_prefix=prefix,
                       snapshot_max_age_s=MAX_AGE_S)
    await h.start()
    key, _ = h.key("acme", "backend", "alice")
    client = anthropic.AsyncAnthropic(base_url=h.url, api_key=key, max_retries=0)
    calls = 0

    async def call() -> None:
        nonlocal calls
        await client.messages.create(model="claude-sonnet-4-5", max_tokens=10,
                                     messages=[{"role": "user", "content": "x"}])
        calls += 1

    async def keep_calling() -> None:
        while True:
            await call()
            await asyncio.sleep(0.1)

    caller: asyncio.Task[None] | None = None
    try:
        for _ in range(5):
            await call()

        async def healthy() -> bool:
            code, body = await readyz(h.url)
            return code == 200 and body["ledger_workers"] == 1 and body["fold_lag_records"] == 0
        await until(healthy, 60.0, 0.25, what="ready, one worker, nothing to fold")
        code, body = await readyz(h.url)
        assert body["fold_stalled_s"] == 0 and body["snapshot_age_s"] < MAX_AGE_S

        caller = asyncio.get_running_loop().create_task(keep_calling())
        await w.stop()
        stopped_at = time.monotonic()

        async def red() -> bool:
            return (await readyz(h.url))[0] == 503
        await until(red, 60.0, 0.25, what="/readyz 503 after the worker stopped")
        red_after_s = time.monotonic() - stopped_at
        code, body = await readyz(h.url)
        assert "ledger workers have not folded" in body["reason"], body
        # the snapshot stopped no later than the fold (both ages are read in ms, a tick apart)
        assert body["fold_stalled_s"] > MAX_AGE_S and body["snapshot_age_s"] >= body["fold_stalled_s"] - 0.005
        assert body["fold_lag_records"] > 0 and body["ledger_workers"] == 0
        m = await metrics(h.url)
        assert m["llmgw_ready"] == 0 and m["llmgw_ledger_fold_stalled_seconds"] > MAX_AGE_S
        assert lag_total(m) > 0 and m["llmgw_ledger_workers"] == 0
        print(f"red after {red_after_s:.1f} s (bound {MAX_AGE_S} s), {calls} calls, lag {body['fold_lag_records']}")
        assert red_after_s < 60.0

        caller.cancel()
        await asyncio.gather(caller, return_exceptions=True)
        caller = None
        w = worker(kafka_bootstrap, topics, prefix)
        await w.start()

        async def caught_up() -> bool:
            code, body = await readyz(h.url)
            return code == 200 and body["fold_lag_records"] == 0 and body["ledger_workers"] == 1
        await until(caught_up, 60.0, 0.25, what="ready again once a worker folds the backlog")
        assert (await metrics(h.url))["llmgw_ledger_fold_stalled_seconds"] == 0
    finally:
        if caller is not None:
            caller.cancel()
            await asyncio.gather(caller, return_exceptions=True)
        await client.close()
        await h.stop()
        await w.stop()
