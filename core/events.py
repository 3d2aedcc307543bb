"""The usage event: the one contract between proxy, ledger and analytics.

One immutable record per model call (or per re-rating adjustment). Money is an
``int`` everywhere it is stored, sent or summed: orjson refuses ``Decimal`` and a
float would lose cents over a month of traffic.

The cost is ``cost_nano_usd`` (1 USD = 10^9), the exact price rounded once to the
nano: a micro-USD event rounded a 12-token embedding ($0.02/Mtok, 0.24 micro-USD)
to $0, so a million of them summed to nothing. ``cost_micro_usd`` stays on the
event, derived: the nanos rounded UP to the micro (``micro_of_nano``), so a
reader that only knows micro-USD (schema v1) never sees less than was charged.

Schema evolution: ``decode`` ignores fields it does not know, and every field
added after v1 has a default, so an older reader keeps working on newer events
and a newer reader fills defaults for older ones. Versions:

- 1: money in ``cost_micro_usd`` only. Decoded today as ``cost_nano_usd = cost_micro_usd x 1000``.
- 2: ``cost_nano_usd`` is the charge; ``cost_micro_usd = micro_of_nano(cost_nano_usd)``.
"""
from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

import orjson

SCHEMA_VERSION = 2
NANO_PER_MICRO = 1000

# Outcomes a call can end in. Refusals are events too: they cost nothing but
# analysts and alerts need to see them.
OK = "ok"
CANCELLED = "cancelled"            # client went away mid-call
UPSTREAM_ERROR = "upstream_error"  # provider answered with an error or never answered
REJECTED_BUDGET = "rejected_budget"
REJECTED_RATE = "rejected_rate"
REJECTED_POLICY = "rejected_policy"  # model not allowed, unknown model, bad request
ORPHANED = "orphaned"              # the gateway died mid-call: charged its reservation (ledger/started.py)
OUTCOMES = (OK, CANCELLED, UPSTREAM_ERROR, REJECTED_BUDGET, REJECTED_RATE, REJECTED_POLICY, ORPHANED)

# Kinds: a call, or a correction produced by re-rating (never a rewrite of history).
USAGE = "usage"
ADJUSTMENT = "adjustment"


def micro_of_nano(nano_usd: int) -> int:
    """Micro-USD of a nano-USD amount, rounded up (toward +infinity).

    Up, not to nearest: a reader of micro-USD figures (a v1 event reader, a budget
    compared with ``>`` against an integer limit) then never sees less than was
    spent, and ``micro_of_nano(n) > limit`` is exactly ``n > limit x 1000``.
    """
    return -(-nano_usd // NANO_PER_MICRO)


# Ids need uniqueness, not secrecy: a PRNG seeded from os.urandom, reseeded in forked children.
_random = random.Random()
os.register_at_fork(after_in_child=_random.seed)


def new_event_id(now_ms: int | None = None) -> str:
    """A UUIDv7-shaped id: 48 bits of milliseconds then 80 random bits.

    Sorting ids sorts events by mint time, which keeps ClickHouse parts and the
    local log in time order without a second column.
    """
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    return uuid7_of(ms, _random.getrandbits(80))


def uuid7_of(ms: int, rest: int) -> str:
    """A UUIDv7 string: ``ms`` in the top 48 bits, ``rest`` (80 bits: random, or a hash for an id that
    must come out the same every time) below, with the version and RFC 4122 variant bits set."""
    value = (ms & ((1 << 48) - 1)) << 80 | (rest & ((1 << 80) - 1))
    value &= ~(0xF << 76)
    value |= 0x7 << 76
    value &= ~(0x3 << 62)
    value |= 0x2 << 62
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True, slots=True)
class Tokens:
    """Token counts split the way providers bill them.

    ``input`` excludes cache writes and cache reads (Anthropic reports them
    apart; OpenAI's prompt_tokens includes cached tokens, so its adapter
    subtracts them). ``reasoning`` is part of ``output`` (providers bill it as
    output); it is kept apart only for analysis.
    """

    input: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    cache_read: int = 0
    output: int = 0
    reasoning: int = 0

    @property
    def total(self) -> int:
        return self.input + self.cache_write_5m + self.cache_write_1h + self.cache_read + self.output

    @property
    def prompt(self) -> int:
        return self.input + self.cache_write_5m + self.cache_write_1h + self.cache_read

    def writes_at_long_retention(self) -> "Tokens":
        """The short-retention cache writes moved to the long-retention count (``cache_write_1h``,
        which holds Anthropic's 1-hour and OpenAI's 12-hour write), for a call that asked for it."""
        if not self.cache_write_5m:
            return self
        return replace(self, cache_write_5m=0, cache_write_1h=self.cache_write_1h + self.cache_write_5m)


