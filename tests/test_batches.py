"""Batch APIs through the gateway, with the official SDKs: held at submission, charged at batch rates
from the results, attributed to the submitting key, durable across a restart, never charged twice."""
from __future__ import annotations

import io
import random
import time

import anthropic
import openai
import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from llmgw.core.events import Tokens
from llmgw.pricing import cost
from llmgw.proxy.adapters.anthropic_batch import AnthropicBatches
from llmgw.proxy.adapters.openai_batch import OpenAIBatches
from llmgw.proxy.batch_book import Bound, batch_event_id
from llmgw.proxy import holds
from llmgw.proxy.batches import BOOK, poll_once
from tests.fake_provider import Usage, _dumps
from tests.fakes.batches import ERRORED, EXPIRED, FakeBatches
from tests.gateway_harness import GatewayHarness

CLAUDE, GPT = "claude-sonnet-4-6", "gpt-5.4-mini"


def tokens_of(u: Usage) -> Tokens:
    return Tokens(input=u.input, output=u.output, cache_read=u.cache_read, cache_write_5m=u.cache_write_5m,
                  cache_write_1h=u.cache_write_1h, reasoning=u.reasoning)


def batch_cost_nano(h: GatewayHarness, model: str, u: Usage, provider: str) -> int:
    price, _ = h.gw.catalog.resolve(model, int(time.time() * 1000), provider=provider, policy="reject",
                                    fallback_entry=None)
    return cost(tokens_of(u), price, batch=True).nano_usd


def anth(h: GatewayHarness, key: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=h.url, api_key=key, max_retries=0)


def oai(h: GatewayHarness, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=h.url + "/v1", api_key=key, max_retries=0)


def params(text: str, max_tokens: int = 256, model: str = CLAUDE) -> dict:
    return {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": text}]}


def input_file(n: int, max_tokens: int = 128) -> bytes:
    return b"".join(orjson.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                                  "body": {"model": GPT, "max_completion_tokens": max_tokens,
                                           "messages": [{"role": "user", "content": f"question {i}"}]}}) + b"\n"
                    for i in range(n))


@pytest.fixture
async def fake():
    async with FakeBatches(seed=3) as f:
        yield f


async def test_anthropic_batch_charged_once_at_batch_rates(fake: FakeBatches, tmp_path) -> None:
    async with GatewayHarness(fake, tmp_path) as h:
        key, key_id = h.key(user="bob")
        client = anth(h, key)
        fake.outcomes.update({"a": Usage(input=1200, output=200, cache_read=50), "b": ERRORED, "c": EXPIRED,
                              "d": Usage(input=9, output=1)})
        batch = await client.messages.batches.create(requests=[
            {"custom_id": cid, "params": params(f"hello {cid}")} for cid in "abcd"])
        assert batch.processing_status == "in_progress"
        book = h.app[BOOK]
        assert book.held[batch.id].amount_micro_usd > 0            # the worst case is held
        again = await client.messages.batches.retrieve(batch.id)
        assert again.processing_status == "in_progress" and await h.events() == []
        fake.end(batch.id)
        done = await client.messages.batches.retrieve(batch.id)
        assert done.processing_status == "ended"
        assert done.results_url == f"{h.url}/v1/messages/batches/{batch.id}/results"
        events = sorted(await h.events(), key=lambda e: e.tags)
        served = {cid: (model, u) for cid, model, u in fake.billed[batch.id]}
        assert set(served) == {"a", "d"}
        assert len(events) == 2 and batch.id not in book.held
        by_id = {e.event_id: e for e in events}
        for cid, (model, u) in served.items():
            e = by_id[batch_event_id(batch.id, cid, events[0].ts_start_ms)]
            assert (e.key_id, e.user, e.org, e.workspace) == (key_id, "bob", "acme", "backend")
            assert e.tokens == tokens_of(u) and e.service_tier == "batch" and e.api == "batch_messages"
            assert e.cost_nano_usd == batch_cost_nano(h, model, u, "anthropic")
        # reading the results (and the batch) again charges nothing more
        results = [r async for r in await client.messages.batches.results(batch.id)]
        assert sorted(r.result.type for r in results) == ["errored", "expired", "succeeded", "succeeded"]
        await client.messages.batches.retrieve(batch.id)
        await client.messages.batches.list()
        assert len(await h.events()) == 2


