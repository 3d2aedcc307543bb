"""The usage event: round trip, schema evolution, ids."""
from __future__ import annotations

import orjson

from ledger import events as E


def sample(**kw) -> E.UsageEvent:
    base = dict(event_id=E.new_event_id(), ts_start_ms=1_764_000_000_000, ts_end_ms=1_764_000_001_500,
                org="acme", workspace="backend", user="alice", key_id="k0123456789ab", provider="anthropic",
                api="messages", model_requested="claude-sonnet-4-5", model_served="claude-sonnet-4-5-20250929",
                tokens=E.Tokens(input=10, cache_write_5m=100, cache_write_1h=200, cache_read=300, output=40,
                                reasoning=12),
                cost_micro_usd=123_456, price_version="anthropic/claude-sonnet-4-5@2025-09-29",
                outcome=E.OK, http_status=200, latency_ms=1500, ttft_ms=230, project="payments",
                tags=("agent:claude-code", "project:payments"), session_id="cc-1", request_id="req_1",
                gateway_id="gw-1", stream=True)
    base.update(kw)
    return E.UsageEvent(**base)


def test_round_trip_is_exact():
    ev = sample()
    assert E.decode(E.encode(ev)) == ev
    raw = orjson.loads(E.encode(ev))
    assert raw["cost_micro_usd"] == 123_456 and isinstance(raw["cost_micro_usd"], int)
    assert raw["schema_version"] == E.SCHEMA_VERSION
    assert "secret" not in E.encode(ev).decode() and "sk-" not in E.encode(ev).decode()


def test_an_older_reader_ignores_fields_it_does_not_know():
    raw = orjson.loads(E.encode(sample()))
    raw["schema_version"] = 2
    raw["new_field_from_the_future"] = {"nested": [1, 2]}
    raw["tokens"]["audio_input"] = 7
    ev = E.decode(orjson.dumps(raw))
    assert ev.cost_micro_usd == 123_456 and ev.tokens.cache_write_1h == 200


def test_a_newer_reader_fills_defaults_for_older_events():
    raw = orjson.loads(E.encode(sample()))
    for optional in ("ttft_ms", "tags", "session_id", "usage_estimated", "kind", "adjusts_event_id"):
        raw.pop(optional)
    ev = E.decode(orjson.dumps(raw))
    assert ev.kind == E.USAGE and ev.tags == () and ev.ttft_ms is None


def test_event_ids_are_unique_and_time_ordered():
    ids = [E.new_event_id(1_764_000_000_000 + i) for i in range(2000)]
    assert len(set(ids)) == 2000
    assert ids == sorted(ids)
    assert ids[0][14] == "7"                      # version nibble of a UUIDv7


def test_tokens_totals_and_tags():
    t = E.Tokens(input=1, cache_write_5m=2, cache_write_1h=3, cache_read=4, output=5, reasoning=2)
    assert t.prompt == 10 and t.total == 15
    assert E.normalize_tags(["project:x", " agent:y ", "bare", "project:x"]) == ("agent:y", "bare:", "project:x")
    assert sample().tag_map() == {"agent": "claude-code", "project": "payments"}
