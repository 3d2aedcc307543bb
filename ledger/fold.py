"""Folding usage events into spend per (dimension, entity, window).

Pure functions, no I/O and no faust: the Kafka worker, the embedded ledger
and ``llmgw ledger rebuild`` all call ``fold`` and must agree to the
nano-dollar: spend is summed in the events' exact nano-USD, and the micro-USD
figure budgets and snapshots show is derived from that sum (rounded up), never
summed from per-event micros. Totals are absolute values (never deltas) so that replaying a
snapshot topic is idempotent; exactness against redelivery is the driver's job
(it applies each source offset once), not this module's.

A spend key is ``"dim|entity|window|start_ms"``, e.g.
``"user|acme/alice|day|1764028800000"``. Entities are scoped by organization
because user and workspace names are only unique inside one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping, Sequence

from llmgw.core.events import (ADJUSTMENT, NANO_PER_MICRO, REJECTED_BUDGET, REJECTED_POLICY, REJECTED_RATE,
                               UsageEvent, micro_of_nano)
from llmgw.core.memo import Memo
from llmgw.core.windows import WINDOWS, window_start
from llmgw.core.spend_keys import BUDGET_TAGS, KEY, ORG, TAG, USER, USER_TAG, WORKSPACE, WORKSPACE_TAG, spend_key


_NOT_SPENT = frozenset({REJECTED_BUDGET, REJECTED_RATE, REJECTED_POLICY})

TzOf = Callable[[str], str]
_new = object.__new__
_set = object.__setattr__


def utc(_org: str) -> str:
    return "UTC"


@dataclass(frozen=True, slots=True, kw_only=True)
class Totals:
    """A spend key's folded state. Keyword-only: the spend is in nano-USD, and a positional
    ``Totals(700, ...)`` written when it was micro-USD must fail, not read 1000x smaller."""

    spend_nano_usd: int = 0
    requests: int = 0
    input_tokens: int = 0     # every prompt-side token: input + cache writes + cache reads
    output_tokens: int = 0

    @property
    def spend_micro_usd(self) -> int:
        """The spend in micro-USD, rounded up: what budgets and snapshots show."""
        return micro_of_nano(self.spend_nano_usd)

    def plus(self, other: "Totals") -> "Totals":
        # Built field by field, as the frozen dataclass's own __init__ does, without its keyword
        # parsing: a fold makes one per spend key of every event (~28), 40% cheaper this way.
        out = _new(Totals)
        _set(out, "spend_nano_usd", self.spend_nano_usd + other.spend_nano_usd)
        _set(out, "requests", self.requests + other.requests)
        _set(out, "input_tokens", self.input_tokens + other.input_tokens)
        _set(out, "output_tokens", self.output_tokens + other.output_tokens)
        return out

    def added_to(self, totals: Mapping[str, "Totals"], keys: Iterable[str]) -> dict[str, "Totals"]:
        """``{k: totals.get(k, ZERO).plus(self)}`` for every key: what a fold does with one event's
        contribution, with ``plus`` inlined: a method call less per key, ~20% less time in the loop."""
        s, r, i, o = self.spend_nano_usd, self.requests, self.input_tokens, self.output_tokens
        get = totals.get
        out: dict[str, Totals] = {}
        for k in keys:
            t = get(k, ZERO)
            n = _new(Totals)
            _set(n, "spend_nano_usd", t.spend_nano_usd + s)
            _set(n, "requests", t.requests + r)
            _set(n, "input_tokens", t.input_tokens + i)
            _set(n, "output_tokens", t.output_tokens + o)
            out[k] = n
        return out

    def to_list(self) -> list[int]:
        """``[spend_micro_usd, requests, input_tokens, output_tokens, spend_nano_usd]``: the first
        four are what snapshot readers before the nano fields read (micro rounded up)."""
        return [self.spend_micro_usd, self.requests, self.input_tokens, self.output_tokens,
                self.spend_nano_usd]

    @classmethod
    def from_list(cls, values: list[int]) -> "Totals":
        """Either layout: with a fifth value it is the nanos; a four-value record (written
        before nano-USD) has micro-USD, exactly ``micro x 1000`` nanos."""
        nano = int(values[4]) if len(values) > 4 else int(values[0]) * NANO_PER_MICRO
        return cls(spend_nano_usd=nano, requests=int(values[1]), input_tokens=int(values[2]),
                   output_tokens=int(values[3]))


ZERO = Totals()


def entities(event: UsageEvent) -> Iterator[tuple[str, str]]:
    """Every (dimension, entity) an event's spend counts against."""
    org = event.org
    yield ORG, org
    yield WORKSPACE, f"{org}/{event.workspace}"
    yield USER, f"{org}/{event.user}"
    yield KEY, event.key_id
    for tag in event.tags:
        name = tag.partition(":")[0]
        if name in BUDGET_TAGS:
            yield TAG, f"{org}/{tag}"
            yield WORKSPACE_TAG, f"{org}/{event.workspace}/{tag}"
            yield USER_TAG, f"{org}/{event.user}/{tag}"