async def test_openai_batch_through_files_charged_at_batch_rates(fake: FakeBatches, tmp_path) -> None:
    async with GatewayHarness(fake, tmp_path) as h:
        key, key_id = h.key(user="carol")
        client = oai(h, key)
        fake.outcomes.update({"req-0": Usage(input=700, output=90, cache_read=100), "req-1": ERRORED,
                              "req-2": EXPIRED})
        f = await client.files.create(file=("in.jsonl", io.BytesIO(input_file(4))), purpose="batch")
        assert [x.id for x in (await client.files.list()).data] == [f.id]
        batch = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                            completion_window="24h")
        assert batch.status == "in_progress" and await h.events() == []
        fake.end(batch.id)
        done = await client.batches.retrieve(batch.id)
        assert done.status == "completed" and done.output_file_id
        events = await h.events()
        served = {cid: (model, u) for cid, model, u in fake.billed[batch.id]}
        assert set(served) == {"req-0", "req-3"} and len(events) == 2
        for e in events:
            cid = next(c for c in served if batch_event_id(batch.id, c, e.ts_start_ms) == e.event_id)
            model, u = served[cid]
            assert e.key_id == key_id and e.user == "carol" and e.api == "batch_chat" and e.model_requested == GPT
            assert e.tokens.total == tokens_of(u).total
            assert e.cost_nano_usd == batch_cost_nano(h, model, u, "openai")
        out = await client.files.content(done.output_file_id)
        assert len(out.content.splitlines()) == 2
        await client.batches.retrieve(batch.id)
        assert len(await h.events()) == 2                    # seen again: no second charge
        assert (await client.files.delete(f.id)).deleted


async def test_over_budget_refused_before_upstream(fake: FakeBatches, tmp_path) -> None:
    async with GatewayHarness(fake, tmp_path) as h:
        key, _ = h.key()
        h.budget("workspace:backend", "day", "0.01", org="acme")
        with pytest.raises(anthropic.RateLimitError) as info:
            await anth(h, key).messages.batches.create(requests=[
                {"custom_id": f"r{i}", "params": params("hi", max_tokens=64_000)} for i in range(20)])
        assert info.value.body["error"]["type"] == "rate_limit_error" or info.value.status_code == 429
        assert fake.upstream_calls("/anthropic") == []
        client = oai(h, key)
        f = await client.files.create(file=("in.jsonl", io.BytesIO(input_file(50, max_tokens=100_000))),
                                      purpose="batch")
        with pytest.raises(openai.RateLimitError) as oinfo:
            await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert oinfo.value.code == "budget_exceeded"
        assert ("POST", "/openai/v1/batches") not in fake.calls
        refused = await h.events()                        # each refusal is an event, as for online calls
        assert [(e.outcome, e.cost_nano_usd, e.http_status) for e in refused] == [("rejected_budget", 0, 429)] * 2
        assert h.gw.policy.holds.micro_usd == 0 and h.app[BOOK].held == {}


async def test_a_batch_hold_counts_against_the_budget_and_is_never_swept(fake: FakeBatches, tmp_path) -> None:
    async with GatewayHarness(fake, tmp_path) as h:
        key, _ = h.key()
        client = anth(h, key)
        one = [{"custom_id": "x", "params": params("q", max_tokens=20_000)}]
        price, _ = h.gw.catalog.resolve(CLAUDE, int(time.time() * 1000), provider="anthropic", policy="reject",
                                        fallback_entry=None)
        first = await client.messages.batches.create(requests=one)
        held = h.app[BOOK].held[first.id].amount_micro_usd
        h.budget("workspace:backend", "day", f"{held * 3 // 2 / 1_000_000:.6f}", org="acme")
        holds.sweep(h.gw.policy, 0.0, now_s=time.monotonic() + 10 ** 6)   # every hold of a call would go
        assert h.app[BOOK].held[first.id].open
        with pytest.raises(anthropic.RateLimitError):                        # the first one's hold leaves no room
            await client.messages.batches.create(requests=one)
        fake.end(first.id)
        await client.messages.batches.retrieve(first.id)                    # charged: the hold becomes the spend
        second = await client.messages.batches.create(requests=[{"custom_id": "y", "params": params("q", 64)}])
        assert second.id in h.app[BOOK].held and first.id not in h.app[BOOK].held


async def test_the_poller_charges_a_batch_nobody_reads(fake: FakeBatches, tmp_path) -> None:
    async with GatewayHarness(fake, tmp_path) as h:
        key, key_id = h.key()
        batch = await anth(h, key).messages.batches.create(requests=[{"custom_id": "x", "params": params("q")}])
        assert await poll_once(h.gw, h.app[BOOK]) == 0 and await h.events() == []
        fake.end(batch.id)
        assert await poll_once(h.gw, h.app[BOOK]) == 1
        (e,) = await h.events()
        (cid, model, u), = fake.billed[batch.id]
        assert e.key_id == key_id and e.cost_nano_usd == batch_cost_nano(h, model, u, "anthropic")
        assert await poll_once(h.gw, h.app[BOOK]) == 0               # charged: no longer polled
        await anth(h, key).messages.batches.retrieve(batch.id)
        assert len(await h.events()) == 1


