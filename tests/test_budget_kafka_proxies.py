"""Issue 6 (b) on the real stack: three gateways on Kafka, one ledger worker, one $1 budget.

Each proxy sees the others' spend only once it is settled, on the usage topic,
folded by the worker and back through the snapshot topic. docs/budgets.md
states the overshoot bound for N proxies as (N-1) x (e_max + L/N) plus
snapshot skew in the worst case; here the final spend, read back from the
usage topic itself, must stay within it, refused calls must never reach the
provider, and the cap must actually be used.
"""
from __future__ import annotations

import asyncio
import time

import anthropic
import pytest

from llmgw.core.spend_keys import spend_key
from llmgw.ledger.kafka_rebuild import fold_topic
from llmgw.ledger.topics import Topics, ensure_topics
from llmgw.core.windows import window_start
from llmgw.ledger.worker import LedgerWorker
from llmgw.pricing import RequestShape, load_catalog, worst_case
from llmgw.proxy import keys as K
from llmgw.core.budgets import Budget
from tests.fake_provider import Reply, Usage
from tests.fixtures.kafka import unique_topic
from tests.gateway_harness import GatewayHarness

N, CAP, CALLS = 3, 1_000_000, 150


async def test_three_kafka_proxies_overshoot_only_within_the_bound(kafka_bootstrap, fake_provider, tmp_path):
    # claude-haiku-4-5 ($1 in, $5 out per M): each call really costs 3000 in + 1500 out = $0.0105
    reply = Reply(chunks=4, chunk_delay_s=0.02, usage=Usage(input=3000, output=1500))
    served, spent, bound = await run_kafka(kafka_bootstrap, fake_provider, tmp_path, "predicted", reply, 1500,
                                           steady=CALLS)
    assert spent >= CAP * 0.8, f"only {spent} of the cap was used: the margin refused too much"


@pytest.mark.parametrize("hold", ["strict", "predicted"])
async def test_64_callers_of_short_output_heavy_calls_on_kafka(kafka_bootstrap, fake_provider, tmp_path, hold):
    """Issue 18's worst cell on the real broker: 64 callers that retry what the gateway marks
    retryable, short output-heavy calls (100 in + 2,000 out = $0.0101), strict and predicted holds."""
    reply = Reply(chunks=2, chunk_delay_s=0.005, usage=Usage(input=100, output=2000))
    served, spent, bound = await run_kafka(kafka_bootstrap, fake_provider, tmp_path, hold, reply, 2000, callers=64)
    assert spent >= CAP * 0.8, f"only {spent} of the cap was used: the margin refused too much"


async def run_kafka(kafka_bootstrap, fake_provider, tmp_path, hold: str, reply: Reply, max_tokens: int, *,
                    steady: int = 0, callers: int = 0) -> tuple[int, int, int]:
    """``steady`` calls arriving 10 ms apart, each retrying while it is refused as busy, or ``callers``
    that each call until a final refusal."""
    prefix = unique_topic("overshoot")
    topics = await ensure_topics(kafka_bootstrap, Topics(prefix, partitions=1))
    worker = LedgerWorker(kafka_bootstrap, topics, group_id=f"{prefix}-ledger", session_timeout_ms=6_000,
                          heartbeat_interval_ms=1_000)
    await worker.start()
    proxies = [GatewayHarness(fake_provider, tmp_path / f"p{i}", kafka_bootstrap=kafka_bootstrap,
                              topic_prefix=prefix, gateway_id=f"gw-{i}", file_config={"policy": {"proxies": N}})
               for i in range(N)]
    for p in proxies:
        await p.start()
    clients: list[anthropic.AsyncAnthropic] = []
    try:
        key, key_rec = K.mint("acme", "backend", "gina")
        budget = Budget("user", "gina", "day", CAP, hold=hold).record()
        for p in proxies:                       # the same config records every proxy would read from the topic
            for rec in (key_rec, budget):
                p.gw.config.apply(rec)
            p.gw.config_changed()
        fake_provider.script(*[reply for _ in range(max(steady, 400))])
        clients += [anthropic.AsyncAnthropic(base_url=p.url, api_key=key, max_retries=0) for p in proxies]

        oks: list[int] = []

        async def call(i: int) -> str:
            try:
                async with clients[i % N].messages.stream(model="claude-haiku-4-5", max_tokens=max_tokens,
                                                          messages=[{"role": "user", "content": "go"}]) as s:
                    await s.get_final_message()
                oks.append(i)
                return "ok"
            except anthropic.RateLimitError as exc:
                return "busy" if exc.response.headers.get("x-should-retry") == "true" else "refused"

        async def arrive(i: int) -> str:
            await asyncio.sleep(i * 0.01)       # a steady arrival, spread over the three proxies
            deadline = time.monotonic() + 30
            while (outcome := await call(i)) == "busy" and time.monotonic() < deadline:
                await asyncio.sleep(0.05)       # retryable: calls in flight hold the room (x-should-retry: true)
            return outcome

        async def caller(i: int) -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and await call(i) != "refused":
                await asyncio.sleep(0.01)

        t0 = int(time.time() * 1000)
        async with asyncio.timeout(120):
            if steady:
                await asyncio.gather(*(arrive(i) for i in range(steady)))
            else:
                await asyncio.gather(*(caller(i) for i in range(callers)))
        served = len(oks)
        assert served == len(fake_provider.requests), "a refused call reached the provider"
        for p in proxies:
            await p.gw.ledger.flush(10.0)
        key = spend_key("user", "acme/gina", "day", window_start("day", t0))
        cost = reply.usage.input * 1 + reply.usage.output * 5     # micro-USD on haiku
        for _ in range(50):                     # every served call's event is on the usage topic
            async with asyncio.timeout(30):
                totals = await fold_topic(kafka_bootstrap, topics)
            spent = totals[key].spend_micro_usd if key in totals else 0
            if spent == served * cost:
                break
            await asyncio.sleep(0.2)
        # the largest hold one call places (its body is well under 4 KB)
        e_max = worst_case(load_catalog().price_at("claude-haiku-4-5", t0), RequestShape(4096, max_tokens))
        bound = (N - 1) * (e_max + CAP // N)
        assert spent == served * cost, "the ledger total is not the sum of the served calls"
        assert spent <= CAP + bound, f"overshoot {spent - CAP} exceeds the bound {bound}"
        print(f"{hold} {'steady' if steady else f'{callers} callers'}: served {served}, spent {spent} of {CAP} "
              f"(overshoot {spent - CAP} = {100 * (spent - CAP) / CAP:+.1f}%, bound {bound})")
        return served, spent, bound
    finally:
        # Close the clients while their connections are open. A client left to the GC is finalized
        # in a cycle: asyncio's transport __del__ closes the socket (freeing the fd), then the SDK's
        # __del__ resurrects the pool with a task that aborts those same transports, whose stale fd
        # may by then belong to a new proxy connection; that connection silently leaves the event
        # loop (CPython gh-130141) and its request is never read.
        for c in clients:
            await c.close()
        for p in proxies:
            await p.stop()
        await worker.stop()