@dataclass(frozen=True, slots=True)
class UsageEvent:
    event_id: str
    ts_start_ms: int
    ts_end_ms: int
    org: str
    workspace: str
    user: str
    key_id: str                    # the key's public id, never the secret
    provider: str                  # "openai", "anthropic", "azure", or a configured upstream name
    api: str                       # "messages", "chat", "responses", "embeddings"
    model_requested: str
    model_served: str
    tokens: Tokens = Tokens()
    cost_micro_usd: int = 0
    price_version: str = ""
    outcome: str = OK
    http_status: int = 200
    latency_ms: int = 0
    ttft_ms: int | None = None
    project: str = ""
    tags: tuple[str, ...] = ()     # "name:value" strings, sorted
    session_id: str = ""
    request_id: str = ""
    gateway_id: str = ""
    stream: bool = False
    usage_estimated: bool = False  # some token counts were estimated (client left early, unknown model fallback)
    cost_estimated: bool = False   # priced with a fallback entry, or a served tier the entry has no rates for
    error_type: str = ""
    kind: str = USAGE
    adjusts_event_id: str = ""     # for ADJUSTMENT: the event whose cost it corrects
    schema_version: int = SCHEMA_VERSION
    # What else the price depended on, so re-rating can reproduce the charge.
    service_tier: str = ""
    web_search_calls: int = 0
    usage_anomalous: bool = False  # the provider's usage was negative, not an integer or impossible; clamped
    # The charge in nano-USD (schema v2). Give either this or ``cost_micro_usd``: the other is derived.
    cost_nano_usd: int = 0

    def __post_init__(self) -> None:
        """Make the two cost fields agree: a micro-only event (v1, or a writer that knows only
        micro-USD) is ``micro x 1000`` nanos; a nano event gets its micro rounded up."""
        nano, micro = self.cost_nano_usd, self.cost_micro_usd
        if nano == 0 and micro != 0:
            object.__setattr__(self, "cost_nano_usd", micro * NANO_PER_MICRO)
        elif micro != micro_of_nano(nano):
            if micro != 0:
                raise ValueError(f"cost_micro_usd={micro} disagrees with cost_nano_usd={nano}; "
                                 "give one of them")
            object.__setattr__(self, "cost_micro_usd", micro_of_nano(nano))

    @property
    def ledger_key(self) -> str:
        """Kafka key (the default keying, ``ledger.started.usage_key``): the call's API key.

        One organization's keys spread over every partition, so over every
        ledger worker, while each spend key of a key (and mostly of a user)
        is folded in one partition. Every copy of an event (a spool's re-send),
        its call's started record and an orphan charge share the key, so one
        partition holds them in order and de-duplicates them. Each partition's
        fold is a partial sum per spend key; readers add the partitions.
        """
        return self.key_id

    def tag_map(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for t in self.tags:
            name, _, value = t.partition(":")
            out[name] = value
        return out

    def with_(self, **changes: Any) -> "UsageEvent":
        """A copy with ``changes``; changing one cost field re-derives the other."""
        if "cost_nano_usd" in changes and "cost_micro_usd" not in changes:
            changes["cost_micro_usd"] = 0
        elif "cost_micro_usd" in changes and "cost_nano_usd" not in changes:
            changes["cost_nano_usd"] = 0
        return replace(self, **changes)


_EVENT_FIELDS = frozenset(f.name for f in fields(UsageEvent))
_TOKEN_FIELDS = frozenset(f.name for f in fields(Tokens))
# What ``encode`` writes: every field, in declaration order (tokens likewise).
_EVENT_NAMES = tuple(f.name for f in fields(UsageEvent))
_TOKEN_NAMES = tuple(f.name for f in fields(Tokens))
_TOKENS_AT = _EVENT_NAMES.index("tokens")
_TAGS_AT = _EVENT_NAMES.index("tags")
_MICRO_AT = _EVENT_NAMES.index("cost_micro_usd")
_NANO_AT = _EVENT_NAMES.index("cost_nano_usd")


def encode(event: UsageEvent) -> bytes:
    """orjson serializes slotted dataclasses natively: same bytes as ``asdict``, ten times faster."""
    return orjson.dumps(event)


def decode(data: bytes | str | Mapping[str, Any]) -> UsageEvent:
    """The event a JSON object (or its bytes) holds: unknown fields ignored, missing ones defaulted.

    An object exactly as this version's ``encode`` writes it (every field, in order: the analytics
    process decodes each of the embedded log's lines) takes a shortcut: its values, positionally,
    into the same constructor, with the same conversions. That saves the copy, the field filter and
    the keyword calls, a third of the decoding's cost (the frozen 37-field constructor, which makes the
    cost fields agree, is most of the rest). Any other shape
    (an older or newer writer's, extra or missing fields, a mapping that is not a dict) takes the
    general path. Both give the same event, or the same error."""
    raw: Any = orjson.loads(data) if isinstance(data, (bytes, str)) else data
    if type(raw) is dict and tuple(raw) == _EVENT_NAMES:
        values = list(raw.values())
        tok = values[_TOKENS_AT]
        if type(tok) is dict and tuple(tok) == _TOKEN_NAMES:
            values[_TOKENS_AT] = Tokens(*map(int, tok.values()))
            values[_TAGS_AT] = tuple(values[_TAGS_AT] or ())
            if values[_NANO_AT]:
                values[_MICRO_AT] = 0          # the charge is the nanos; the micro figure is derived
            return UsageEvent(*values)
    return _decode_fields(raw if isinstance(data, (bytes, str)) else dict(data))


def _decode_fields(raw: dict[str, Any]) -> UsageEvent:
    known = {k: v for k, v in raw.items() if k in _EVENT_FIELDS}
    tok = known.get("tokens") or {}
    known["tokens"] = Tokens(**{k: int(v) for k, v in tok.items() if k in _TOKEN_FIELDS})
    known["tags"] = tuple(known.get("tags") or ())
    if known.get("cost_nano_usd"):
        known.pop("cost_micro_usd", None)      # the charge is the nanos; the micro figure is derived
    return UsageEvent(**known)


def normalize_tags(tags: Mapping[str, str] | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Tags as sorted unique "name:value" strings (a bare name gets an empty value)."""
    if not tags:
        return ()
    items = list(tags) if isinstance(tags, (tuple, list)) else [f"{k}:{v}" for k, v in tags.items()]
    out = set()
    for t in items:
        t = t.strip()
        if not t:
            continue
        out.add(t if ":" in t else f"{t}:")
    return tuple(sorted(out))


__all__ = [
    "ADJUSTMENT", "CANCELLED", "NANO_PER_MICRO", "OK", "ORPHANED", "OUTCOMES", "REJECTED_BUDGET", "REJECTED_POLICY",
    "REJECTED_RATE", "SCHEMA_VERSION", "Tokens", "UPSTREAM_ERROR", "USAGE", "UsageEvent",
    "decode", "encode", "micro_of_nano", "new_event_id", "normalize_tags", "uuid7_of",
]
