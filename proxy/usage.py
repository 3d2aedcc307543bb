"""Sane usage: what a provider reports is untrusted input like anything else.

A usage block is read with ``UsageReader`` (a count that is negative, a
float, a string, a bool or null never raises; it reads as 0 or its integral
value and leaves an anomaly code behind), then ``sane`` bounds the counts by
what the call could physically have used:

* output <= the request's ``max_tokens`` x ``n`` (both providers count
  reasoning inside that limit; an embedding has no output);
* prompt tokens (input + cache writes + cache reads) <= the request's body
  bytes + an allowance (every BPE token covers at least one byte of the text
  the model reads, which the JSON body contains; images and injected tool
  prompts get a generous allowance). Above it the call is flagged, and the
  prompt is clamped ``FAR_INPUT_SLACK`` tokens above it. A request that makes
  the provider read input the body does not hold (``previous_response_id``,
  a conversation, a file or URL, server-side tools) has no such bound, and
  the check never guesses: any escape in the body or any of those words
  lifts it;
* every count <= ``SANE_MAX_TOKENS``, far above any model's context.

Clamping only ever lowers a count to the call's bound, so a hostile or
broken provider can neither crash a call (a 500, an unreleased hold) nor
bill a key billions. Every anomaly is recorded on ``Usage.anomalies``; the
call's event carries ``usage_anomalous``, ``report`` counts each kind in
``llmgw_usage_anomalies_total{wire,kind}`` and logs one warning per call.
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import replace
from typing import Any, Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from llmgw.core.events import Tokens

from .types import Call, Usage

log = logging.getLogger("llmgw.usage")

SANE_MAX_TOKENS = 10_000_000          # per count and call; the largest context windows are ~2M
INJECTED_TOKENS = 8_192               # tool-use system prompts and framing (pricing/estimate.py tallies ~4k)
FAR_INPUT_SLACK = 1_000_000           # prompt tokens billed above the request's bound at most (see _bound_prompt)
IMAGE_TOKENS = 50_000                 # per image by URL; gpt-4o-mini's 48,169 is the largest known
# Words in a request body that let the provider read input the body does not contain.
_SERVER_INPUT = (b"previous_response_id", b"conversation", b"file", b"url", b"prompt_cache_key", b"web_",
                 b"mcp", b"container", b"code_", b"search", b"\\u", b'"prompt"', b"document", b"tool_search")


class UsageReader:
    """Reads counts out of a provider's usage block, recording what was wrong with them.

    ``unknown`` turns True when a count could not be recovered at all (negative, null, a bool, a
    non-numeric string): the call's usage is then an estimate, not the provider's word.
    """

    __slots__ = ("anomalies", "unknown")

    def __init__(self) -> None:
        self.anomalies: list[str] = []
        self.unknown = False

    def flag(self, code: str, unknown: bool = False) -> None:
        if code not in self.anomalies:
            self.anomalies.append(code)
        self.unknown = self.unknown or unknown

    def count(self, d: Any, *path: str, name: str) -> int | None:
        """The count at ``path`` as a non-negative int; None when absent (a missing object on the way
        is absent too). A number that is not a non-negative int is flagged: ``negative_<name>`` reads
        as 0, ``non_integer_<name>`` (a float or a digit string) as its value rounded up, and
        ``invalid_<name>`` (null, a bool, anything else) as 0."""
        for p in path:
            if not isinstance(d, dict) or p not in d:
                return None
            d = d[p]
        if type(d) is int:
            if d >= 0:
                return d
            self.flag(f"negative_{name}", unknown=True)
            return 0
        if isinstance(d, float) and math.isfinite(d) and d >= 0:
            self.flag(f"non_integer_{name}")
            return math.ceil(d)
        if isinstance(d, str) and d.strip().isdigit() and d.strip().isascii():
            self.flag(f"non_integer_{name}")
            return int(d.strip())
        if isinstance(d, float) and d < 0:
            self.flag(f"negative_{name}", unknown=True)
        else:
            self.flag(f"invalid_{name}", unknown=True)
        return 0


def settled(usage: Usage, r: UsageReader) -> Usage:
    """The usage with the reader's anomalies; a count that could not be read makes it an estimate."""
    if not r.anomalies:
        return usage
    return replace(usage, anomalies=(*usage.anomalies, *(a for a in r.anomalies if a not in usage.anomalies)),
                   complete=usage.complete and not r.unknown)


def _tokens(t: Tokens, **changes: int) -> Tokens:
    return replace(t, **changes) if changes else t