async def test_restart_between_submit_and_completion(fake: FakeBatches, tmp_path) -> None:
    fake.outcomes["x"] = Usage(input=5000, output=777)
    async with GatewayHarness(fake, tmp_path, gateway_id="gw-1") as h:
        key, key_id = h.key(user="dan")
        batch = await anth(h, key).messages.batches.create(requests=[{"custom_id": "x", "params": params("q", 1000)}])
        held = h.app[BOOK].held[batch.id].amount_micro_usd
    fake.end(batch.id)
    async with GatewayHarness(fake, tmp_path, gateway_id="gw-2") as h2:
        assert h2.app[BOOK].held[batch.id].amount_micro_usd == held    # held again from the batch log
        await anth(h2, key).messages.batches.retrieve(batch.id)
        events = await h2.events()
        assert [(e.key_id, e.user) for e in events] == [(key_id, "dan")]
        assert events[0].cost_nano_usd == batch_cost_nano(h2, CLAUDE, fake.outcomes["x"], "anthropic")
        assert batch.id not in h2.app[BOOK].held
    async with GatewayHarness(fake, tmp_path) as h3:                  # charged is durable too
        assert batch.id not in h3.app[BOOK].held
        await anth(h3, key).messages.batches.retrieve(batch.id)
        assert len(await h3.events()) == 1


@pytest.mark.parametrize("crash_after", [0, 1, 2])
async def test_a_charge_cut_by_a_crash_is_finished_once(fake: FakeBatches, tmp_path, crash_after: int) -> None:
    """The gateway dies while charging a batch: after ``crash_after`` of its 2 events reached the ledger
    (2: all, only the ``charged`` record missing). The next gateway charges what is missing: every
    served request exactly once, whatever point the crash hit."""
    fake.outcomes["a"], fake.outcomes["b"] = Usage(input=900, output=70), Usage(input=1200, output=30)
    async with GatewayHarness(fake, tmp_path, gateway_id="gw-1") as h:
        key, _ = h.key(user="eve")
        batch = await anth(h, key).messages.batches.create(
            requests=[{"custom_id": c, "params": params("q", 500)} for c in ("a", "b")])
        fake.end(batch.id)
        book, emitted = h.app[BOOK], []
        put, emit = book.put, h.gw.emit

        async def crashing_put(rec):            # the process dies before the batch is marked charged
            if (rec.data or {}).get("state") == "charged":
                raise RuntimeError("killed")
            await put(rec)

        def partial_emit(ev, request=None):     # ... after only some of its events were submitted
            if len(emitted) < crash_after:
                emitted.append(ev)
                emit(ev, request)

        book.put, h.gw.emit = crashing_put, partial_emit
        with pytest.raises(anthropic.APIError):
            await anth(h, key).messages.batches.retrieve(batch.id)
        assert len(await h.events()) == crash_after
    async with GatewayHarness(fake, tmp_path, gateway_id="gw-2") as h2:
        await anth(h2, key).messages.batches.retrieve(batch.id)
        await anth(h2, key).messages.batches.retrieve(batch.id)            # read again: nothing more
        events = await h2.events()
        assert len(events) == len({e.event_id for e in events}) == 2
        assert sum(e.cost_nano_usd for e in events) == sum(
            batch_cost_nano(h2, CLAUDE, fake.outcomes[c], "anthropic") for c in ("a", "b"))
        assert batch.id not in h2.app[BOOK].held


async def test_canceled_batch_bills_only_what_ran(fake: FakeBatches, tmp_path) -> None:
    async with GatewayHarness(fake, tmp_path) as h:
        key, _ = h.key()
        client = anth(h, key)
        batch = await client.messages.batches.create(requests=[
            {"custom_id": f"r{i}", "params": params(f"q{i}")} for i in range(3)])
        canceling = await client.messages.batches.cancel(batch.id)
        assert canceling.processing_status == "canceling" and batch.id in h.app[BOOK].held
        fake.end(batch.id)
        results = [r async for r in await client.messages.batches.results(batch.id)]
        assert sorted(r.result.type for r in results) == ["canceled", "canceled", "succeeded"]
        events = await h.events()
        (cid, model, u), = fake.billed[batch.id]
        assert [e.event_id for e in events] == [batch_event_id(batch.id, cid, events[0].ts_start_ms)]
        assert events[0].cost_nano_usd == batch_cost_nano(h, model, u, "anthropic")
        assert batch.id not in h.app[BOOK].held and h.gw.policy.holds.micro_usd == 0