def contribution(event: UsageEvent) -> Totals:
    """What one event adds to each of its keys (rejections add nothing)."""
    if event.outcome in _NOT_SPENT:
        return ZERO
    if event.kind == ADJUSTMENT:
        return Totals(spend_nano_usd=event.cost_nano_usd)
    return Totals(spend_nano_usd=event.cost_nano_usd, requests=1, input_tokens=event.tokens.prompt,
                  output_tokens=event.tokens.output)


def spends(event: UsageEvent) -> bool:
    """Whether the event adds to its keys at all (rejections do not)."""
    return event.outcome not in _NOT_SPENT


def keys_of(event: UsageEvent, tz_of: TzOf = utc) -> list[str]:
    """Spend keys of an event. Windows are chosen by the call's start time:
    that is when its reservation was checked against the budget."""
    return keys_in(event, tz_of(event.org))


def keys_in(event: UsageEvent, tz: str) -> list[str]:
    """``keys_of`` with the org's time zone already looked up."""
    ends = _ENDS[(tz, event.ts_start_ms // 60_000)]
    return [f"{dim}|{ent}{end}" for dim, ent in entities(event) for end in ends]


def _window_ends(zone_minute: tuple[str, int]) -> tuple[str, ...]:
    """What ``spend_key(dim, entity, w, start)`` puts after the entity, for every window: the part of a
    spend key every event started in that zone and minute shares (window bounds fall on whole minutes:
    ``core.windows.window_bounds``), made once instead of four window lookups and sixteen keys spelled
    from scratch per event."""
    tz, minute = zone_minute
    ts_ms = minute * 60_000
    return tuple(spend_key("", "", w, window_start(w, ts_ms, tz))[1:] for w in WINDOWS)


# (tz, minute) -> "|window|start_ms" of each of WINDOWS: one entry per zone in use and minute
_ENDS: Memo[tuple[str, int], tuple[str, ...]] = Memo(_window_ends, 4_096)


def fold(totals: Mapping[str, Totals], event: UsageEvent, tz_of: TzOf = utc,
         keys: Sequence[str] | None = None) -> dict[str, Totals]:
    """New absolute totals of every key the event changes (empty if none). ``keys``: the event's
    ``keys_of`` when the caller already computed them (the embedded ledger, at submit)."""
    add = contribution(event)
    if add == ZERO:
        return {}
    return add.added_to(totals, keys_of(event, tz_of) if keys is None else keys)


def fold_all(events: Iterable[UsageEvent], tz_of: TzOf = utc) -> dict[str, Totals]:
    """Reference fold from scratch: used by rebuild and by tests as the oracle."""
    state: dict[str, Totals] = {}
    for ev in events:
        state.update(fold(state, ev, tz_of))
    return state