def sane(usage: Usage, call: Call | None, extra: list[str] | tuple[str, ...] = ()) -> Usage:
    """``usage`` with every count within the call's bounds, anomalies recorded (``extra`` first)."""
    anomalies = list(usage.anomalies)
    for code in extra:
        if code not in anomalies:
            anomalies.append(code)
    t = usage.tokens
    changes: dict[str, int] = {}
    for name in ("input", "cache_write_5m", "cache_write_1h", "cache_read", "output", "reasoning"):
        v = getattr(t, name)
        if v < 0:                                  # a meter's own arithmetic; readers never return one
            changes[name] = 0
            _add(anomalies, f"negative_{_family(name)}")
        elif v > SANE_MAX_TOKENS:
            changes[name] = SANE_MAX_TOKENS
            _add(anomalies, "above_sane_cap")
    t = _tokens(t, **changes)
    if call is not None:
        t = _bound_output(t, call, anomalies)
        t = _bound_prompt(t, call, anomalies)
    if t.reasoning > t.output:
        t = replace(t, reasoning=t.output)
        _add(anomalies, "reasoning_above_output")
    if t is usage.tokens and len(anomalies) == len(usage.anomalies):
        return usage
    return replace(usage, tokens=t, anomalies=tuple(anomalies))


def _family(name: str) -> str:
    return "cache_write" if name.startswith("cache_write") else name


def _add(anomalies: list[str], code: str) -> None:
    if code not in anomalies:
        anomalies.append(code)


def _bound_output(t: Tokens, call: Call, anomalies: list[str]) -> Tokens:
    if call.max_output_tokens is None:
        return t
    limit = call.max_output_tokens * max(call.choices, 1)
    if t.output <= limit:
        return t
    _add(anomalies, "output_above_max_tokens")
    return replace(t, output=limit, reasoning=min(t.reasoning, limit))


def input_bound(call: Call) -> int | None:
    """Most prompt tokens the request's own bytes can hold, or None when the provider may read more."""
    if call.web_search:
        return None
    body = call.body.lower()
    if any(w in body for w in _SERVER_INPUT):
        return None
    return len(call.body) + INJECTED_TOKENS + call.image_count * IMAGE_TOKENS


def _bound_prompt(t: Tokens, call: Call, anomalies: list[str]) -> Tokens:
    """Flag a prompt above what the request can hold; clamp it ``FAR_INPUT_SLACK`` above that bound.

    The slack is the price of being wrong about the bound: a provider may count input from
    somewhere this check does not recognize, and a real call is then never billed less than it
    cost by more than the slack. A report beyond it is garbage (10^15 tokens). Clamping to one
    ceiling per call keeps billing monotone: more reported tokens never cost less."""
    if t.prompt <= len(call.body) + INJECTED_TOKENS:     # the common case: no need to look at the body
        return t
    bound = input_bound(call)
    if bound is None or t.prompt <= bound:
        return t
    _add(anomalies, "input_above_request_size")
    ceiling = bound + FAR_INPUT_SLACK
    if t.prompt <= ceiling:
        return t
    # Keep the dearest kinds first: the ceiling is the most the call can owe, never less than it.
    left, kept = ceiling, {}
    for name in ("cache_write_1h", "cache_write_5m", "input", "cache_read"):
        kept[name] = min(getattr(t, name), left)
        left -= kept[name]
    return replace(t, **kept)


# ---------------------------------------------------------------- reporting

# Process-wide counts by (wire, kind): anomalies are a fact about this process's upstreams, read by
# every app's registry at scrape time (``AnomalyCollector``) like the ledger gauges.
ANOMALY_COUNTS: Counter[tuple[str, str]] = Counter()


def report(usage: Usage, wire: str, model: str, request_id: str, provider: str) -> None:
    """Count and log a call's anomalies once, when its event is built. Never logs a body or a key."""
    if not usage.anomalies:
        return
    for kind in usage.anomalies:
        ANOMALY_COUNTS[(wire, kind)] += 1
    t = usage.tokens
    log.warning("provider reported impossible usage; clamped and flagged", extra={
        "event": "usage_anomaly", "request_id": request_id, "wire": wire, "model": model, "upstream": provider,
        "anomalies": ",".join(usage.anomalies), "input_tokens": t.prompt, "output_tokens": t.output})


class AnomalyCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        c = CounterMetricFamily("llmgw_usage_anomalies", "Calls whose provider-reported usage was negative, "
                                "missing, not an integer or impossible, by wire and kind (clamped and flagged)",
                                labels=["wire", "kind"])
        for (wire, kind), n in sorted(ANOMALY_COUNTS.items()):
            c.add_metric([wire, kind], float(n))
        yield c


def estimate_missing(usage: Usage, call: Call, bytes_out: int) -> Usage:
    """A successful call whose provider never reported usage (an OpenAI-compatible
    server that ignores ``include_usage``, say) is never priced at zero: bound
    its tokens by the bytes that went each way and flag the event as estimated
    (``complete`` stays False). The estimate is bounded like reported usage."""
    t = usage.tokens
    tokens = replace(t, input=max(t.input, len(call.body) // 3), output=max(t.output, bytes_out // 3))
    out = replace(usage, tokens=tokens, complete=False)
    limited = sane(out, call)
    # Bounding a guess is not a provider anomaly: keep only the anomalies the reported usage had.
    return replace(limited, anomalies=usage.anomalies)
