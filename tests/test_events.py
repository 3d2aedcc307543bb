"""The usage event: round trip, schema evolution, ids."""
from __future__ import annotations

import orjson

from llmgw.core import events as E


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


# -- schema evolution: v1 (micro-USD only) -> v2 (nano-USD) ---------------------------------

V1_BYTES = (b'{"event_id":"0195f0c2-0000-7000-8000-000000000001","ts_start_ms":1764000000000,'
            b'"ts_end_ms":1764000001500,"org":"acme","workspace":"backend","user":"alice","key_id":"k1",'
            b'"provider":"openai","api":"embeddings","model_requested":"text-embedding-3-small",'
            b'"model_served":"text-embedding-3-small","tokens":{"input":50000,"cache_write_5m":0,'
            b'"cache_write_1h":0,"cache_read":0,"output":0,"reasoning":0},"cost_micro_usd":1000,'
            b'"price_version":"openai/text-embedding-3-small@2024-01-25","outcome":"ok","http_status":200,'
            b'"latency_ms":40,"ttft_ms":null,"project":"","tags":[],"session_id":"","request_id":"",'
            b'"gateway_id":"gw-1","stream":false,"usage_estimated":false,"cost_estimated":false,'
            b'"error_type":"","kind":"usage","adjusts_event_id":"","schema_version":1}')


def test_a_v1_event_decodes_to_its_micro_usd_in_nanos_and_folds_the_same():
    from llmgw.ledger.fold import fold_all
    ev = E.decode(V1_BYTES)
    assert ev.schema_version == 1
    assert ev.cost_nano_usd == 1_000_000 and ev.cost_micro_usd == 1_000
    (totals,) = set(fold_all([ev]).values())
    assert totals.spend_nano_usd == 1_000_000 and totals.spend_micro_usd == 1_000 and totals.requests == 1


def test_a_v2_event_round_trips_with_its_nanos_and_a_derived_micro():
    ev = sample(cost_micro_usd=0, cost_nano_usd=240)          # a 12-token embedding: 0.24 micro-USD
    raw = orjson.loads(E.encode(ev))
    assert raw["schema_version"] == 2 == E.SCHEMA_VERSION
    assert raw["cost_nano_usd"] == 240 and raw["cost_micro_usd"] == 1     # rounded up, never to 0
    assert E.decode(E.encode(ev)) == ev


def test_a_field_from_a_future_version_is_ignored_and_the_nanos_kept():
    raw = orjson.loads(E.encode(sample(cost_micro_usd=0, cost_nano_usd=123_456_789)))
    raw["schema_version"] = 3
    raw["cost_pico_usd"] = 123_456_789_012
    ev = E.decode(orjson.dumps(raw))
    assert ev.cost_nano_usd == 123_456_789 and ev.cost_micro_usd == 123_457 and ev.schema_version == 3


def test_a_v1_reader_of_a_v2_event_never_sees_less_than_was_charged():
    """A reader that knows only ``cost_micro_usd`` (a proxy or worker not yet upgraded) reads
    the nanos rounded up: it may count up to one micro-USD too much, never too little."""
    v1_fields = {f for f in orjson.loads(V1_BYTES)}
    for nano in (1, 240, 999, 1_000, 1_001, 123_456_789, -1, -1_500, -999):
        raw = orjson.loads(E.encode(sample(cost_micro_usd=0, cost_nano_usd=nano)))
        assert set(raw) - v1_fields == {"service_tier", "web_search_calls", "cost_nano_usd", "usage_anomalous"}
        micro_as_v1_reads_it = raw["cost_micro_usd"]
        assert nano <= micro_as_v1_reads_it * 1_000 < nano + 1_000


def test_the_two_cost_fields_cannot_disagree():
    import pytest
    with pytest.raises(ValueError, match="disagrees"):
        sample(cost_micro_usd=5, cost_nano_usd=240)
    ev = sample(cost_micro_usd=0, cost_nano_usd=240)
    assert ev.with_(cost_nano_usd=5_500).cost_micro_usd == 6
    assert ev.with_(cost_micro_usd=7).cost_nano_usd == 7_000
    # a decoder trusts the nanos when both are present
    raw = orjson.loads(E.encode(ev))
    raw["cost_micro_usd"] = 99
    assert E.decode(orjson.dumps(raw)).cost_micro_usd == 1
