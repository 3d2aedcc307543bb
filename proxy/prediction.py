"""Predicted holds: what recent calls of this key (or user) on this model really used.

A ``strict`` budget holds a call's worst case (``pricing.worst_case``): for an
agent that sends ``max_tokens=128000`` on every call that is dollars per call
while its calls cost cents, so a small budget refuses the first call and a
large one stops admitting far below its cap. A ``predicted`` budget holds what
calls like this one used lately (``pricing.predicted``), and the call is
settled to its real cost as always.

Per (key, model) and per (user, model) this proxy keeps the last ``SAMPLES``
successful calls as rates: prompt tokens of each kind per million body bytes
and output tokens per completion. The profile of a new call is the
``PERCENTILE``-th percentile of each rate on its own (with fewer than
100 / (100 - PERCENTILE) samples that is the largest seen). The key's own
history wins; a key that has none borrows its user's (a new key of a known
agent); neither gives the cold start of ``pricing.predicted``.

Memory only, per proxy: a restart or another proxy starts cold, which only
makes holds larger. At most ``MAX_PROFILES`` histories are kept, the least
recently updated dropped first.

A profile is computed once and kept until its history changes, and while a
history is full it is recomputed after every ``REFRESH``-th new sample, not
every one: sorting five columns per call was the gateway's largest per-call
cost of predicted holds (``bench/proxy_overhead.py``), and a percentile of 32
samples moves little in three.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

from llmgw.core.events import Tokens
from llmgw.pricing import CallProfile

SAMPLES = 32
PERCENTILE = 95
MAX_PROFILES = 100_000
REFRESH = 4

Sample = tuple[int, int, int, int, int]     # input, write 5m, write 1h, read (per million bytes), output


@dataclass(frozen=True, slots=True)
class Basis:
    """What a call's hold was predicted from, to learn from when it settles."""

    who: tuple[str, ...]          # history keys, most specific first: ("key:K", "user:ORG/U")
    model: str
    body_bytes: int
    completions: int = 1


class _History:
    __slots__ = ("samples", "profile", "fresh")

    def __init__(self, size: int) -> None:
        self.samples: deque[Sample] = deque(maxlen=size)
        self.profile: CallProfile | None = None
        self.fresh = 0                 # samples added since ``profile`` was computed


class HoldPredictor:
    def __init__(self, samples: int = SAMPLES, percentile: int = PERCENTILE,
                 max_profiles: int = MAX_PROFILES, refresh: int = REFRESH) -> None:
        self.samples, self.percentile, self.max_profiles = samples, percentile, max_profiles
        self.refresh = refresh
        self._seen: OrderedDict[tuple[str, str], _History] = OrderedDict()

    def profile(self, who: tuple[str, ...], model: str) -> CallProfile | None:
        for w in who:
            h = self._seen.get((w, model))
            if h is not None and h.samples:
                full = len(h.samples) == h.samples.maxlen
                if h.profile is None or h.fresh >= (self.refresh if full else 1):
                    h.profile = CallProfile(*(self._high(col) for col in zip(*h.samples)))
                    h.fresh = 0
                return h.profile
        return None

    def observe(self, basis: Basis, tokens: Tokens) -> None:
        """Learn from a call that completed normally (a cancelled or failed call says
        nothing about how long this agent's answers are)."""
        b = max(basis.body_bytes, 1)
        sample = (tokens.input * 1_000_000 // b, tokens.cache_write_5m * 1_000_000 // b,
                  tokens.cache_write_1h * 1_000_000 // b, tokens.cache_read * 1_000_000 // b,
                  -(-tokens.output // max(basis.completions, 1)))
        for w in basis.who:
            k = (w, basis.model)
            h = self._seen.get(k)
            if h is None:
                h = self._seen[k] = _History(self.samples)
                while len(self._seen) > self.max_profiles:
                    self._seen.popitem(last=False)
            else:
                self._seen.move_to_end(k)
            h.samples.append(sample)
            h.fresh += 1

    def _high(self, column: tuple[int, ...]) -> int:
        ordered = sorted(column)
        rank = -(-len(ordered) * self.percentile // 100)          # nearest-rank percentile
        return ordered[max(rank, 1) - 1]
