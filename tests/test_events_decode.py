"""``decode`` against the decoder it replaced: the same event for every input, the same error for bad input.

``decode`` takes a shortcut for an object exactly as ``encode`` writes it (the analytics process
decodes every line of the embedded log); the reference below is the decoder before the shortcut,
kept here and not in the code. Inputs start as a written event and are then changed the ways
another writer, an older or newer version, or a broken one changes them.
"""
from __future__ import annotations

import types
from typing import Any, Mapping

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmgw.core import events as E
from llmgw.core.events import Tokens, UsageEvent
from llmgw.ledger.started import decode_record

_EVENT_FIELDS = frozenset(UsageEvent.__dataclass_fields__)
_TOKEN_FIELDS = frozenset(Tokens.__dataclass_fields__)
REQUIRED = ("event_id", "ts_start_ms", "ts_end_ms", "org", "workspace", "user", "key_id", "provider", "api",
            "model_requested", "model_served")


def reference_decode(data: bytes | str | Mapping[str, Any]) -> UsageEvent:
    """``core.events.decode`` as it was before the shortcut."""
    raw = orjson.loads(data) if isinstance(data, (bytes, str)) else dict(data)
    known = {k: v for k, v in raw.items() if k in _EVENT_FIELDS}
    tok = known.get("tokens") or {}
    known["tokens"] = Tokens(**{k: int(v) for k, v in tok.items() if k in _TOKEN_FIELDS})
    known["tags"] = tuple(known.get("tags") or ())
    if known.get("cost_nano_usd"):
        known.pop("cost_micro_usd", None)
    return UsageEvent(**known)


def outcome(decoder: Any, data: Any) -> tuple[str, Any]:
    try:
        event = decoder(data)
    except Exception as e:  # the property: the same error, type and message
        return "error", (type(e), str(e))
    # == on the dataclass, plus the types of the values (an int for a bool compares equal)
    return "event", (event, [type(getattr(event, f)) for f in UsageEvent.__dataclass_fields__],
                     [type(getattr(event.tokens, f)) for f in Tokens.__dataclass_fields__])


i64 = st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1)
count = st.one_of(st.integers(min_value=0, max_value=10 ** 9), i64)
text = st.text(max_size=12)
tokens = st.builds(Tokens, count, count, count, count, count, count)


@st.composite
def events(draw: st.DrawFn) -> UsageEvent:
    cost = draw(st.sampled_from(["nano", "micro", "none"]))
    amount = draw(st.integers(min_value=-(10 ** 12), max_value=10 ** 12))
    return UsageEvent(
        draw(text), draw(i64), draw(i64), *(draw(text) for _ in range(8)),
        tokens=draw(tokens), cost_micro_usd=amount if cost == "micro" else 0,
        cost_nano_usd=amount if cost == "nano" else 0, price_version=draw(text),
        outcome=draw(st.sampled_from(E.OUTCOMES)), http_status=draw(st.integers(0, 599)),
        latency_ms=draw(st.integers(0, 10 ** 7)), ttft_ms=draw(st.none() | st.integers(0, 10 ** 6)),
        project=draw(text), tags=tuple(draw(st.lists(text, max_size=3))), session_id=draw(text),
        request_id=draw(text), gateway_id=draw(text), stream=draw(st.booleans()),
        usage_estimated=draw(st.booleans()), cost_estimated=draw(st.booleans()), error_type=draw(text),
        kind=draw(st.sampled_from([E.USAGE, E.ADJUSTMENT])), adjusts_event_id=draw(text),
        schema_version=draw(st.sampled_from([1, 2, 3])), service_tier=draw(text),
        web_search_calls=draw(st.integers(0, 100)), usage_anomalous=draw(st.booleans()))


odd_value = st.one_of(st.none(), st.booleans(), i64, st.floats(allow_nan=False, allow_infinity=False), text,
                      st.lists(text, max_size=2), st.dictionaries(text, i64, max_size=2))


@st.composite
def objects(draw: st.DrawFn) -> dict[str, Any]:
    """A written event, then changed: what another writer (older, newer, broken) sends."""
    raw: dict[str, Any] = orjson.loads(orjson.dumps(draw(events())))
    changes = draw(st.lists(st.sampled_from([
        "v1 micro only", "drop optional", "drop required", "extra key", "reorder", "odd value",
        "odd token", "drop token", "extra token", "tokens not an object", "costs disagree", "tags null",
    ]), max_size=3))
    for change in changes:
        if change == "v1 micro only":
            nano = raw.pop("cost_nano_usd", 0)
            micro = E.micro_of_nano(nano) if type(nano) is int else nano
            for name in ("service_tier", "web_search_calls", "usage_anomalous"):
                raw.pop(name, None)
            raw.update(cost_micro_usd=micro, schema_version=1)
        elif change == "drop optional":
            optional = [k for k in raw if k not in REQUIRED]
            if optional:
                raw.pop(draw(st.sampled_from(optional)))
        elif change == "drop required":
            raw.pop(draw(st.sampled_from(REQUIRED)), None)
        elif change == "extra key":
            raw[draw(st.sampled_from(["future_field", "started_event_id_x", "cost", ""]))] = draw(odd_value)
        elif change == "reorder":
            keys = draw(st.permutations(list(raw)))
            raw = {k: raw[k] for k in keys}
        elif change == "odd value" and raw:
            raw[draw(st.sampled_from(sorted(raw)))] = draw(odd_value)
        elif change == "odd token" and isinstance(raw.get("tokens"), dict) and raw["tokens"]:
            raw["tokens"][draw(st.sampled_from(sorted(raw["tokens"])))] = draw(odd_value)
        elif change == "drop token" and isinstance(raw.get("tokens"), dict) and raw["tokens"]:
            raw["tokens"].pop(draw(st.sampled_from(sorted(raw["tokens"]))))
        elif change == "extra token" and isinstance(raw.get("tokens"), dict):
            raw["tokens"]["future_tokens"] = draw(odd_value)
        elif change == "tokens not an object":
            raw["tokens"] = draw(st.one_of(st.none(), st.lists(i64, max_size=2), text))
        elif change == "costs disagree":
            raw["cost_micro_usd"] = draw(i64)
            raw["cost_nano_usd"] = draw(st.integers(-(10 ** 12), 10 ** 12))
        elif change == "tags null":
            raw["tags"] = None
    return raw


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(events())
def test_a_written_event_decodes_to_itself_and_as_the_reference_decodes_it(event: UsageEvent) -> None:
    data = E.encode(event)
    assert E.decode(data) == event
    assert outcome(E.decode, data) == outcome(reference_decode, data)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(objects(), st.sampled_from(["bytes", "str", "dict", "mapping", "log line"]))
def test_any_object_decodes_as_the_reference_decodes_it_or_fails_the_same_way(
        raw: dict[str, Any], form: str) -> None:
    data: Any = {"bytes": orjson.dumps(raw), "str": orjson.dumps(raw).decode(), "dict": raw,
                 "mapping": types.MappingProxyType(raw), "log line": orjson.dumps(raw) + b"\n"}[form]
    decoder = decode_record if form == "log line" else E.decode
    before = orjson.dumps(raw)
    assert outcome(decoder, data) == outcome(reference_decode, data)
    assert orjson.dumps(raw) == before                    # the caller's object is left as it was


@pytest.mark.parametrize("data", [b"[]", b'"x"', b"1", b"null", b"{", b""])
def test_what_is_not_an_object_fails_as_before(data: bytes) -> None:
    assert outcome(E.decode, data) == outcome(reference_decode, data)