async def test_another_workspace_cannot_see_a_batch_or_file(fake: FakeBatches, tmp_path) -> None:
    async with GatewayHarness(fake, tmp_path) as h:
        mine, _ = h.key()
        theirs, _ = h.key(workspace="other", user="eve")
        batch = await anth(h, mine).messages.batches.create(requests=[{"custom_id": "x", "params": params("q")}])
        with pytest.raises(anthropic.NotFoundError):
            await anth(h, theirs).messages.batches.retrieve(batch.id)
        assert (await anth(h, theirs).messages.batches.list()).data == []
        f = await oai(h, mine).files.create(file=("in.jsonl", io.BytesIO(input_file(1))), purpose="batch")
        with pytest.raises(openai.NotFoundError):
            await oai(h, theirs).files.content(f.id)
        with pytest.raises(openai.NotFoundError):
            await oai(h, theirs).batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                                completion_window="24h")
        with pytest.raises(anthropic.AuthenticationError):
            await anth(h, "sk-not-a-key").messages.batches.list()


async def test_bad_batch_refused_in_client_shape(fake: FakeBatches, tmp_path) -> None:
    async with GatewayHarness(fake, tmp_path) as h:
        key, _ = h.key()
        with pytest.raises(anthropic.BadRequestError) as info:
            await anth(h, key).messages.batches.create(requests=[
                {"custom_id": "x", "params": {"model": CLAUDE, "messages": [{"role": "user", "content": "q"}]}}])
        assert "max_tokens" in info.value.message
        with pytest.raises(anthropic.BadRequestError):
            await anth(h, key).messages.batches.create(requests=[
                {"custom_id": "x", "params": params("a")}, {"custom_id": "x", "params": params("b")}])
        assert fake.upstream_calls("/anthropic") == []


# -- result lines, whatever their wire style ------------------------------------
_usage = st.builds(Usage, input=st.integers(0, 200_000), output=st.integers(0, 8_000),
                   cache_read=st.integers(0, 100_000), cache_write_5m=st.integers(0, 50_000))
_style = st.sampled_from(["compact", "spaced", "shuffled", "escaped", "spaced+shuffled+escaped"])


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(served=st.lists(_usage, min_size=1, max_size=5), unserved=st.lists(st.sampled_from([ERRORED, EXPIRED,
       "canceled"]), max_size=3), style=_style, seed=st.integers(0, 1 << 30), crlf=st.booleans())
def test_anthropic_result_lines_meter_what_was_served(served, unserved, style, seed, crlf) -> None:
    fake, rng = FakeBatches(), random.Random(seed)
    from tests.fakes.batches import _Batch
    b = _Batch("msgbatch_x", "anthropic", [], 0)
    lines = [fake._served_line(b, f"s{i}", CLAUDE, u) for i, u in enumerate(served)]
    lines += [fake._unserved_line(b, f"u{i}", o) for i, o in enumerate(unserved)]
    rng.shuffle(lines)
    raw = b"".join(_dumps(x, style, rng) + (b"\r\n" if crlf else b"\n") for x in lines)
    bound = Bound(body_bytes=10_000_000, max_output_tokens=8_000).call(CLAUDE)
    got = {s.custom_id: s.usage.tokens for s in AnthropicBatches().served(raw, bound)}
    assert got == {f"s{i}": tokens_of(u) for i, u in enumerate(served)}


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(served=st.lists(_usage, min_size=1, max_size=5), unserved=st.lists(st.sampled_from([ERRORED, EXPIRED]),
       max_size=3), style=_style, seed=st.integers(0, 1 << 30))
def test_openai_output_lines_meter_what_was_served(served, unserved, style, seed) -> None:
    fake, rng = FakeBatches(), random.Random(seed)
    from tests.fakes.batches import _Batch
    b = _Batch("batch_x", "openai", [], 0, "/v1/chat/completions")
    lines = [fake._served_line(b, f"s{i}", GPT, u) for i, u in enumerate(served)]
    lines += [fake._unserved_line(b, f"u{i}", o) for i, o in enumerate(unserved)]
    rng.shuffle(lines)
    raw = b"".join(_dumps(x, style, rng) + b"\n" for x in lines)
    bound = Bound(body_bytes=10_000_000, max_output_tokens=8_000).call(GPT)
    got = {s.custom_id: s.usage.tokens for s in OpenAIBatches().served(raw, "/v1/chat/completions", bound)}
    assert got == {f"s{i}": tokens_of(u) for i, u in enumerate(served)}
